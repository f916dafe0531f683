//! Multi-head attention, for cross-attention (queries from one sequence, keys and values from
//! another) and self-attention, with the causal mask of Perceiver AR.
//!
//! Forward, per head `h` with `D` channels:
//! `q = x_q W_qᵀ · D^(-½)` (rotated), `k = x_kv W_kᵀ` (rotated), `v = x_kv W_vᵀ`,
//! `S = q kᵀ` (masked entries set to the most negative f32), `P = softmax(S)` (dropout),
//! `o = P v`, heads concatenated, then `o W_oᵀ + b_o`.
//!
//! Backward: `dP = do vᵀ`, `dv = Pᵀ do`, `dS = P ⊙ (dP − Σ dP ⊙ P)` (softmax),
//! `dq = dS k`, `dk = dSᵀ q`, and masked scores get no gradient.
//!
//! Two paths compute it. The fused one (`Var::attention`, tensor/src/attention.rs) is used
//! whenever the keys each query sees are given as a [`KeyVisibility`] (causal offset, kept
//! positions, hidden keys) and there is no dropout on the probabilities: it streams over
//! blocks of keys and never builds the `[B, H, L, N]` scores. The composed one (matmul,
//! `masked_fill`, softmax, matmul) takes a dense mask; it serves dropout on the
//! probabilities, and it is the reference the fused path is tested against.
//!
//! The causal mask with a query offset: `L` queries are the *last* `L` positions of `N` keys, so
//! query `i` sits at absolute position `N − L + i` and may see keys `j ≤ N − L + i`. In
//! Perceiver AR the keys are the prefix followed by the latents themselves, so latent `i` sees
//! the whole prefix and latents `0..=i`.

use autograd::Var;
use tensor::{KeyVisibility, Tensor};

use crate::ctx::Ctx;
use crate::dropout::dropout;
use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::params::Builder;
use crate::rotary::RotaryTables;

/// The value masked scores are set to (the library uses the most negative finite f32 rather than
/// -inf, so a row with every key masked still has a defined softmax).
pub const MASKED: f32 = -f32::MAX;

/// `[queries, keys]` mask, 1 where key `j` lies in the future of query `i` (right-aligned).
pub fn causal_mask(queries: usize, keys: usize) -> Result<Tensor> {
    if queries > keys {
        return Err(Error::Config(format!("causal mask: {queries} queries but only {keys} keys")));
    }
    let offset = keys - queries;
    let data = (0..queries).flat_map(|i| (0..keys).map(move |j| (j > i + offset) as u8 as f32)).collect();
    Ok(Tensor::from_vec(data, &[queries, keys])?)
}

/// `[batch, 1, 1, keys]` mask, 1 where `padding[b * keys + j]` marks key `j` of row `b` as
/// padding; combine with a causal mask by `maximum`.
pub fn key_padding_mask(padding: &[bool], batch: usize, keys: usize) -> Result<Tensor> {
    if padding.len() != batch * keys {
        return Err(Error::Config(format!(
            "key padding: {} flags for {batch} rows of {keys} keys",
            padding.len()
        )));
    }
    let data = padding.iter().map(|&p| p as u8 as f32).collect();
    Ok(Tensor::from_vec(data, &[batch, 1, 1, keys])?)
}

/// Which biases the projections carry.
#[derive(Clone, Copy, Debug)]
pub struct AttentionBiases {
    pub qkv: bool,
    pub out: bool,
}

pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub heads: usize,
    /// Channels per head of queries and keys.
    pub head_dim: usize,
    /// Channels per head of values.
    pub v_head_dim: usize,
}

/// The channel counts of an attention (the perceiver-io library's names in brackets): query
/// input `q_in`, key/value input `kv_in`, queries and keys `qk` (`num_qk_channels`, default
/// `q_in`), values `v` (`num_v_channels`, default `qk`), output `out` (default `q_in`).
#[derive(Clone, Copy, Debug)]
pub struct AttentionDims {
    pub q_in: usize,
    pub kv_in: usize,
    pub qk: usize,
    pub v: usize,
    pub out: usize,
}

impl AttentionDims {
    /// The defaults: everything `q_in` wide but the key/value input.
    pub fn new(q_in: usize, kv_in: usize) -> Self {
        AttentionDims { q_in, kv_in, qk: q_in, v: q_in, out: q_in }
    }
}

