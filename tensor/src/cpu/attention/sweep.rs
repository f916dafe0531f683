//! One sweep of the block kernel: a set of queries streamed over a set of keys, forward
//! (online softmax) or backward (probabilities recomputed from the saved log-sum-exp).
//!
//! A sweep does not know where its rows come from: they are the rows of one (batch, head) of
//! the operands, or rows gathered from them into contiguous buffers (the far keys of a sparse
//! pattern, see [`super::sparse`]). Which pairs it may use is a `Rule`: per block of queries
//! and block of keys, whether no pair, every pair or some pairs are seen, and per pair whether
//! it is. Blocks no pair of which is seen are skipped; only mixed blocks are masked.

use super::super::few_rows::{self, Strided as Matrix, FEW_ROWS};
use super::super::math;

/// Query rows per block.
pub const QUERY_BLOCK: usize = 128;
/// Key rows per block.
pub const KEY_BLOCK: usize = 256;
/// What a hidden score is set to: the composition's `masked_fill` value.
pub(super) const MASKED: f32 = -f32::MAX;

/// How a block of queries relates to a block of keys under a [`Rule`].
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Block {
    /// No query sees any key.
    Hidden,
    /// Every query sees every key.
    Visible,
    /// Decide per element.
    Mixed,
}

/// Which (query, key) pairs of a sweep are used; indices are the sweep's own rows.
pub(super) trait Rule {
    /// Queries `i0..i1` against keys `j0..j1`. `Hidden` and `Visible` must be exact.
    fn block(&self, queries: (usize, usize), keys: (usize, usize)) -> Block;
    /// Whether query `i` sees key `j`.
    fn sees(&self, i: usize, j: usize) -> bool;
}

/// The rows of one sweep: row `t` of a matrix is its `t`-th query (or key, or value).
#[derive(Clone, Copy)]
pub(super) struct Rows<'a> {
    /// `[queries, d]`.
    pub q: Matrix<'a>,
    /// `[keys, d]`.
    pub k: Matrix<'a>,
    /// `[keys, dv]`.
    pub v: Matrix<'a>,
    pub queries: usize,
    pub keys: usize,
    pub d: usize,
    pub dv: usize,
}

/// Row `t` of `m` onwards.
pub(super) fn from_row(m: Matrix, t: usize) -> Matrix {
    Matrix { offset: m.offset + t * m.row_stride, ..m }
}

/// Score and probability blocks and the forward's running maximum and sum per query row,
/// reused by every sweep of a head.
pub(super) struct Scratch {
    scores: Vec<f32>,
    probs: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Scratch {
    /// Room for the blocks of any sweep of at most `queries` queries and `keys` keys (a
    /// generation step of one query gets a block of one row).
    pub fn new(queries: usize, keys: usize) -> Self {
        let rows = QUERY_BLOCK.min(queries).max(1);
        let size = rows * KEY_BLOCK.min(keys).max(1);
        Scratch {
            scores: vec![0.0; size],
            probs: vec![0.0; size],
            max: vec![0.0; rows],
            sum: vec![0.0; rows],
        }
    }
}

/// `c = a·b + beta·c` for `a` `m×k`, `b` `k×n`, `c` `m×n` row-major with row stride `ldc`.
pub(super) fn gemm(
    (m, n, k): (usize, usize, usize),
    a: Matrix,
    b: Matrix,
    beta: f32,
    (c, ldc): (&mut [f32], usize),
) {
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

/// Sets the entries of a block (rows of `cols`, query `i0 + r` against key `j0 + c`) whose
/// pair the rule refuses to `value`.
fn mask_block(rule: &impl Rule, (i0, j0): (usize, usize), (block, cols): (&mut [f32], usize), value: f32) {
    for (r, row) in block.chunks_mut(cols).enumerate() {
        for (c, x) in row.iter_mut().enumerate() {
            if !rule.sees(i0 + r, j0 + c) {
                *x = value;
            }
        }
    }
}

/// The forward of one sweep: each query's softmax-weighted average of the values it sees,
/// into `out` `[queries, dv]`, and its log-sum-exp into `lse` `[queries]`. A query that sees no
/// key of the sweep gets a zero row and `lse = −∞` (its caller decides what that means).
pub(super) fn forward(x: Rows, rule: &impl Rule, scratch: &mut Scratch, out: &mut [f32], lse: &mut [f32]) {
    let (l, n, d, dv) = (x.queries, x.keys, x.d, x.dv);
    out.fill(0.0);
    for i0 in (0..l).step_by(QUERY_BLOCK) {
        let bq = QUERY_BLOCK.min(l - i0);
        let (max, sum) = (&mut scratch.max[..bq], &mut scratch.sum[..bq]);
        max.fill(f32::NEG_INFINITY);
        sum.fill(0.0);
        let acc = &mut out[i0 * dv..(i0 + bq) * dv];
        for j0 in (0..n).step_by(KEY_BLOCK) {
            let bk = KEY_BLOCK.min(n - j0);
            let kind = rule.block((i0, i0 + bq), (j0, j0 + bk));
            if kind == Block::Hidden {
                continue;
            }
            let s = &mut scratch.scores[..bq * bk];
            gemm((bq, bk, d), from_row(x.q, i0), from_row(x.k, j0).t(), 0.0, (s, bk));
            if kind == Block::Mixed {
                mask_block(rule, (i0, j0), (s, bk), MASKED);
            }
            let p = &mut scratch.probs[..bq * bk];
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
            gemm((bq, dv, bk), Matrix::contiguous(p, bk), from_row(x.v, j0), 1.0, (acc, dv));
        }
        for r in 0..bq {
            let row = &mut acc[r * dv..(r + 1) * dv];
            if max[r] == f32::NEG_INFINITY || max[r] == MASKED {
                row.fill(0.0);
                lse[i0 + r] = f32::NEG_INFINITY;
            } else {
                let inv = 1.0 / sum[r];
                row.iter_mut().for_each(|x| *x *= inv);
                lse[i0 + r] = max[r] + sum[r].ln();
            }
        }
    }
}

/// What the backward of one sweep reads besides its rows: the output gradient `[queries, dv]`,
/// and per query the final log-sum-exp and `Δ = do · o` of the whole attention.
#[derive(Clone, Copy)]
pub(super) struct Upstream<'a> {
    pub d_out: Matrix<'a>,
    pub lse: &'a [f32],
    pub delta: &'a [f32],
}

/// Where the backward of one sweep adds its gradients: `dq` `[queries, d]`, `dk` `[keys, d]`,
/// `dv` `[keys, dv]`, row-major.
pub(super) struct Grads<'a> {
    pub dq: &'a mut [f32],
    pub dk: &'a mut [f32],
    pub dv: &'a mut [f32],
}

