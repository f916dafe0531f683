//! The attention layers of the Perceiver family (Jaegle et al., 2021; Perceiver IO, 2022), as
//! the perceiver-io library builds them: pre-norm attention with a residual, then a residual MLP.
//!
//! * [`CrossAttentionLayer`]: queries `x_q` `[B, N, C_q]` (latents, or a decoder's output
//!   queries) attend to `x_kv` `[B, M, C_kv]` (the input, or the latents):
//!   `h = x_q + attend(q_norm(x_q), kv_norm(x_kv))` (the residual is optional: a decoder's
//!   queries need not be part of its output), then `h + mlp(h)`. Key padding hides keys.
//! * [`SelfAttentionLayer`]: `h = x + attend(norm(x), norm(x))`, then `h + mlp(h)`.
//! * [`SelfAttentionBlock`]: a stack of self-attention layers; a Perceiver repeats one block
//!   (weights shared) several times.
//!
//! Backward needs nothing of its own: every op records itself on the tape, and a layer used
//! twice (shared weights) accumulates both uses' gradients into its parameters.

use autograd::Var;
use tensor::KeyVisibility;

use crate::attention::{AttendOptions, Attention, AttentionBiases, AttentionDims};
use crate::ctx::Ctx;
use crate::error::Result;
use crate::layer_norm::LayerNorm;
use crate::mlp::{Activation, Mlp};
use crate::params::Builder;

/// What every layer of a Perceiver shares: head count, MLP widening, init and norm settings.
#[derive(Clone, Copy, Debug)]
pub struct LayerSettings {
    pub heads: usize,
    pub widening: usize,
    pub activation: Activation,
    pub std: f32,
    pub eps: f32,
    /// Dropout on attention probabilities.
    pub dropout: f32,
}

pub struct CrossAttentionLayer {
    pub q_norm: LayerNorm,
    pub kv_norm: LayerNorm,
    pub attention: Attention,
    pub mlp: Mlp,
    /// Whether the queries are added back to the attention's output.
    pub residual: bool,
    dropout: f32,
}

impl CrossAttentionLayer {
    /// `dims`: the query and key/value inputs' widths, and the attention's query/key and value
    /// widths (its output is as wide as the queries).
    pub fn new(b: &mut Builder, dims: AttentionDims, s: LayerSettings, residual: bool) -> Result<Self> {
        let biases = AttentionBiases { qkv: true, out: true };
        Ok(CrossAttentionLayer {
            q_norm: LayerNorm::new(&mut b.sub("q_norm"), dims.q_in, s.eps)?,
            kv_norm: LayerNorm::new(&mut b.sub("kv_norm"), dims.kv_in, s.eps)?,
            attention: Attention::with_dims(&mut b.sub("attention"), dims, s.heads, biases, s.std)?,
            mlp: Mlp::new(&mut b.sub("mlp"), dims.q_in, s.widening, s.activation, true, s.std, s.eps)?,
            residual,
            dropout: s.dropout,
        })
    }

    /// `x_q` `[B, N, C_q]` attends to `x_kv` `[B, M, C_kv]` (keys of `padding`, `[B, M]` with
    /// true at padding, hidden): `[B, N, C_q]`.
    pub fn forward(&self, ctx: &Ctx, x_q: &Var, x_kv: &Var, padding: Option<&[bool]>) -> Result<Var> {
        let visibility = KeyVisibility { hidden_keys: padding.map(Into::into), ..Default::default() };
        let opts =
            AttendOptions { visibility: Some(&visibility), dropout: self.dropout, ..Default::default() };
        let (normed_q, normed_kv) = (self.q_norm.forward(ctx, x_q)?, self.kv_norm.forward(ctx, x_kv)?);
        let h = match self.residual {
            true => self.attention.forward_adding(ctx, (&normed_q, &normed_kv), &opts, x_q)?,
            false => self.attention.forward(ctx, &normed_q, &normed_kv, &opts)?,
        };
        self.mlp.forward_residual(ctx, &h)
    }
}

pub struct SelfAttentionLayer {
    pub norm: LayerNorm,
    pub attention: Attention,
    pub mlp: Mlp,
    dropout: f32,
}

impl SelfAttentionLayer {
    /// `dims.q_in = dims.kv_in` is the latents' width.
    pub fn new(b: &mut Builder, dims: AttentionDims, s: LayerSettings) -> Result<Self> {
        let biases = AttentionBiases { qkv: true, out: true };
        Ok(SelfAttentionLayer {
            norm: LayerNorm::new(&mut b.sub("norm"), dims.q_in, s.eps)?,
            attention: Attention::with_dims(&mut b.sub("attention"), dims, s.heads, biases, s.std)?,
            mlp: Mlp::new(&mut b.sub("mlp"), dims.q_in, s.widening, s.activation, true, s.std, s.eps)?,
            dropout: s.dropout,
        })
    }

    /// `[B, N, C] → [B, N, C]`, every latent seeing every latent.
    pub fn forward(&self, ctx: &Ctx, x: &Var) -> Result<Var> {
        self.forward_seeing(ctx, x, &KeyVisibility::all())
    }

    /// [`SelfAttentionLayer::forward`] with position `i` seeing the positions `visibility`
    /// allows (causal, or a sparse pattern: a decoder layer of the Sparse Transformer).
    pub fn forward_seeing(&self, ctx: &Ctx, x: &Var, visibility: &KeyVisibility) -> Result<Var> {
        self.forward_through(ctx, x, visibility, |k, v| Ok((k, v)))
    }

    /// [`SelfAttentionLayer::forward_seeing`] with the new positions' keys and values `[B, H,
    /// N, D]` passed through `keys_values` before the attention, which may put earlier
    /// positions' keys and values before them (a key/value cache: `visibility` then places
    /// the queries after the cached positions).
    pub fn forward_through<E>(
        &self,
        ctx: &Ctx,
        x: &Var,
        visibility: &KeyVisibility,
        keys_values: impl FnOnce(Var, Var) -> std::result::Result<(Var, Var), E>,
    ) -> std::result::Result<Var, E>
    where
        E: From<crate::error::Error> + From<tensor::Error>,
    {
        let opts =
            AttendOptions { visibility: Some(visibility), dropout: self.dropout, ..Default::default() };
        let normed = self.norm.forward(ctx, x)?;
        let q = self.attention.queries(ctx, &normed, None)?;
        let (k, v) = self.attention.keys_values(ctx, &normed, None)?;
        let (k, v) = keys_values(k, v)?;
        let h = self.attention.attend_adding(ctx, (&q, &k, &v), &opts, x)?;
        Ok(self.mlp.forward_residual(ctx, &h)?)
    }
}

/// Self-attention layers applied in turn.
pub struct SelfAttentionBlock {
    pub layers: Vec<SelfAttentionLayer>,
}

impl SelfAttentionBlock {
    pub fn new(b: &mut Builder, layers: usize, dims: AttentionDims, s: LayerSettings) -> Result<Self> {
        let layers =
            (0..layers).map(|i| SelfAttentionLayer::new(&mut b.sub(i), dims, s)).collect::<Result<_>>()?;
        Ok(SelfAttentionBlock { layers })
    }

    pub fn forward(&self, ctx: &Ctx, mut x: Var) -> Result<Var> {
        for layer in &self.layers {
            x = layer.forward(ctx, &x)?;
        }
        Ok(x)
    }
}