/// Optional parts of one attention call.
#[derive(Default)]
pub struct AttendOptions<'a> {
    /// Which keys each query sees, computed from positions (the fused path).
    pub visibility: Option<&'a KeyVisibility>,
    /// A dense mask instead, 1 where a score is masked, broadcastable to `[B, H, L, N]` (the
    /// composed path).
    pub mask: Option<&'a Tensor>,
    pub rotary_q: Option<&'a RotaryTables>,
    pub rotary_k: Option<&'a RotaryTables>,
    /// Dropout on the attention probabilities.
    pub dropout: f32,
}

impl Attention {
    pub fn new(
        b: &mut Builder,
        q_dim: usize,
        kv_dim: usize,
        heads: usize,
        biases: AttentionBiases,
        std: f32,
    ) -> Result<Self> {
        Attention::with_dims(b, AttentionDims::new(q_dim, kv_dim), heads, biases, std)
    }

    /// An attention whose query/key, value and output widths are given separately.
    pub fn with_dims(
        b: &mut Builder,
        dims: AttentionDims,
        heads: usize,
        biases: AttentionBiases,
        std: f32,
    ) -> Result<Self> {
        let AttentionDims { q_in, kv_in, qk, v, out } = dims;
        if heads == 0 || !qk.is_multiple_of(heads) || !v.is_multiple_of(heads) {
            return Err(Error::Config(format!(
                "{heads} heads do not divide {qk} query/key channels and {v} value channels"
            )));
        }
        Ok(Attention {
            q_proj: Linear::new(&mut b.sub("q_proj"), q_in, qk, biases.qkv, std)?,
            k_proj: Linear::new(&mut b.sub("k_proj"), kv_in, qk, biases.qkv, std)?,
            v_proj: Linear::new(&mut b.sub("v_proj"), kv_in, v, biases.qkv, std)?,
            o_proj: Linear::new(&mut b.sub("o_proj"), v, out, biases.out, std)?,
            heads,
            head_dim: qk / heads,
            v_head_dim: v / heads,
        })
    }

    /// `[B, T, H·D]` → `[B, H, T, D]` (a view).
    fn split_heads(&self, x: &Var, head_dim: usize) -> Result<Var> {
        let (b, t) = (x.shape()[0], x.shape()[1]);
        Ok(x.reshape(&[b, t, self.heads, head_dim])?.permute(&[0, 2, 1, 3])?)
    }

    /// `x_q` `[B, L, C]` attends to `x_kv` `[B, N, C_kv]`; returns `[B, L, C]`. The three steps
    /// below, one after the other; a key/value cache calls them separately, keeping the keys
    /// and values of positions it has already seen.
    pub fn forward(&self, ctx: &Ctx, x_q: &Var, x_kv: &Var, opts: &AttendOptions) -> Result<Var> {
        let (q, k, v) = self.heads(ctx, x_q, x_kv, opts)?;
        self.attend(ctx, &q, &k, &v, opts)
    }

    /// [`Attention::forward`] added to the residual stream `residual` `[B, L, C]` by the output
    /// projection ([`Attention::attend_adding`]).
    pub fn forward_adding(
        &self,
        ctx: &Ctx,
        (x_q, x_kv): (&Var, &Var),
        opts: &AttendOptions,
        residual: &Var,
    ) -> Result<Var> {
        let (q, k, v) = self.heads(ctx, x_q, x_kv, opts)?;
        self.attend_adding(ctx, (&q, &k, &v), opts, residual)
    }

    /// The queries of `x_q` and the keys and values of `x_kv`, rotated as `opts` says.
    fn heads(&self, ctx: &Ctx, x_q: &Var, x_kv: &Var, opts: &AttendOptions) -> Result<(Var, Var, Var)> {
        let q = self.queries(ctx, x_q, opts.rotary_q)?;
        let (k, v) = self.keys_values(ctx, x_kv, opts.rotary_k)?;
        Ok((q, k, v))
    }

    /// The queries of `x_q` `[B, L, C]` as heads `[B, H, L, D]`, scaled by `D^(-½)` and
    /// rotated by the last `L` positions of `rotary`.
    pub fn queries(&self, ctx: &Ctx, x_q: &Var, rotary: Option<&RotaryTables>) -> Result<Var> {
        let scale = (self.head_dim as f32).powf(-0.5);
        let q = self.split_heads(&self.q_proj.forward_scaled(ctx, x_q, scale)?, self.head_dim)?;
        match rotary {
            Some(r) => r.apply(q),
            None => Ok(q),
        }
    }

