//! Fused attention: `softmax(q kᵀ) v` for every head, with masking computed from positions,
//! in one op whose forward and backward never build the `[B, H, L, N]` score matrix.
//!
//! Forward (Dao et al., 2022, "FlashAttention"): for each query row, keys are visited in
//! blocks; the row keeps its running maximum `m`, the running sum `ℓ = Σ e^{s_j − m}` and the
//! running output `o = Σ e^{s_j − m} v_j`, rescaling `ℓ` and `o` by `e^{m_old − m_new}` when
//! the maximum grows. At the end `o / ℓ` is the output and `lse = m + ln ℓ` is saved.
//!
//! Backward: with `p_ij = e^{s_ij − lse_i}` recomputed block by block from the saved `lse`,
//! and `Δ_i = Σ_d do_id o_id`:
//! `dv_j = Σ_i p_ij do_i`, `dp_ij = do_i · v_j`, `ds_ij = p_ij (dp_ij − Δ_i)`,
//! `dq_i = Σ_j ds_ij k_j`, `dk_j = Σ_i ds_ij q_i`. Memory grows with the inputs (`B·N·H·D`),
//! not with `B·H·L·N`.
//!
//! Masking ([`KeyVisibility`]) matches the composition `masked_fill(MASKED)` + softmax it
//! replaces (and is tested against): a hidden score is the most negative f32, so a query that
//! sees at least one key gives hidden keys exactly zero weight, and a query that sees none
//! averages every value uniformly. Whole blocks of keys a query block cannot see are skipped,
//! which for a sparse pattern ([`crate::SparsePattern`]) is most of them.
//! Scaling by `D^-½` and rotary are applied to `q` and `k` before the op, as in the reference.

use std::sync::Arc;

use crate::backend::Owned;
use crate::bail;
use crate::error::{fmt_shape, Result};
use crate::sparse_pattern::SparsePattern;
use crate::tensor::Tensor;

/// Which keys each query may see: computed from positions, never stored as a dense mask.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyVisibility {
    /// Causal attention: query `i` sits at absolute position `query_offset + i` and sees the
    /// keys whose position is at most that (Perceiver AR: the latents are the last `L` of `N`
    /// positions, so the offset is `N − L`).
    pub causal: Option<usize>,
    /// The absolute position of each key, `[rows, keys]` row-major with `rows` 1 (shared) or
    /// the batch, non-decreasing along each row; `None`: key `j` is at position `j`. Needed
    /// when keys are a subset of positions (the prefix keys that cross-attend dropout kept).
    pub key_positions: Option<Arc<[usize]>>,
    /// Keys hidden from every query of their row (padding, dropped keys), `[rows, keys]` with
    /// `rows` 1 or the batch.
    pub hidden_keys: Option<Arc<[bool]>>,
    /// A sparse pattern on positions (the Sparse Transformer's), one for all heads or one per
    /// head (interleaved heads). A query sits at position `causal + i` (`i` without `causal`).
    pub pattern: Option<Arc<[SparsePattern]>>,
}

impl KeyVisibility {
    /// Every query sees every key.
    pub fn all() -> Self {
        KeyVisibility::default()
    }

    /// Causal, with queries at positions `query_offset..`.
    pub fn causal(query_offset: usize) -> Self {
        KeyVisibility { causal: Some(query_offset), ..Default::default() }
    }

    /// The position of key `j` in batch row `b` (of `n` keys).
    #[inline]
    pub fn key_position(&self, b: usize, j: usize, n: usize) -> usize {
        match &self.key_positions {
            Some(p) if p.len() == n => p[j],
            Some(p) => p[b * n + j],
            None => j,
        }
    }

    /// Whether key `j` of batch row `b` is hidden.
    #[inline]
    pub fn is_hidden(&self, b: usize, j: usize, n: usize) -> bool {
        match &self.hidden_keys {
            Some(h) if h.len() == n => h[j],
            Some(h) => h[b * n + j],
            None => false,
        }
    }

    /// A sparse pattern for every head.
    pub fn sparse(pattern: SparsePattern) -> Self {
        KeyVisibility { causal: Some(0), pattern: Some(Arc::from(vec![pattern])), ..Default::default() }
    }

