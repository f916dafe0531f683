//! One sweep of the block kernel: a set of queries streamed over a set of keys, forward
//! (online softmax) or backward (probabilities recomputed from the saved log-sum-exp).
//!
//! A sweep does not know where its rows come from: they are the rows of one (batch, head) of
//! the operands, or rows gathered from them into contiguous buffers (the far keys of a sparse
//! pattern, see [`super::sparse`]). Which pairs it may use is a `Rule`: per block of queries
//! and block of keys, whether no pair, every pair or some pairs are seen, and per pair whether
//! it is. Blocks no pair of which is seen are skipped; only mixed blocks are masked.
//!
//! Within a mixed block, a rule that can say so gives each query its visible keys as one run
//! `a..b` (a causal query sees a prefix of any key block). Then nothing is masked element by
//! element: the softmax runs over `a..b` alone and the rest of the row's weights are zero,
//! and the block's products stop at the last key any of its queries sees, so the causal
//! future of a diagonal block is never computed.

use std::cell::Cell;

use super::super::few_rows::{self, Strided as Matrix, FEW_ROWS};
use super::super::math;
use super::super::tile::{self, Epilogue, Skip};

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
    /// The keys among `j0..j1` that query `i` sees, when they form one run `a..b` (`a == b`:
    /// none); `None` when they do not, or the rule cannot tell cheaply (then [`Rule::sees`]
    /// decides per key). Called only for mixed blocks.
    fn run(&self, _i: usize, _keys: (usize, usize)) -> Option<(usize, usize)> {
        None
    }
}

/// The keys one query row of a block uses, relative to the block's first key: `a..b`, every one
/// of them seen when `exact`, else each still to be checked with [`Rule::sees`].
#[derive(Clone, Copy)]
struct RowRun {
    a: usize,
    b: usize,
    exact: bool,
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

/// Score and probability blocks, the forward's running maximum and sum per query, the
/// current key block's `Kᵀ` and `Vᵀ` as row-major copies for the tile kernel, and contiguous
/// copies of operands whose rows lie apart; reused by every sweep of a head.
#[derive(Default)]
pub(super) struct Scratch {
    scores: Vec<f32>,
    probs: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    runs: Vec<RowRun>,
    stairs: Stairs,
    keys_t: Transposed,
    values_t: Transposed,
    queries: Vec<f32>,
    d_out: Vec<f32>,
    keys: Vec<f32>,
    values: Vec<f32>,
}

thread_local! {
    /// The scratch of the last head this thread computed, kept for its next head.
    static SPARE: Cell<Option<Scratch>> = const { Cell::new(None) };
}

impl Scratch {
    /// This thread's spare scratch (a new one when it has none), with room for the blocks of
    /// any sweep of at most `queries` queries and `keys` keys (a generation step of one query
    /// gets a block of one row); hand it back with [`Scratch::give_back`]. Allocating and
    /// zeroing two fresh score blocks for every head was 8 % of a `step-2k` self-attention's
    /// time (its heads are small); nothing here is read before the sweep writes it.
    pub fn take(queries: usize, keys: usize) -> Self {
        let mut scratch = SPARE.take().unwrap_or_default();
        let rows = QUERY_BLOCK.min(queries).max(1);
        let size = rows * KEY_BLOCK.min(keys).max(1);
        let grow = |v: &mut Vec<f32>, len: usize| {
            if v.len() < len {
                v.resize(len, 0.0);
            }
        };
        grow(&mut scratch.scores, size);
        grow(&mut scratch.probs, size);
        grow(&mut scratch.max, queries.max(1));
        grow(&mut scratch.sum, queries.max(1));
        if scratch.runs.len() < rows {
            scratch.runs.resize(rows, RowRun { a: 0, b: 0, exact: true });
        }
        scratch
    }