    /// The keys (rotated by the last `N` positions of `rotary`) and values of `x_kv`
    /// `[B, N, C_kv]`, as heads `[B, H, N, D]`.
    pub fn keys_values(&self, ctx: &Ctx, x_kv: &Var, rotary: Option<&RotaryTables>) -> Result<(Var, Var)> {
        let k = self.split_heads(&self.k_proj.forward(ctx, x_kv)?, self.head_dim)?;
        let v = self.split_heads(&self.v_proj.forward(ctx, x_kv)?, self.v_head_dim)?;
        let k = match rotary {
            Some(r) => r.apply(k)?,
            None => k,
        };
        Ok((k, v))
    }

    /// Heads `q` `[B, H, L, D]` attend to `k`, `v` `[B, H, N, D]` (fused when `opts` allows,
    /// composed otherwise); the heads are merged and projected: `[B, L, C]`. The rotary
    /// tables in `opts` are not used here: `q` and `k` come rotated.
    pub fn attend(&self, ctx: &Ctx, q: &Var, k: &Var, v: &Var, opts: &AttendOptions) -> Result<Var> {
        self.o_proj.forward(ctx, &self.merged_heads(ctx, q, k, v, opts)?)
    }

    /// [`Attention::attend`] added to the residual stream `residual` `[B, L, C]` by the output
    /// projection itself (no pass of its own over the output).
    pub fn attend_adding(
        &self,
        ctx: &Ctx,
        (q, k, v): (&Var, &Var, &Var),
        opts: &AttendOptions,
        residual: &Var,
    ) -> Result<Var> {
        self.o_proj.forward_adding(ctx, &self.merged_heads(ctx, q, k, v, opts)?, residual)
    }

    /// The attention's heads, merged: `[B, L, H·Dv]`, before the output projection.
    fn merged_heads(&self, ctx: &Ctx, q: &Var, k: &Var, v: &Var, opts: &AttendOptions) -> Result<Var> {
        let (b, l) = (q.shape()[0], q.shape()[2]);
        let with_dropout = ctx.train && opts.dropout > 0.0;
        let o = match opts.visibility {
            Some(vis) if opts.mask.is_none() && !with_dropout => q.attention(k, v, vis)?,
            _ => {
                let dense;
                let mask = match (opts.mask, opts.visibility) {
                    (Some(m), _) => Some(m),
                    (None, Some(vis)) => {
                        dense = dense_mask(vis, b, self.heads, l, k.shape()[2])?;
                        Some(&dense)
                    }
                    (None, None) => None,
                };
                attend_composed(ctx, q, k, v, mask, opts.dropout)?
            }
        }; // [B, H, L, D]
        Ok(o.permute(&[0, 2, 1, 3])?.reshape(&[b, l, self.heads * self.v_head_dim])?)
    }
}

/// The composed attention of heads `q` `[B, H, L, D]` to `k`, `v` `[B, H, N, D]`:
/// `softmax(masked_fill(q kᵀ, mask))` (with dropout) times `v`. Builds `[B, H, L, N]`.
pub fn attend_composed(ctx: &Ctx, q: &Var, k: &Var, v: &Var, mask: Option<&Tensor>, p: f32) -> Result<Var> {
    let mut scores = q.matmul(&k.t()?)?; // [B, H, L, N]
    if let Some(mask) = mask {
        scores = scores.masked_fill(&mask.to_device(&scores.value().device())?, MASKED)?;
    }
    let probs = dropout(ctx, &scores.softmax(3)?, p)?;
    Ok(probs.matmul(v)?)
}

/// The dense mask of a [`KeyVisibility`] for `heads` heads: 1 where query `i` of row `b` does
/// not see key `j`; `[B, 1, L, N]` when every head sees alike, `[B, H, L, N]` when sparse
/// patterns differ by head.
pub fn dense_mask(
    vis: &KeyVisibility,
    batch: usize,
    heads: usize,
    queries: usize,
    keys: usize,
) -> Result<Tensor> {
    let mask_heads = if vis.pattern.as_ref().is_some_and(|p| p.len() > 1) { heads } else { 1 };
    let data = (0..batch)
        .flat_map(|b| {
            (0..mask_heads).flat_map(move |h| {
                (0..queries)
                    .flat_map(move |i| (0..keys).map(move |j| (!vis.sees(b, h, i, j, keys)) as u8 as f32))
            })
        })
        .collect();
    Ok(Tensor::from_vec(data, &[batch, mask_heads, queries, keys])?)
}
