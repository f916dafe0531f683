//! `Linear`: `y = x Wᵀ + b`.
//!
//! `W` is stored `[out, in]` as in PyTorch, so `Wᵀ` is a transposed view handed to sgemm with
//! swapped strides, never a copy. Backward (from the matmul and add rules):
//! `dx = dy W`, `dW = dyᵀ x` (summed over every leading axis), `db = Σ dy`.

use autograd::Var;

use crate::ctx::Ctx;
use crate::error::Result;
use crate::params::Builder;
use autograd::ParamId;

pub struct Linear {
    pub weight: ParamId,
    pub bias: Option<ParamId>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Linear {
    /// Weights ~ N(0, std²), bias zero.
    pub fn new(b: &mut Builder, in_dim: usize, out_dim: usize, bias: bool, std: f32) -> Result<Self> {
        let weight = b.normal("weight", &[out_dim, in_dim], std, true)?;
        let bias = if bias { Some(b.constant("bias", &[out_dim], 0.0)?) } else { None };
        Ok(Linear { weight, bias, in_dim, out_dim })
    }

    /// `x`: `[..., in]` → `[..., out]`.
    pub fn forward(&self, ctx: &Ctx, x: &Var) -> Result<Var> {
        let y = x.matmul(&ctx.param(self.weight).t()?)?;
        Ok(match self.bias {
            Some(b) => y.add(&ctx.param(b))?,
            None => y,
        })
    }

    /// `scale · (x Wᵀ + b)`, computed as `x (scale·W)ᵀ + scale·b`: scaling the weight (`out ×
    /// in` values) rather than the output (`rows × out`) spares a pass over the output, and
    /// the backward scales only the weight's gradient. (Attention's queries: `D^(-½)` on
    /// `[B, L, C]` queries cost as much as a layer norm per layer.)
    pub fn forward_scaled(&self, ctx: &Ctx, x: &Var, scale: f32) -> Result<Var> {
        let y = x.matmul(&ctx.param(self.weight).mul_scalar(scale)?.t()?)?;
        Ok(match self.bias {
            Some(b) => y.add(&ctx.param(b).mul_scalar(scale)?)?,
            None => y,
        })
    }
}