    /// The position of query `i`.
    #[inline]
    pub fn query_position(&self, i: usize) -> usize {
        self.causal.unwrap_or(0) + i
    }

    /// The sparse pattern of head `h`, if any.
    #[inline]
    pub fn pattern_of(&self, h: usize) -> Option<&SparsePattern> {
        self.pattern.as_deref().map(|p| if p.len() == 1 { &p[0] } else { &p[h] })
    }

    /// Whether query `i` of batch row `b`, head `h`, sees key `j` (of `n`).
    #[inline]
    pub fn sees(&self, b: usize, h: usize, i: usize, j: usize, n: usize) -> bool {
        if self.is_hidden(b, j, n) {
            return false;
        }
        let (p, k) = (self.query_position(i), self.key_position(b, j, n));
        self.causal.is_none_or(|_| k <= p) && self.pattern_of(h).is_none_or(|pattern| pattern.allows(p, k))
    }

    /// Checks the per-key tables against `batch` rows of `keys` keys, and the patterns against
    /// `heads` heads.
    fn check(&self, batch: usize, heads: usize, keys: usize) -> Result<()> {
        if let Some(patterns) = &self.pattern {
            if patterns.len() != 1 && patterns.len() != heads {
                bail!(
                    "attention",
                    "{} sparse patterns for {heads} heads (need 1 or {heads})",
                    patterns.len()
                );
            }
            if let Some(problem) = patterns.iter().find_map(SparsePattern::problem) {
                bail!("attention", "sparse pattern: {problem}");
            }
        }
        let rows_ok = |len: usize| len == keys || len == batch * keys;
        if let Some(p) = &self.key_positions {
            if !rows_ok(p.len()) {
                bail!("attention", "{} key positions for {batch} rows of {keys} keys", p.len());
            }
            if p.chunks(keys.max(1)).any(|row| row.windows(2).any(|w| w[0] > w[1])) {
                bail!("attention", "key positions must not decrease along a row");
            }
        }
        if let Some(h) = &self.hidden_keys {
            if !rows_ok(h.len()) {
                bail!("attention", "{} hidden-key flags for {batch} rows of {keys} keys", h.len());
            }
        }
        Ok(())
    }
}

/// Output of [`Tensor::attention_with_stats`].
pub struct AttentionParts {
    /// `[B, H, L, Dv]`.
    pub out: Tensor,
    /// `[B, H, L]`: each query's `log Σ_j e^{s_ij}` (−∞ for a query that sees no key).
    pub lse: Tensor,
}

/// The sizes of one attention, checked.
struct Sizes {
    batch: usize,
    heads: usize,
    queries: usize,
    keys: usize,
    dv: usize,
}

fn check_sizes(q: &Tensor, k: &Tensor, v: &Tensor, vis: &KeyVisibility) -> Result<Sizes> {
    let op = "attention";
    for t in [k, v] {
        q.same_device(op, t)?;
    }
    let (sq, sk, sv) = (q.shape(), k.shape(), v.shape());
    if sq.len() != 4 || sk.len() != 4 || sv.len() != 4 {
        bail!(op, "q {}, k {}, v {} must be [B, H, T, D]", fmt_shape(sq), fmt_shape(sk), fmt_shape(sv));
    }
    if sk[..2] != sq[..2] || sv[..3] != sk[..3] || sk[3] != sq[3] {
        bail!(
            op,
            "q {}, k {}, v {}: batch and heads must agree, k and v share keys, q and k share channels",
            fmt_shape(sq),
            fmt_shape(sk),
            fmt_shape(sv)
        );
    }
    if sq[3] == 0 || sv[3] == 0 {
        bail!(op, "q {} and v {} need at least one channel", fmt_shape(sq), fmt_shape(sv));
    }
    vis.check(sq[0], sq[1], sk[2])?;
    Ok(Sizes { batch: sq[0], heads: sq[1], queries: sq[2], keys: sk[2], dv: sv[3] })
}

