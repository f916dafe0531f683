//! Fused attention on the CPU: blocks of queries against blocks of keys, with `sgemm` for the
//! block products and the `wide` exp for the softmax (the math is in [`crate::attention`]).
//!
//! Work is split across threads by (batch, head): each task streams its queries over its keys
//! and writes its own rows of the head-major outputs (`[B, H, T, D]`), so no two threads write
//! the same memory and no per-task buffers are needed. Per task,
//! queries go in blocks of [`QUERY_BLOCK`] rows and keys in blocks of [`KEY_BLOCK`]: the score
//! block `[QUERY_BLOCK, KEY_BLOCK]` stays in cache and the `[L, N]` scores never exist. A key
//! block that no query of the block can see (in the causal future, all hidden, or never reached
//! by a sparse pattern) is skipped; one that every query sees fully needs no masking; only
//! blocks on the diagonal (or partly reached by a pattern) are masked element by element.

use rayon::prelude::*;

use super::few_rows::{self, Strided as Matrix, FEW_ROWS};
use super::math;
use crate::attention::KeyVisibility;
use crate::layout::Layout;
use crate::sparse_pattern::Reach;

/// Query rows per block.
pub const QUERY_BLOCK: usize = 128;
/// Key rows per block.
pub const KEY_BLOCK: usize = 256;
/// What a hidden score is set to: the composition's `masked_fill` value.
const MASKED: f32 = -f32::MAX;

/// A `[B, H, T, D]` operand: its data and layout.
#[derive(Clone, Copy)]
pub(crate) struct Heads<'a> {
    pub data: &'a [f32],
    pub layout: &'a Layout,
}

impl Heads<'_> {
    fn dim(&self, axis: usize) -> usize {
        self.layout.shape()[axis]
    }
    /// Storage position of row `t` of head `(b, h)`, and the row and column strides.
    fn matrix(&self, b: usize, h: usize, t: usize) -> Matrix<'_> {
        let s = self.layout.strides();
        Matrix {
            data: self.data,
            offset: self.layout.offset() + b * s[0] + h * s[1] + t * s[2],
            row_stride: s[2],
            col_stride: s[3],
        }
    }
}

/// `c = a·b + beta·c` for `a` `m×k`, `b` `k×n`, `c` `m×n` row-major with row stride `ldc`.
fn gemm((m, n, k): (usize, usize, usize), a: Matrix, b: Matrix, beta: f32, (c, ldc): (&mut [f32], usize)) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        for r in 0..m {
            c[r * ldc..r * ldc + n].iter_mut().for_each(|x| *x *= beta);
        }
        return;
    }
    if m <= FEW_ROWS {
        // One query (a cached generation step): no packing.
        few_rows::product((m, k, n), a, b, beta, (0, c, ldc));
        return;
    }
    // Bounds of everything sgemm touches, checked here so the call below is sound.
    let last =
        |x: &Matrix, r: usize, cols: usize| x.offset + (r - 1) * x.row_stride + (cols - 1) * x.col_stride;
    assert!(last(&a, m, k) < a.data.len() && last(&b, k, n) < b.data.len(), "gemm operand out of bounds");
    assert!(n <= ldc && (m - 1) * ldc + n <= c.len(), "gemm output out of bounds");
    // SAFETY: the asserts above put every element read from `a` and `b` and every element of
    // `c` written inside their slices; `c` is borrowed mutably, so nothing else aliases it.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.data.as_ptr().add(a.offset),
            a.row_stride as isize,
            a.col_stride as isize,
            b.data.as_ptr().add(b.offset),
            b.row_stride as isize,
            b.col_stride as isize,
            beta,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// How a block of queries `[i0, i1)` relates to a block of keys `[j0, j1)` of batch row `b`.
#[derive(Clone, Copy, PartialEq)]
enum Block {
    /// No query sees any key.
    Hidden,
    /// Every query sees every key.
    Visible,
    /// Decide per element.
    Mixed,
}

