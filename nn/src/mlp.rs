//! The transformer MLP, pre-norm: `fc2(act(fc1(norm(x))))`, widening the channels by a factor
//! in between.
//!
//! With GELU, `fc1`'s product applies the activation as it stores the hidden layer and saves
//! `GELU'` beside it, and in the backward `fc2`'s product that makes the hidden layer's
//! gradient multiplies it by the saved `GELU'` as it goes (`Linear::forward_gelu`): the
//! activation makes no pass of its own over the `[B, T, 4C]` hidden layer, reading it back
//! from memory and writing it again (on the CPU, 1-1.5 % of a `step-2k` training step), and
//! the backward computes no `erf`.
//!
//! Two activations, as the two reference implementations use them:
//! - squared ReLU, `relu(x)²` (Perceiver AR paper, after So et al. 2021's Primer);
//! - exact GELU, `x Φ(x)` (the perceiver-io library).

use autograd::Var;
use serde::{Deserialize, Serialize};

use crate::ctx::Ctx;
use crate::error::Result;
use crate::layer_norm::LayerNorm;
use crate::linear::Linear;
use crate::params::Builder;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    SquaredRelu,
    Gelu,
}

impl Activation {
    pub fn apply(self, x: &Var) -> Result<Var> {
        Ok(match self {
            Activation::SquaredRelu => x.squared_relu()?,
            Activation::Gelu => x.gelu()?,
        })
    }
}

pub struct Mlp {
    pub norm: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub activation: Activation,
}

impl Mlp {
    pub fn new(
        b: &mut Builder,
        dim: usize,
        widening: usize,
        activation: Activation,
        bias: bool,
        std: f32,
        eps: f32,
    ) -> Result<Self> {
        Ok(Mlp {
            norm: LayerNorm::new(&mut b.sub("norm"), dim, eps)?,
            fc1: Linear::new(&mut b.sub("fc1"), dim, widening * dim, bias, std)?,
            fc2: Linear::new(&mut b.sub("fc2"), widening * dim, dim, bias, std)?,
            activation,
        })
    }

    /// The MLP's output (the caller adds the residual).
    pub fn forward(&self, ctx: &Ctx, x: &Var) -> Result<Var> {
        self.output(ctx, x, None)
    }

    /// `x + mlp(x)`: the output added to the residual stream `x` by the last product.
    pub fn forward_residual(&self, ctx: &Ctx, x: &Var) -> Result<Var> {
        self.output(ctx, x, Some(x))
    }

    /// `fc2(act(fc1(norm(x)))) + residual`. GELU is applied by `fc1`'s product as it stores
    /// the hidden layer, and its derivative by the product that makes the hidden layer's
    /// gradient in `fc2`'s backward ([`Linear::forward_gelu`]).
    fn output(&self, ctx: &Ctx, x: &Var, residual: Option<&Var>) -> Result<Var> {
        let normed = self.norm.forward(ctx, x)?;
        match self.activation {
            Activation::Gelu => {
                let hidden = self.fc1.forward_gelu(ctx, &normed)?;
                self.fc2.forward_of_gelu(ctx, &hidden, residual)
            }
            activation => {
                let hidden = activation.apply(&self.fc1.forward(ctx, &normed)?)?;
                match residual {
                    Some(residual) => self.fc2.forward_adding(ctx, &hidden, residual),
                    None => self.fc2.forward(ctx, &hidden),
                }
            }
        }
    }
}