/// The sizes of a backward, after checking the saved forward and `d_out` against them.
fn check_backward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    parts: &AttentionParts,
    d_out: &Tensor,
    vis: &KeyVisibility,
) -> Result<Sizes> {
    let s = check_sizes(q, k, v, vis)?;
    let op = "attention_backward";
    let out_shape = [s.batch, s.heads, s.queries, s.dv];
    for (name, t, shape) in [
        ("out", &parts.out, &out_shape[..]),
        ("d_out", d_out, &out_shape[..]),
        ("lse", &parts.lse, &[s.batch, s.heads, s.queries][..]),
    ] {
        q.same_device(op, t)?;
        if t.shape() != shape {
            bail!(op, "{name} has shape {}, expected {}", fmt_shape(t.shape()), fmt_shape(shape));
        }
    }
    Ok(s)
}

impl Tensor {
    /// Attention of queries `self` `[B, H, L, D]` to keys `k` `[B, H, N, D]` and values `v`
    /// `[B, H, N, Dv]`: `softmax(q kᵀ) v` with the keys `vis` allows, `[B, H, L, Dv]`.
    pub fn attention(&self, k: &Tensor, v: &Tensor, vis: &KeyVisibility) -> Result<Tensor> {
        Ok(self.attention_with_stats(k, v, vis)?.out)
    }

    /// [`Tensor::attention`], also returning the per-query log-sum-exp its backward needs.
    pub fn attention_with_stats(
        &self,
        k: &Tensor,
        v: &Tensor,
        vis: &KeyVisibility,
    ) -> Result<AttentionParts> {
        let s = check_sizes(self, k, v, vis)?;
        let out = self.kernels().attention(self.operand()?, k.operand()?, v.operand()?, vis)?;
        let (b, h, l) = (s.batch, s.heads, s.queries);
        Ok(AttentionParts {
            out: Tensor::from_output_as(out.out, out.order.layout([b, h, l, s.dv])),
            lse: Tensor::from_output(out.lse, &[b, h, l]),
        })
    }

    /// The fused backward: `(dq, dk, dv)` from the forward's inputs (`self` is `q`), its
    /// output and log-sum-exp, and the output gradient `d_out`.
    pub fn attention_backward(
        &self,
        k: &Tensor,
        v: &Tensor,
        parts: &AttentionParts,
        d_out: &Tensor,
        vis: &KeyVisibility,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let s = check_backward(self, k, v, parts, d_out, vis)?;
        let saved = crate::backend::AttentionSaved {
            q: self.operand()?,
            k: k.operand()?,
            v: v.operand()?,
            out: parts.out.operand()?,
            lse: parts.lse.operand()?,
        };
        let g = self.kernels().attention_backward(saved, d_out.operand()?, vis)?;
        let (b, h, l, n, d) = (s.batch, s.heads, s.queries, s.keys, self.shape()[3]);
        Ok((
            Tensor::from_output(g.dq, &[b, h, l, d]),
            Tensor::from_output(g.dk, &[b, h, n, d]),
            Tensor::from_output(g.dv, &[b, h, n, s.dv]),
        ))
    }

    /// [`Tensor::attention_backward`] taking `k` and `v` by value: when no other tensor shares
    /// their storage, `dk` and `dv` are written over them (the same numbers, in `k`'s and
    /// `v`'s layouts), so the backward's peak holds two key-sized tensors fewer. A tape that
    /// is done with the forward's keys hands them over this way.
    pub fn attention_backward_over_keys(
        &self,
        mut k: Tensor,
        mut v: Tensor,
        parts: &AttentionParts,
        d_out: &Tensor,
        vis: &KeyVisibility,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let s = check_backward(self, &k, &v, parts, d_out, vis)?;
        if Owned::of(&mut k).is_none() || Owned::of(&mut v).is_none() {
            return self.attention_backward(&k, &v, parts, d_out, vis);
        }
        let dq = {
            let (Some(k), Some(v)) = (Owned::of(&mut k), Owned::of(&mut v)) else {
                unreachable!("both were just found private")
            };
            let saved = crate::backend::AttentionSavedOwned {
                q: self.operand()?,
                k,
                v,
                out: parts.out.operand()?,
                lse: parts.lse.operand()?,
            };
            self.kernels().attention_backward_over_keys(saved, d_out.operand()?, vis)?
        };
        let (dq, order) = dq;
        let shape = [s.batch, s.heads, s.queries, self.shape()[3]];
        Ok((Tensor::from_output_as(dq, order.layout(shape)), k, v))
    }
}