fn classify(
    vis: &KeyVisibility,
    (b, h): (usize, usize),
    (i0, i1): (usize, usize),
    (j0, j1): (usize, usize),
    n: usize,
) -> Block {
    let hidden = match vis.hidden_keys {
        Some(_) => (j0..j1).filter(|&j| vis.is_hidden(b, j, n)).count(),
        None => 0,
    };
    if hidden == j1 - j0 {
        return Block::Hidden;
    }
    // Key positions do not decrease along a row: the block's first and last bound them.
    let queries = (vis.query_position(i0), vis.query_position(i1 - 1));
    let keys = (vis.key_position(b, j0, n), vis.key_position(b, j1 - 1, n));
    let pattern = vis.pattern_of(h).map(|p| p.reach(queries, keys));
    match pattern {
        Some(Reach::None) => return Block::Hidden,
        Some(Reach::Some) => return Block::Mixed,
        Some(Reach::All) | None => {}
    }
    match vis.causal {
        // Key positions do not decrease along a row: the first key is the earliest.
        Some(offset) if vis.key_position(b, j0, n) > offset + i1 - 1 => Block::Hidden,
        Some(offset) if vis.key_position(b, j1 - 1, n) > offset + i0 => Block::Mixed,
        _ if hidden > 0 => Block::Mixed,
        _ => Block::Visible,
    }
}

/// Sets the entries of a block (rows of `bk`, query `i0 + r` against key `j0 + c`) whose key
/// the query cannot see to `value`.
fn mask_block(
    vis: &KeyVisibility,
    (b, h): (usize, usize),
    (i0, j0): (usize, usize),
    n: usize,
    (block, bk): (&mut [f32], usize),
    value: f32,
) {
    for (r, row) in block.chunks_mut(bk).enumerate() {
        for (c, x) in row.iter_mut().enumerate() {
            if !vis.sees(b, h, i0 + r, j0 + c, n) {
                *x = value;
            }
        }
    }
}

/// One (batch, head) of the forward, into its rows of `out` `[L, Dv]` and `lse` `[L]`.
fn forward_head(
    (q, k, v): (Heads, Heads, Heads),
    vis: &KeyVisibility,
    (b, h): (usize, usize),
    out: &mut [f32],
    lse: &mut [f32],
) {
    let (l, d, n, dv) = (q.dim(2), q.dim(3), k.dim(2), v.dim(3));
    out.fill(0.0);
    // Score blocks no larger than the problem (one query, in a generation step).
    let block = QUERY_BLOCK.min(l) * KEY_BLOCK.min(n);
    let (mut scores, mut probs) = (vec![0.0; block], vec![0.0; block]);
    for i0 in (0..l).step_by(QUERY_BLOCK) {
        let bq = QUERY_BLOCK.min(l - i0);
        let (mut max, mut sum) = (vec![f32::NEG_INFINITY; bq], vec![0.0f32; bq]);
        let acc = &mut out[i0 * dv..(i0 + bq) * dv];
        for j0 in (0..n).step_by(KEY_BLOCK) {
            let bk = KEY_BLOCK.min(n - j0);
            let kind = classify(vis, (b, h), (i0, i0 + bq), (j0, j0 + bk), n);
            if kind == Block::Hidden {
                continue;
            }
            let s = &mut scores[..bq * bk];
            gemm((bq, bk, d), q.matrix(b, h, i0), k.matrix(b, h, j0).t(), 0.0, (s, bk));
            if kind == Block::Mixed {
                mask_block(vis, (b, h), (i0, j0), n, (s, bk), MASKED);
            }
            let p = &mut probs[..bq * bk];
            for r in 0..bq {
                let row = &s[r * bk..(r + 1) * bk];
                let m_new = max[r].max(math::max(row));
                // The first block: nothing to rescale (and -inf - -inf would be NaN).
                let correction = if max[r] == f32::NEG_INFINITY { 0.0 } else { (max[r] - m_new).exp() };
                sum[r] = sum[r] * correction
                    + math::sum_exp_shifted(row, m_new, Some(&mut p[r * bk..(r + 1) * bk]));
                acc[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= correction);
                max[r] = m_new;
            }
            gemm((bq, dv, bk), Matrix::contiguous(p, bk), v.matrix(b, h, j0), 1.0, (acc, dv));
        }
        for r in 0..bq {
            let row = &mut acc[r * dv..(r + 1) * dv];
            if max[r] == f32::NEG_INFINITY || max[r] == MASKED {
                // Sees no key: the composition's softmax over all-equal scores averages every value.
                uniform_average(v, b, h, row);
                lse[i0 + r] = f32::NEG_INFINITY;
            } else {
                let inv = 1.0 / sum[r];
                row.iter_mut().for_each(|x| *x *= inv);
                lse[i0 + r] = max[r] + sum[r].ln();
            }
        }
    }
}

