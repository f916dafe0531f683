//! `LayerNorm` over the last axis, `(x - μ)/√(σ² + ε) ⊙ w + b`, with the fused forward and
//! backward kernels of `tensor` (see `tensor::cpu::layer_norm` for the math).

use autograd::{ParamId, Var};

use crate::ctx::Ctx;
use crate::error::Result;
use crate::params::Builder;

pub struct LayerNorm {
    pub weight: ParamId,
    pub bias: ParamId,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(b: &mut Builder, dim: usize, eps: f32) -> Result<Self> {
        Ok(LayerNorm {
            weight: b.constant("weight", &[dim], 1.0)?,
            bias: b.constant("bias", &[dim], 0.0)?,
            eps,
        })
    }

    pub fn forward(&self, ctx: &Ctx, x: &Var) -> Result<Var> {
        Ok(x.layer_norm(&ctx.param(self.weight), &ctx.param(self.bias), self.eps)?)
    }
}
