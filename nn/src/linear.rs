//! `Linear`: `y = x Wᵀ + b`.
//!
//! `W` is stored `[out, in]` as in PyTorch, so `Wᵀ` is a transposed view handed to the product
//! with swapped strides, never a copy. The bias is added as part of the product
//! ([`autograd::Var::matmul_bias`]), not by a pass of its own over the output. Backward (the
//! product's rule): `dx = dy W`, `dW = dyᵀ x` (summed over every leading axis), `db = Σ dy`.

use autograd::{GeluOfLinear, Var};

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
        self.output(ctx, x, None, None)
    }

    /// `x Wᵀ + b + residual` (`residual` of the output's shape): the layer's output added to
    /// the residual stream by the product itself ([`autograd::Var::matmul_plus`]), without a
    /// pass of its own over the output.
    pub fn forward_adding(&self, ctx: &Ctx, x: &Var, residual: &Var) -> Result<Var> {
        self.output(ctx, x, None, Some(residual))
    }

    /// `GELU(x Wᵀ + b)`, made as the product is stored ([`autograd::Var::matmul_plus_gelu`]):
    /// feed it to the next layer with [`Linear::forward_of_gelu`].
    pub fn forward_gelu(&self, ctx: &Ctx, x: &Var) -> Result<GeluOfLinear> {
        let w_t = ctx.param(self.weight).t()?;
        let bias = self.bias.map(|b| ctx.param(b));
        Ok(x.matmul_plus_gelu(&w_t, bias.as_ref())?)
    }

    /// `h Wᵀ + b + residual` (the residual where given) for `h` GELU of a layer's output: its
    /// backward multiplies `h`'s gradient by GELU's derivative as it makes it
    /// ([`autograd::GeluOfLinear::matmul_plus`]).
    pub fn forward_of_gelu(&self, ctx: &Ctx, h: &GeluOfLinear, residual: Option<&Var>) -> Result<Var> {
        let w_t = ctx.param(self.weight).t()?;
        let bias = self.bias.map(|b| ctx.param(b));
        Ok(h.matmul_plus(&w_t, bias.as_ref(), residual)?)
    }

    /// `scale · (x Wᵀ + b)`, computed as `x (scale·W)ᵀ + scale·b`: scaling the weight (`out ×
    /// in` values) rather than the output (`rows × out`) spares a pass over the output, and
    /// the backward scales only the weight's gradient. (Attention's queries: `D^(-½)` on
    /// `[B, L, C]` queries cost as much as a layer norm per layer.)
    pub fn forward_scaled(&self, ctx: &Ctx, x: &Var, scale: f32) -> Result<Var> {
        self.output(ctx, x, Some(scale), None)
    }

    /// `x (s·W)ᵀ + s·b + residual`, the weight and bias scaled by `s` where given: one product.
    fn output(&self, ctx: &Ctx, x: &Var, scale: Option<f32>, residual: Option<&Var>) -> Result<Var> {
        let scaled = |v: Var| match scale {
            Some(s) => v.mul_scalar(s),
            None => Ok(v),
        };
        let w_t = scaled(ctx.param(self.weight))?.t()?;
        let bias = self.bias.map(|b| scaled(ctx.param(b))).transpose()?;
        Ok(x.matmul_plus(&w_t, bias.as_ref(), residual)?)
    }
}