/// The mean of every value row of head `(b, h)`, into `row`.
fn uniform_average(v: Heads, b: usize, h: usize, row: &mut [f32]) {
    let n = v.dim(2);
    row.fill(0.0);
    for j in 0..n {
        let m = v.matrix(b, h, j);
        for (c, x) in row.iter_mut().enumerate() {
            *x += m.data[m.offset + c * m.col_stride];
        }
    }
    row.iter_mut().for_each(|x| *x /= n as f32);
}

/// The forward: `out` `[B, H, L, Dv]` and `lse` `[B, H, L]`, each (batch, head) computed by
/// one task into its own rows (so the tasks never share memory).
pub(crate) fn forward(q: Heads, k: Heads, v: Heads, vis: &KeyVisibility) -> (Vec<f32>, Vec<f32>) {
    let (batch, heads, l, dv) = (q.dim(0), q.dim(1), q.dim(2), v.dim(3));
    let mut out = super::pool::uninit(batch * heads * l * dv);
    let mut lse = super::pool::uninit(batch * heads * l);
    if l > 0 {
        out.par_chunks_mut((l * dv).max(1))
            .zip(lse.par_chunks_mut(l))
            .enumerate()
            .for_each(|(bh, (o, s))| forward_head((q, k, v), vis, (bh / heads, bh % heads), o, s));
    }
    (out, lse)
}

/// The saved forward of one attention, as the backward reads it.
#[derive(Clone, Copy)]
pub(crate) struct Saved<'a> {
    pub q: Heads<'a>,
    pub k: Heads<'a>,
    pub v: Heads<'a>,
    pub out: Heads<'a>,
    /// `[B, H, L]`.
    pub lse: (&'a [f32], &'a Layout),
}

/// Where one (batch, head) of the backward writes: its rows of `dq` `[L, D]`, `dk` `[N, D]`
/// and `dv` `[N, Dv]`.
struct HeadGrads<'a> {
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
}