    /// Keeps this scratch for the thread's next head.
    pub fn give_back(self) {
        SPARE.set(Some(self));
    }
}

/// A key block's keys (or values) transposed into a row-major `[d, bk]` copy, made when the
/// first query block that sees the key block needs it: the tile kernel's right operand for
/// `S = Q Kᵀ` and `dP = dO Vᵀ`.
#[derive(Default)]
struct Transposed {
    data: Vec<f32>,
    /// The block it holds: first key and width (`None`: none yet).
    block: Option<(usize, usize)>,
}

impl Transposed {
    /// `a · mᵀ` through `epilogue` into `c` (`rows × width`, row stride `width`), for `m` the
    /// `bk` rows of the key block that starts at key `j0`, of which the product uses the first
    /// `width`: through the tile kernel on the transposed block (made on first use), or `sgemm`
    /// on the transposed view and the epilogue after it.
    fn product(
        &mut self,
        (rows, width, d): (usize, usize, usize),
        (a, m): (Matrix, Matrix),
        (j0, bk): (usize, usize),
        (skip, epilogue): (Skip, Epilogue),
        c: &mut [f32],
    ) {
        if !tile::AVAILABLE || rows <= FEW_ROWS {
            gemm((rows, width, d), a, m.t(), (Skip::Nothing, epilogue.beta()), (c, width));
            epilogue.apply((rows, width), (c, width));
            return;
        }
        if self.block != Some((j0, bk)) {
            transpose_into(m, (bk, d), &mut self.data);
            self.block = Some((j0, bk));
        }
        let b = Matrix { data: &self.data, offset: 0, row_stride: bk, col_stride: 1 };
        assert!(tile::product((rows, width, d), a, b, (skip, epilogue), (c, width)), "b has contiguous rows");
    }
}

/// The first `rows` rows of `m` (`cols` columns) as a matrix with contiguous rows: `m` itself
/// when its rows already are, else a copy in `buf`. The products' right operands are read row
/// after row `k` times over; rows a head apart (`[B, T, H·D]` projections viewed as heads) put
/// a block's rows in a few cache sets, which the first-level cache cannot hold, so the tile
/// kernel read them from the second-level one (about a sixth slower forward).
fn contiguous<'a>(m: Matrix<'a>, (rows, cols): (usize, usize), buf: &'a mut Vec<f32>) -> Matrix<'a> {
    if m.col_stride == 1 && (m.row_stride == cols || rows <= 1) {
        return m;
    }
    // Every element is written below: resizing keeps the old values rather than zeroing them.
    buf.resize(rows * cols, 0.0);
    /// Rows of a width known at compile time are copied inline (a `memcpy` call per row of
    /// 128 bytes cost more than the copy).
    fn copy_rows<const W: usize>(m: Matrix, buf: &mut [f32]) {
        for (r, dst) in buf.chunks_exact_mut(W).enumerate() {
            let src: &[f32; W] = m.data[m.offset + r * m.row_stride..][..W].try_into().expect("W floats");
            *<&mut [f32; W]>::try_from(dst).expect("W floats") = *src;
        }
    }
    match (m.col_stride, cols) {
        (1, 32) => copy_rows::<32>(m, buf),
        (1, 64) => copy_rows::<64>(m, buf),
        _ => {
            for (r, dst) in buf.chunks_exact_mut(cols).enumerate() {
                for (c, x) in dst.iter_mut().enumerate() {
                    *x = m.data[m.offset + r * m.row_stride + c * m.col_stride];
                }
            }
        }
    }
    Matrix::contiguous(buf, cols)
}

/// The first `rows` rows of `m` (`cols` columns) transposed into `out`, row-major `[cols, rows]`.
fn transpose_into(m: Matrix, (rows, cols): (usize, usize), out: &mut Vec<f32>) {
    // Every element is written below: resizing keeps the old values rather than zeroing them.
    out.resize(rows * cols, 0.0);
    if rows * cols == 0 {
        return;
    }
    let src = &m.data[m.offset..m.offset + (rows - 1) * m.row_stride + (cols - 1) * m.col_stride + 1];
    // Sixteen source rows at a time: each destination row takes a run of sixteen, and the
    // sixteen source rows (a few cache lines each) stay in cache while every column is read.
    for (j0, chunk) in (0..rows).step_by(16).map(|j0| (j0, 16.min(rows - j0))) {
        if chunk == 16 && m.col_stride == 1 {
            // Each source row as a slice of exactly `cols`: with `t < cols` the reads need no
            // bounds checks, and the sixteen stores of a destination run are one array.
            let from: [&[f32]; 16] = std::array::from_fn(|j| &src[(j0 + j) * m.row_stride..][..cols]);
            // Sixteen columns at a time in registers where the build has AVX-512 (a key
            // block's transpose, element by element, was 6 % of a step-2k cross-attention).
            #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
            let done = {
                for t0 in (0..cols - cols % 16).step_by(16) {
                    // SAFETY: the build enables AVX-512 (the cfg), so the machine has it.
                    unsafe { math::sixteen::transpose_16x16(from, t0, (&mut out[t0 * rows + j0..], rows)) };
                }
                cols - cols % 16
            };
            #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
            let done = 0;
            for t in done..cols {
                let to: &mut [f32; 16] =
                    (&mut out[t * rows + j0..t * rows + j0 + 16]).try_into().expect("16");
                for (x, row) in to.iter_mut().zip(&from) {
                    *x = row[t];
                }
            }
            continue;
        }
        for (t, dst) in out.chunks_exact_mut(rows).enumerate() {
            let dst = &mut dst[j0..j0 + chunk];
            for (j, x) in dst.iter_mut().enumerate() {
                *x = src[(j0 + j) * m.row_stride + t * m.col_stride];
            }
        }
    }
}

/// `c = a·b + beta·c` for `a` `m×k`, `b` `k×n`, `c` `m×n` row-major with row stride `ldc`:
/// few rows without packing, the tile kernel where `b` has contiguous rows (leaving out what
/// `skip` allows), else `sgemm`.
pub(super) fn gemm(
    (m, n, k): (usize, usize, usize),
    a: Matrix,
    b: Matrix,
    (skip, beta): (Skip, f32),
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
    if tile::product((m, n, k), a, b, (skip, Epilogue::Accumulate(beta)), (c, ldc)) {
        return;
    }
    // Bounds of everything sgemm touches, checked here so the call below is sound.
    few_rows::assert_product_in_bounds((m, n, k), &a, &b, (c.len(), ldc));
    // SAFETY: the bounds check above puts every element read from `a` and `b` and every element of
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

/// A causal block's staircase: each query row sees the keys before `ends[r]` (its run starts
/// at the block's first key), and the ends do not decrease, so key `j` is seen by the rows
/// from `starts[j]` on. The block products then leave out what lies above the stairs
/// ([`Skip`]): the diagonal blocks of a causal attention are half empty.
#[derive(Default)]
struct Stairs {
    ends: Vec<usize>,
    starts: Vec<usize>,
}

impl Stairs {
    /// Fills the staircase of a block of `width` keys from its rows' runs; `false` (nothing to
    /// skip) when the block is not one.
    fn fill(&mut self, kind: Block, runs: &[RowRun], width: usize) -> bool {
        if kind != Block::Mixed || !runs.iter().all(|r| r.exact && (r.a == 0 || r.a == r.b)) {
            return false;
        }
        self.ends.clear();
        self.ends.extend(runs.iter().map(|r| if r.a == r.b { 0 } else { r.b }));
        if self.ends.windows(2).any(|e| e[0] > e[1]) {
            return false;
        }
        self.starts.clear();
        let mut row = 0;
        for j in 0..width {
            while row < self.ends.len() && self.ends[row] <= j {
                row += 1;
            }
            self.starts.push(row);
        }
        true
    }

    /// What a product may leave out, given whether the block is a staircase: `columns` for
    /// `S` and `dP` (each query row's columns), `inner_ends` for sums over a query row's keys,
    /// `inner_starts` for sums over a key's queries.
    fn skips(&self, stairs: bool) -> [Skip<'_>; 3] {
        if stairs {
            [Skip::ColumnsFrom(&self.ends), Skip::InnerFrom(&self.ends), Skip::InnerBefore(&self.starts)]
        } else {
            [Skip::Nothing; 3]
        }
    }
}

/// Each row's run of used keys in the block of queries `i0..i0 + runs.len()` against keys
/// `j0..j0 + bk`, and the block's width: the end of the longest run (keys past it are seen by
/// no query of the block, so its products stop there).
fn row_runs(
    rule: &impl Rule,
    kind: Block,
    (i0, j0, bk): (usize, usize, usize),
    runs: &mut [RowRun],
) -> usize {
    if kind == Block::Visible {
        runs.fill(RowRun { a: 0, b: bk, exact: true });
        return bk;
    }
    let mut width = 0;
    for (r, run) in runs.iter_mut().enumerate() {
        *run = match rule.run(i0 + r, (j0, j0 + bk)) {
            Some((a, b)) if a < b => RowRun { a: a - j0, b: b - j0, exact: true },
            Some(_) => RowRun { a: 0, b: 0, exact: true },
            None => RowRun { a: 0, b: bk, exact: false },
        };
        width = width.max(run.b);
    }
    width
}

/// Sets the entries of row `r` of a block (query `i0 + r`, keys from `j0`) that its run does
/// not use, or that the rule refuses, to `value`.
fn mask_row(rule: &impl Rule, (i, j0): (usize, usize), run: RowRun, row: &mut [f32], value: f32) {
    row[..run.a].fill(value);
    row[run.b..].fill(value);
    if !run.exact {
        for (c, x) in row.iter_mut().enumerate().take(run.b).skip(run.a) {
            if !rule.sees(i, j0 + c) {
                *x = value;
            }
        }
    }
}

/// The forward of one sweep: each query's softmax-weighted average of the values it sees,
/// into `out` `[queries, dv]`, and its log-sum-exp into `lse` `[queries]`. A query that sees no
/// key of the sweep gets a zero row and `lse = −∞` (its caller decides what that means).
///
/// Key blocks are the outer loop, so each is transposed once and stays in cache while every
/// query block passes over it; each query keeps its running maximum, sum and output.
pub(super) fn forward(x: Rows, rule: &impl Rule, scratch: &mut Scratch, out: &mut [f32], lse: &mut [f32]) {
    let (l, n, d, dv) = (x.queries, x.keys, x.d, x.dv);
    out.fill(0.0);
    scratch.max[..l].fill(f32::NEG_INFINITY);
    scratch.sum[..l].fill(0.0);
    scratch.keys_t.block = None;
    // Few queries (a generation step) read each key once: a copy would double the traffic.
    let tiles = l > FEW_ROWS;
    let q = if tiles { contiguous(x.q, (l, d), &mut scratch.queries) } else { x.q };
    for j0 in (0..n).step_by(KEY_BLOCK) {
        let bk = KEY_BLOCK.min(n - j0);
        let values = if tiles {
            contiguous(from_row(x.v, j0), (bk, dv), &mut scratch.values)
        } else {
            from_row(x.v, j0)
        };
        for i0 in (0..l).step_by(QUERY_BLOCK) {
            let bq = QUERY_BLOCK.min(l - i0);
            let kind = rule.block((i0, i0 + bq), (j0, j0 + bk));
            if kind == Block::Hidden {
                continue;
            }
            let runs = &mut scratch.runs[..bq];
            let width = row_runs(rule, kind, (i0, j0, bk), runs);
            if width == 0 {
                continue;
            }
            // s = q kᵀ, turned into the block's weights p in place (where they are still in cache).
            let stairs = scratch.stairs.fill(kind, runs, width);
            let [columns, inner_ends, _] = scratch.stairs.skips(stairs);
            let s = &mut scratch.scores[..bq * width];
            let operands = (from_row(q, i0), from_row(x.k, j0));
            scratch.keys_t.product(
                (bq, width, d),
                operands,
                (j0, bk),
                (columns, Epilogue::Accumulate(0.0)),
                s,
            );
            let (max, sum) = (&mut scratch.max[i0..i0 + bq], &mut scratch.sum[i0..i0 + bq]);
            let acc = &mut out[i0 * dv..(i0 + bq) * dv];
            for (r, &run) in runs.iter().enumerate() {
                let row = &mut s[r * width..(r + 1) * width];
                if !run.exact {
                    mask_row(rule, (i0 + r, j0), run, row, MASKED);
                }
                let (a, b) = (run.a, run.b);
                if a < b {
                    let m_new = max[r].max(math::max(&row[a..b]));
                    // The first block: nothing to rescale (and -inf - -inf would be NaN). An
                    // unchanged maximum rescales by e⁰ = 1, without calling `exp` (a call per
                    // row and block was 2 % of a step-2k cross-attention's forward).
                    let correction = match max[r] {
                        f32::NEG_INFINITY => 0.0,
                        m if m == m_new => 1.0,
                        m => (m - m_new).exp(),
                    };
                    sum[r] = sum[r] * correction + math::exp_shifted_in_place(&mut row[a..b], m_new);
                    if correction != 1.0 {
                        acc[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= correction);
                    }
                    max[r] = m_new;
                }
                // Keys outside the run weigh nothing (a == b: this block gives the query nothing).
                row[..a].fill(0.0);
                row[b.max(a)..].fill(0.0);
            }
            gemm((bq, dv, width), Matrix::contiguous(s, width), values, (inner_ends, 1.0), (acc, dv));
        }
    }
    let (max, sum) = (&scratch.max[..l], &scratch.sum[..l]);
    for (r, row) in out.chunks_mut(dv).enumerate() {
        if max[r] == f32::NEG_INFINITY || max[r] == MASKED {
            row.fill(0.0);
            lse[r] = f32::NEG_INFINITY;
        } else {
            let inv = 1.0 / sum[r];
            row.iter_mut().for_each(|x| *x *= inv);
            lse[r] = max[r] + sum[r].ln();
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
    scratch.keys_t.block = None;
    scratch.values_t.block = None;
    let tiles = l > FEW_ROWS;
    let (q, d_out) = match tiles {
        true => {
            (contiguous(x.q, (l, d), &mut scratch.queries), contiguous(up.d_out, (l, dv), &mut scratch.d_out))
        }
        false => (x.q, up.d_out),
    };
    for j0 in (0..n).step_by(KEY_BLOCK) {
        let bk = KEY_BLOCK.min(n - j0);
        let keys =
            if tiles { contiguous(from_row(x.k, j0), (bk, d), &mut scratch.keys) } else { from_row(x.k, j0) };
        for i0 in (0..l).step_by(QUERY_BLOCK) {
            let bq = QUERY_BLOCK.min(l - i0);
            let kind = rule.block((i0, i0 + bq), (j0, j0 + bk));
            if kind == Block::Hidden {
                continue;
            }
            let runs = &mut scratch.runs[..bq];
            let width = row_runs(rule, kind, (i0, j0, bk), runs);
            if width == 0 {
                continue;
            }
            // p = e^{s − lse}, as each tile of s is made; then zero outside each row's run (and
            // where the query sees nothing at all: its uniform average is the caller's).
            let stairs = scratch.stairs.fill(kind, runs, width);
            let [columns, inner_ends, inner_starts] = scratch.stairs.skips(stairs);
            let (lse, p) = (&up.lse[i0..i0 + bq], &mut scratch.probs[..bq * width]);
            let operands = (from_row(q, i0), keys);
            scratch.keys_t.product(
                (bq, width, d),
                operands,
                (j0, bk),
                (columns, Epilogue::ExpShifted(lse)),
                p,
            );
            for (r, run) in runs.iter_mut().enumerate() {
                if lse[r] == f32::NEG_INFINITY {
                    *run = RowRun { a: 0, b: 0, exact: true };
                }
                mask_row(rule, (i0 + r, j0), *run, &mut p[r * width..(r + 1) * width], 0.0);
            }
            let p = &scratch.probs[..bq * width];
            // dv_j += Σ_i p_ij do_i.
            let dv_blk = &mut dv_acc[j0 * dv..(j0 + width) * dv];
            let p_t = Matrix::contiguous(p, width).t();
            gemm((width, dv, bq), p_t, from_row(d_out, i0), (inner_starts, 1.0), (dv_blk, dv));
            // dp = do vᵀ, and ds = p (dp − Δ) as each tile of dp is made (zero where p is, and
            // above the stairs, which the product left as it was).
            let ds = &mut scratch.scores[..bq * width];
            let (operands, delta) = ((from_row(d_out, i0), from_row(x.v, j0)), &up.delta[i0..i0 + bq]);
            let epilogue = Epilogue::ScaledShifted { p, shift: delta };
            scratch.values_t.product((bq, width, dv), operands, (j0, bk), (columns, epilogue), ds);
            if stairs {
                for (row, &end) in ds.chunks_mut(width).zip(&scratch.stairs.ends) {
                    row[end..].fill(0.0);
                }
            }
            let ds = &scratch.scores[..bq * width];
            // dq_i += Σ_j ds_ij k_j; dk_j += Σ_i ds_ij q_i.
            let dq_blk = &mut dq[i0 * d..(i0 + bq) * d];
            gemm((bq, d, width), Matrix::contiguous(ds, width), keys, (inner_ends, 1.0), (dq_blk, d));
            let dk_blk = &mut dk[j0 * d..(j0 + width) * d];
            let ds_t = Matrix::contiguous(ds, width).t();
            gemm((width, d, bq), ds_t, from_row(q, i0), (inner_starts, 1.0), (dk_blk, d));
        }
    }
}