/// The backward of one sweep, added into `grads`: with `p = e^{s − lse}` over the pairs the
/// rule allows, `dv += pᵀ do`, `ds = p (do vᵀ − Δ)`, `dq += ds k`, `dk += dsᵀ q`.
pub(super) fn backward(x: Rows, up: Upstream, rule: &impl Rule, scratch: &mut Scratch, grads: Grads) {
    let (l, n, d, dv) = (x.queries, x.keys, x.d, x.dv);
    let Grads { dq, dk, dv: dv_acc } = grads;
    for i0 in (0..l).step_by(QUERY_BLOCK) {
        let bq = QUERY_BLOCK.min(l - i0);
        for j0 in (0..n).step_by(KEY_BLOCK) {
            let bk = KEY_BLOCK.min(n - j0);
            let kind = rule.block((i0, i0 + bq), (j0, j0 + bk));
            if kind == Block::Hidden {
                continue;
            }
            // p = e^{s − lse}, zero where hidden (or where the query sees nothing at all: its
            // uniform average is the caller's).
            let (scores, p) = (&mut scratch.scores[..bq * bk], &mut scratch.probs[..bq * bk]);
            gemm((bq, bk, d), from_row(x.q, i0), from_row(x.k, j0).t(), 0.0, (scores, bk));
            for r in 0..bq {
                let (m, row) = (up.lse[i0 + r], &mut p[r * bk..(r + 1) * bk]);
                if m == f32::NEG_INFINITY {
                    row.fill(0.0);
                } else {
                    math::sum_exp_shifted(&scores[r * bk..(r + 1) * bk], m, Some(row));
                }
            }
            if kind == Block::Mixed {
                mask_block(rule, (i0, j0), (p, bk), 0.0);
            }
            let p = &scratch.probs[..bq * bk];
            // dv_j += Σ_i p_ij do_i.
            let dv_blk = &mut dv_acc[j0 * dv..(j0 + bk) * dv];
            gemm((bk, dv, bq), Matrix::contiguous(p, bk).t(), from_row(up.d_out, i0), 1.0, (dv_blk, dv));
            // dp = do vᵀ, then ds = p (dp − Δ).
            let ds = &mut scratch.scores[..bq * bk];
            gemm((bq, bk, dv), from_row(up.d_out, i0), from_row(x.v, j0).t(), 0.0, (ds, bk));
            for r in 0..bq {
                let di = up.delta[i0 + r];
                for c in 0..bk {
                    ds[r * bk + c] = p[r * bk + c] * (ds[r * bk + c] - di);
                }
            }
            let ds = &scratch.scores[..bq * bk];
            // dq_i += Σ_j ds_ij k_j; dk_j += Σ_i ds_ij q_i.
            let dq_blk = &mut dq[i0 * d..(i0 + bq) * d];
            gemm((bq, d, bk), Matrix::contiguous(ds, bk), from_row(x.k, j0), 1.0, (dq_blk, d));
            let dk_blk = &mut dk[j0 * d..(j0 + bk) * d];
            gemm((bk, d, bq), Matrix::contiguous(ds, bk).t(), from_row(x.q, i0), 1.0, (dk_blk, d));
        }
    }
}