/// One (batch, head) of the backward.
fn backward_head(s: Saved, d_out: Heads, vis: &KeyVisibility, (b, h): (usize, usize), grads: HeadGrads) {
    let (q, k, v) = (s.q, s.k, s.v);
    let (l, d, n, dv) = (q.dim(2), q.dim(3), k.dim(2), v.dim(3));
    let (lse_data, lse_layout) = s.lse;
    let ls = lse_layout.strides();
    let lse = |i: usize| lse_data[lse_layout.offset() + b * ls[0] + h * ls[1] + i * ls[2]];
    // Δ_i = do_i · o_i.
    let delta: Vec<f32> = (0..l)
        .map(|i| {
            let (o, g) = (s.out.matrix(b, h, i), d_out.matrix(b, h, i));
            (0..dv).map(|c| o.data[o.offset + c * o.col_stride] * g.data[g.offset + c * g.col_stride]).sum()
        })
        .collect();
    // The slices arrive zeroed.
    let HeadGrads { dq, dk, dv: dv_acc } = grads;
    let mut probs = vec![0.0; QUERY_BLOCK * KEY_BLOCK];
    let mut dscores = vec![0.0; QUERY_BLOCK * KEY_BLOCK];
    for i0 in (0..l).step_by(QUERY_BLOCK) {
        let bq = QUERY_BLOCK.min(l - i0);
        for j0 in (0..n).step_by(KEY_BLOCK) {
            let bk = KEY_BLOCK.min(n - j0);
            let kind = classify(vis, (b, h), (i0, i0 + bq), (j0, j0 + bk), n);
            if kind == Block::Hidden {
                continue;
            }
            // p = e^{s − lse}, zero where hidden (or where the query sees nothing: handled below).
            let (scores, p) = (&mut dscores[..bq * bk], &mut probs[..bq * bk]);
            gemm((bq, bk, d), q.matrix(b, h, i0), k.matrix(b, h, j0).t(), 0.0, (scores, bk));
            for r in 0..bq {
                let (m, row) = (lse(i0 + r), &mut p[r * bk..(r + 1) * bk]);
                if m == f32::NEG_INFINITY {
                    row.fill(0.0);
                } else {
                    math::sum_exp_shifted(&scores[r * bk..(r + 1) * bk], m, Some(row));
                }
            }
            if kind == Block::Mixed {
                mask_block(vis, (b, h), (i0, j0), n, (p, bk), 0.0);
            }
            let p = &probs[..bq * bk];
            // dv_j += Σ_i p_ij do_i.
            let dv_blk = &mut dv_acc[j0 * dv..(j0 + bk) * dv];
            gemm((bk, dv, bq), Matrix::contiguous(p, bk).t(), d_out.matrix(b, h, i0), 1.0, (dv_blk, dv));
            // dp = do vᵀ, then ds = p (dp − Δ).
            let ds = &mut dscores[..bq * bk];
            gemm((bq, bk, dv), d_out.matrix(b, h, i0), v.matrix(b, h, j0).t(), 0.0, (ds, bk));
            for r in 0..bq {
                let di = delta[i0 + r];
                for c in 0..bk {
                    ds[r * bk + c] = p[r * bk + c] * (ds[r * bk + c] - di);
                }
            }
            let ds = &dscores[..bq * bk];
            // dq_i += Σ_j ds_ij k_j; dk_j += Σ_i ds_ij q_i.
            let dq_blk = &mut dq[i0 * d..(i0 + bq) * d];
            gemm((bq, d, bk), Matrix::contiguous(ds, bk), k.matrix(b, h, j0), 1.0, (dq_blk, d));
            let dk_blk = &mut dk[j0 * d..(j0 + bk) * d];
            gemm((bk, d, bq), Matrix::contiguous(ds, bk).t(), q.matrix(b, h, i0), 1.0, (dk_blk, d));
        }
    }
    // A query that sees no key averaged every value: dv_j += do_i / N.
    for i in (0..l).filter(|&i| lse(i) == f32::NEG_INFINITY) {
        let g = d_out.matrix(b, h, i);
        for j in 0..n {
            for c in 0..dv {
                dv_acc[j * dv + c] += g.data[g.offset + c * g.col_stride] / n as f32;
            }
        }
    }
}

/// The backward: `dq` `[B, H, L, D]`, `dk` `[B, H, N, D]`, `dv` `[B, H, N, Dv]`, each
/// (batch, head) computed by one task into its own rows.
pub(crate) fn backward(s: Saved, d_out: Heads, vis: &KeyVisibility) -> [Vec<f32>; 3] {
    let (batch, heads, l, d, n, dv) =
        (s.q.dim(0), s.q.dim(1), s.q.dim(2), s.q.dim(3), s.k.dim(2), s.v.dim(3));
    let zeroed = super::pool::zeroed;
    let (mut dq, mut dk, mut dvs) =
        (zeroed(batch * heads * l * d), zeroed(batch * heads * n * d), zeroed(batch * heads * n * dv));
    if l * d > 0 && n * d > 0 && n * dv > 0 {
        dq.par_chunks_mut(l * d)
            .zip(dk.par_chunks_mut(n * d))
            .zip(dvs.par_chunks_mut(n * dv))
            .enumerate()
            .for_each(|(bh, ((dq, dk), dv))| {
                backward_head(s, d_out, vis, (bh / heads, bh % heads), HeadGrads { dq, dk, dv })
            });
    }
    [dq, dk, dvs]
}
