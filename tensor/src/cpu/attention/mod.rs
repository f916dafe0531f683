//! Fused attention on the CPU: blocks of queries against blocks of keys, with register tiles
//! for the block products ([`super::tile`]; `sgemm` where they do not apply) and the softmax's exp on
//! sixteen lanes (the math is in [`crate::attention`]).
//!
//! Work is split across threads by (batch, head): each task streams its queries over its keys
//! and writes its own rows of the head-major outputs (`[B, H, T, D]`), so no two threads write
//! the same memory. Per task, keys go in blocks of [`KEY_BLOCK`] rows and, for each, queries in
//! blocks of [`QUERY_BLOCK`] ([`sweep`]): the score block `[QUERY_BLOCK, KEY_BLOCK]` stays in
//! cache and the `[L, N]` scores never exist. A key block that no query of the block can see
//! (in the causal future, all hidden, or never reached by a sparse pattern) is skipped; one
//! that every query sees fully needs no masking; on a causal diagonal each query uses the run of
//! keys up to its position and the products stop at the block's last visible key; only blocks a
//! pattern, hidden keys or dropped keys reach in part are masked element by element.
//!
//! A head with a sparse pattern takes more than one sweep ([`sparse`]): one over the keys near
//! the diagonal, and one per group of far keys gathered so that the kernel visits only blocks
//! it mostly uses; their partial softmaxes merge into the one the pattern defines.

pub mod sparse;
pub mod sweep;

use rayon::prelude::*;

use super::few_rows::Strided as Matrix;
use super::parallel::SendPtr;
use super::CpuStorage;
use crate::attention::KeyVisibility;
use crate::backend::HeadOrder;
use crate::layout::Layout;
use crate::sparse_pattern::{Reach, SparsePart};
use sparse::{zeros, Gathered, Split};
use sweep::{Block, Grads, Rows, Rule, Scratch, Upstream};
pub use sweep::{KEY_BLOCK, QUERY_BLOCK};

/// A `[B, H, T, D]` operand: its data and layout.
#[derive(Clone, Copy)]
pub(crate) struct Heads<'a> {
    pub data: &'a [f32],
    pub layout: &'a Layout,
}

impl<'a> Heads<'a> {
    fn dim(&self, axis: usize) -> usize {
        self.layout.shape()[axis]
    }
    /// Storage position of row `t` of head `(b, h)`, and the row and column strides.
    fn matrix(&self, b: usize, h: usize, t: usize) -> Matrix<'a> {
        let s = self.layout.strides();
        Matrix {
            data: self.data,
            offset: self.layout.offset() + b * s[0] + h * s[1] + t * s[2],
            row_stride: s[2],
            col_stride: s[3],
        }
    }
}

/// The rows of head `(b, h)`: every query against every key.
fn head_rows<'a>((q, k, v): (Heads<'a>, Heads<'a>, Heads<'a>), (b, h): (usize, usize)) -> Rows<'a> {
    Rows {
        q: q.matrix(b, h, 0),
        k: k.matrix(b, h, 0),
        v: v.matrix(b, h, 0),
        queries: q.dim(2),
        keys: k.dim(2),
        d: q.dim(3),
        dv: v.dim(3),
    }
}

/// The [`Rule`] of a head's own rows: the key visibility, limited to `p − k < band` when the
/// head's pattern is split (its far pairs are other sweeps').
struct HeadRule<'a> {
    vis: &'a KeyVisibility,
    b: usize,
    h: usize,
    n: usize,
    band: Option<usize>,
}

impl HeadRule<'_> {
    /// The block under the visibility alone.
    fn classify(&self, (i0, i1): (usize, usize), (j0, j1): (usize, usize)) -> Block {
        let (vis, b, n) = (self.vis, self.b, self.n);
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
        match vis.pattern_of(self.h).map(|p| p.reach(queries, keys)) {
            Some(Reach::None) => return Block::Hidden,
            Some(Reach::Some) => return Block::Mixed,
            Some(Reach::All) | None => {}
        }
        match vis.causal {
            Some(offset) if keys.0 > offset + i1 - 1 => Block::Hidden,
            Some(offset) if keys.1 > offset + i0 => Block::Mixed,
            _ if hidden > 0 => Block::Mixed,
            _ => Block::Visible,
        }
    }
}

impl Rule for HeadRule<'_> {
    fn block(&self, queries: (usize, usize), keys: (usize, usize)) -> Block {
        let Some(window) = self.band else { return self.classify(queries, keys) };
        let (vis, b, n) = (self.vis, self.b, self.n);
        let positions = (vis.query_position(queries.0), vis.query_position(queries.1 - 1));
        let key_positions = (vis.key_position(b, keys.0, n), vis.key_position(b, keys.1 - 1, n));
        let band = SparsePart::Local { window };
        match band.reach(positions, key_positions) {
            Reach::None => Block::Hidden,
            Reach::All => self.classify(queries, keys),
            Reach::Some => match self.classify(queries, keys) {
                Block::Hidden => Block::Hidden,
                _ => Block::Mixed,
            },
        }
    }
    fn sees(&self, i: usize, j: usize) -> bool {
        let (vis, b, n) = (self.vis, self.b, self.n);
        vis.sees(b, self.h, i, j, n)
            && self.band.is_none_or(|w| vis.query_position(i) - vis.key_position(b, j, n) < w)
    }
    /// Under the causal rule alone, a query sees the keys at or before its position: a prefix
    /// of any block, as key positions do not decrease.
    fn run(&self, i: usize, (j0, j1): (usize, usize)) -> Option<(usize, usize)> {
        let (vis, b, n) = (self.vis, self.b, self.n);
        if vis.hidden_keys.is_some() || vis.pattern.is_some() || self.band.is_some() {
            return None;
        }
        let p = vis.query_position(i);
        let end = match (vis.causal, &vis.key_positions) {
            (None, _) => j1,
            (Some(_), None) => (p + 1).clamp(j0, j1),
            (Some(_), Some(positions)) => {
                let row = if positions.len() == n { 0 } else { b * n };
                j0 + positions[row + j0..row + j1].partition_point(|&k| k <= p)
            }
        };
        Some((j0, end))
    }
}

/// A rule seen from key `first` on: the sweep's key `j` is the rule's key `first + j` (a sweep
/// over one chunk of a head's keys).
struct FromKey<'a, R: Rule> {
    rule: &'a R,
    first: usize,
}

impl<R: Rule> Rule for FromKey<'_, R> {
    fn block(&self, queries: (usize, usize), (j0, j1): (usize, usize)) -> Block {
        self.rule.block(queries, (j0 + self.first, j1 + self.first))
    }
    fn sees(&self, i: usize, j: usize) -> bool {
        self.rule.sees(i, j + self.first)
    }
    fn run(&self, i: usize, (j0, j1): (usize, usize)) -> Option<(usize, usize)> {
        let f = self.first;
        self.rule.run(i, (j0 + f, j1 + f)).map(|(a, b)| (a - f, b - f))
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
    let rows = head_rows((q, k, v), (b, h));
    let mut scratch = Scratch::take(rows.queries, rows.keys);
    let split = Split::of(vis, h);
    let rule = HeadRule { vis, b, h, n: rows.keys, band: split.as_ref().map(|s| s.band) };
    sweep::forward(rows, &rule, &mut scratch, out, lse);
    if let Some(split) = &split {
        // Buffers refilled for each group: a head of ℓ column groups allocates them once.
        let (mut gathered, mut out_buf, mut lse_buf) = (Gathered::default(), Vec::new(), Vec::new());
        for group in split.groups(vis, b, rows.queries, rows.keys) {
            let gq = group.queries.len();
            let (part_out, part_lse) = (zeros(&mut out_buf, gq * rows.dv), zeros(&mut lse_buf, gq));
            let group_rows = gathered.refill(&group, rows);
            sweep::forward(group_rows, &group.rule(split), &mut scratch, part_out, part_lse);
            sparse::merge((out, lse), &group.queries, (part_out, part_lse), rows.dv);
        }
    }
    scratch.give_back();
    // A query that sees no key: the composition's softmax over all-equal scores averages every
    // value.
    for (row, _) in out.chunks_mut(rows.dv).zip(lse.iter()).filter(|(_, &m)| m == f32::NEG_INFINITY) {
        uniform_average(v, b, h, row);
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

/// The forward: `out` stored `[B, L, H, Dv]` (token-major: the heads merged as the output
/// projection reads them) and `lse` `[B, H, L]`. Each (batch, head) is computed by one task
/// into rows of its own, then copied to its places in `out` while still in cache: merging
/// the heads afterwards, a pass over the whole output, was 0.5 % of a `step-2k` step.
pub(crate) fn forward(q: Heads, k: Heads, v: Heads, vis: &KeyVisibility) -> (Vec<f32>, Vec<f32>) {
    let (batch, heads, l, dv) = (q.dim(0), q.dim(1), q.dim(2), v.dim(3));
    let mut out = super::pool::uninit(batch * heads * l * dv);
    let mut lse = super::pool::uninit(batch * heads * l);
    if l > 0 {
        let merged = TokenMajor::over(&mut out, (heads, l, dv));
        lse.par_chunks_mut(l).enumerate().for_each(|(bh, s)| {
            let (b, h) = (bh / heads, bh % heads);
            with_head_rows(l * dv, |o| {
                forward_head((q, k, v), vis, (b, h), o, s);
                // SAFETY: `merged` covers `out`, which outlives this parallel section and is
                // not used elsewhere during it; head (b, h)'s rows are this task's alone.
                unsafe { merged.write_head((b, h), o) };
            });
        });
    }
    (out, lse)
}

/// A `[B, T, H, W]` storage (`B·T·H·W` floats) that each (batch, head) task writes its
/// `[T, W]` rows into.
#[derive(Clone, Copy)]
struct TokenMajor {
    data: SendPtr,
    heads: usize,
    rows: usize,
    width: usize,
}

impl TokenMajor {
    /// `data` seen as `[B, T, H, W]` for `(heads, rows, width) = (H, T, W)`.
    fn over(data: &mut [f32], (heads, rows, width): (usize, usize, usize)) -> Self {
        assert!(data.len().is_multiple_of(heads * rows * width), "whole batches");
        TokenMajor { data: SendPtr(data.as_mut_ptr()), heads, rows, width }
    }

    /// Copies head `(b, h)`'s rows (`[T, W]`, row-major) to their places.
    ///
    /// # Safety
    /// The storage `self` was made over lives and holds batch `b`; no other task accesses head
    /// `(b, h)`'s rows meanwhile.
    unsafe fn write_head(&self, (b, h): (usize, usize), head_rows: &[f32]) {
        for (t, row) in head_rows.chunks_exact(self.width).enumerate().take(self.rows) {
            let at = ((b * self.rows + t) * self.heads + h) * self.width;
            // SAFETY: position `at..at + W` is row t of head (b, h), inside the storage (the
            // caller's contract) and this task's alone; `row` is a slice of its own.
            unsafe { copy_row(self.width, (row.as_ptr(), 1), (self.data.get().add(at), 1)) };
        }
    }
}

thread_local! {
    /// One head's rows of a result, kept by each thread for its next head.
    static HEAD_ROWS: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on this thread's buffer of `len` floats (old values: `f` writes before reading).
fn with_head_rows<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buffer = HEAD_ROWS.take();
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    let result = f(&mut buffer[..len]);
    HEAD_ROWS.set(buffer);
    result
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

/// One (batch, head) of the backward, into its rows of `dq` `[L, D]`, `dk` `[N, D]` and
/// `dv` `[N, Dv]` (which arrive zeroed).
fn backward_head(s: Saved, d_out: Heads, vis: &KeyVisibility, (b, h): (usize, usize), grads: Grads) {
    let rows = head_rows((s.q, s.k, s.v), (b, h));
    let (l, dv) = (rows.queries, rows.dv);
    let (lse, delta) = per_query((s.out, s.lse), d_out, (b, h));
    let d_out_rows = d_out.matrix(b, h, 0);
    let mut scratch = Scratch::take(l, rows.keys);
    let split = Split::of(vis, h);
    let rule = HeadRule { vis, b, h, n: rows.keys, band: split.as_ref().map(|s| s.band) };
    let up = Upstream { d_out: d_out_rows, lse: &lse, delta: &delta };
    let Grads { dq, dk, dv: dv_acc } = grads;
    sweep::backward(rows, up, &rule, &mut scratch, Grads { dq: &mut *dq, dk: &mut *dk, dv: &mut *dv_acc });
    if let Some(split) = &split {
        // Buffers refilled for each group: a head of ℓ column groups allocates them once.
        let mut gathered = Gathered::default();
        let (mut g_out, mut g_lse, mut g_delta) = (Vec::new(), Vec::new(), Vec::new());
        let (mut g_dq, mut g_dk, mut g_dv) = (Vec::new(), Vec::new(), Vec::new());
        for group in split.groups(vis, b, l, rows.keys) {
            let group_rows = gathered.refill(&group, rows);
            sparse::gather_into(d_out_rows, &group.queries, dv, &mut g_out);
            g_lse.clear();
            g_lse.extend(group.queries.iter().map(|&i| lse[i]));
            g_delta.clear();
            g_delta.extend(group.queries.iter().map(|&i| delta[i]));
            let up = Upstream { d_out: Matrix::contiguous(&g_out, dv), lse: &g_lse, delta: &g_delta };
            let (gq, gk) = (group.queries.len(), group.keys.len());
            let g_grads = Grads {
                dq: zeros(&mut g_dq, gq * rows.d),
                dk: zeros(&mut g_dk, gk * rows.d),
                dv: zeros(&mut g_dv, gk * dv),
            };
            sweep::backward(group_rows, up, &group.rule(split), &mut scratch, g_grads);
            sparse::scatter_add(&g_dq, &group.queries, rows.d, dq);
            sparse::scatter_add(&g_dk, &group.keys, rows.d, dk);
            sparse::scatter_add(&g_dv, &group.keys, dv, dv_acc);
        }
    }
    scratch.give_back();
    seen_nothing(d_out, (b, h), &lse, rows.keys, dv_acc);
}

/// Head `(b, h)`'s per-query inputs of the backward: the saved log-sum-exp, and
/// `Δ_i = do_i · o_i`.
fn per_query<'a>(
    (out, (lse_data, lse_layout)): (Heads<'a>, (&[f32], &Layout)),
    d_out: Heads<'a>,
    (b, h): (usize, usize),
) -> (Vec<f32>, Vec<f32>) {
    let (l, dv) = (out.dim(2), out.dim(3));
    let ls = lse_layout.strides();
    let lse = (0..l).map(|i| lse_data[lse_layout.offset() + b * ls[0] + h * ls[1] + i * ls[2]]).collect();
    // Each Δ_i is summed in order over its columns, a chain of dependent adds: eight rows side
    // by side keep the adder busy where one row at a time waited on every add (the
    // backward's per-query pass was 6 % of a step-2k self-attention's backward).
    const SIDE_BY_SIDE: usize = 8;
    let mut delta = vec![0.0; l];
    let row = |m: Matrix<'a>| &m.data[m.offset..][..dv];
    let unit_columns = out.layout.strides()[3] == 1 && d_out.layout.strides()[3] == 1;
    for (block, d) in delta.chunks_mut(SIDE_BY_SIDE).enumerate() {
        let i0 = block * SIDE_BY_SIDE;
        if !unit_columns || d.len() < SIDE_BY_SIDE {
            for (r, x) in d.iter_mut().enumerate() {
                let (o, g) = (out.matrix(b, h, i0 + r), d_out.matrix(b, h, i0 + r));
                *x = (0..dv)
                    .map(|c| o.data[o.offset + c * o.col_stride] * g.data[g.offset + c * g.col_stride])
                    .sum();
            }
            continue;
        }
        let o: [&[f32]; SIDE_BY_SIDE] = std::array::from_fn(|r| row(out.matrix(b, h, i0 + r)));
        let g: [&[f32]; SIDE_BY_SIDE] = std::array::from_fn(|r| row(d_out.matrix(b, h, i0 + r)));
        // `-0.0`, as `Iterator::sum` starts from: the same bits as summing each row alone.
        let mut sums = [-0.0f32; SIDE_BY_SIDE];
        for c in 0..dv {
            for r in 0..SIDE_BY_SIDE {
                sums[r] += o[r][c] * g[r][c];
            }
        }
        d.copy_from_slice(&sums);
    }
    (lse, delta)
}

/// A query that sees no key averaged all `n` values: `dv_j += do_i / n` for each key whose
/// gradient `dv` (rows of `Dv`) holds.
fn seen_nothing(d_out: Heads, (b, h): (usize, usize), lse: &[f32], n: usize, dv: &mut [f32]) {
    let width = d_out.dim(3);
    for i in (0..lse.len()).filter(|&i| lse[i] == f32::NEG_INFINITY) {
        let g = d_out.matrix(b, h, i);
        for row in dv.chunks_exact_mut(width) {
            for (c, x) in row.iter_mut().enumerate() {
                *x += g.data[g.offset + c * g.col_stride] / n as f32;
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
                backward_head(s, d_out, vis, (bh / heads, bh % heads), Grads { dq, dk, dv })
            });
    }
    [dq, dk, dvs]
}

/// Key and value gradients of at least this many f32 (128 MiB) are computed in waves.
const WAVES_MIN: usize = 1 << 25;

/// Keys per chunk of [`over_keys_in_chunks`]: 8192 keys, a mebibyte per operand at `D = 32`.
const CHUNK_KEYS: usize = 32 * KEY_BLOCK;

/// The backward with `dk` and `dv` written over the saved `k` and `v` (each in its own
/// layout, which reaches no position twice); returns `dq` `[B, H, L, D]`, stored in the order
/// it gives.
///
/// Heads without a sparse split go a chunk of keys at a time ([`over_keys_in_chunks`]): the
/// backward reads a key and value row only while it computes their gradients, so once a chunk
/// is done its gradients can take its place. A split head's far sweeps reach keys anywhere,
/// so heads with a sparse pattern first compute whole gradients, then copy them over
/// ([`over_keys`]).
pub(crate) fn backward_over_keys(
    (q, out, lse): (Heads, Heads, (&[f32], &Layout)),
    (k, k_layout): (&mut [f32], &Layout),
    (v, v_layout): (&mut [f32], &Layout),
    d_out: Heads,
    vis: &KeyVisibility,
) -> (Vec<f32>, HeadOrder) {
    if (0..q.dim(1)).all(|h| Split::of(vis, h).is_none()) {
        let dq = over_keys_in_chunks((q, out, lse), (k, k_layout), (v, v_layout), d_out, vis, CHUNK_KEYS);
        return (dq, HeadOrder::TokenMajor);
    }
    let keys = k_layout.shape()[0] * k_layout.shape()[1] * k_layout.shape()[2];
    let waves = keys * (k_layout.shape()[3] + v_layout.shape()[3]) >= WAVES_MIN;
    (over_keys((q, out, lse), (k, k_layout), (v, v_layout), d_out, vis, waves), HeadOrder::HeadMajor)
}

/// The rows of one head in a storage that other tasks read and write elsewhere at the same
/// time, so reached through a raw pointer only, never a slice of the whole.
#[derive(Clone, Copy)]
struct HeadInPlace {
    data: SendPtr,
    /// Position of row 0, and the row and column strides.
    offset: usize,
    row_stride: usize,
    col_stride: usize,
    width: usize,
}

impl HeadInPlace {
    /// Head `(b, h)` of `layout` (`[B, H, N, D]`) in the storage at `data`.
    fn new(data: SendPtr, layout: &Layout, (b, h): (usize, usize)) -> Self {
        let s = layout.strides();
        let offset = layout.offset() + b * s[0] + h * s[1];
        HeadInPlace { data, offset, row_stride: s[2], col_stride: s[3], width: layout.shape()[3] }
    }

    /// Copies rows `j0..` into `rows` (row-major, as many rows as it holds).
    ///
    /// # Safety
    /// The rows lie inside the storage, which lives, and no other task accesses them meanwhile.
    unsafe fn read(&self, j0: usize, rows: &mut [f32]) {
        for (t, row) in rows.chunks_exact_mut(self.width).enumerate() {
            let start = self.data.get().wrapping_add(self.offset + (j0 + t) * self.row_stride);
            // SAFETY: the caller's contract: row `j0 + t`'s positions are inside the storage
            // and not accessed by anyone else; `row` is a slice of its own.
            unsafe { copy_row(self.width, (start, self.col_stride), (row.as_mut_ptr(), 1)) };
        }
    }

    /// Writes `rows` (row-major) over rows `j0..`.
    ///
    /// # Safety
    /// As [`HeadInPlace::read`].
    unsafe fn write(&self, j0: usize, rows: &[f32]) {
        for (t, row) in rows.chunks_exact(self.width).enumerate() {
            let start = self.data.get().wrapping_add(self.offset + (j0 + t) * self.row_stride);
            // SAFETY: as in `read`.
            unsafe { copy_row(self.width, (row.as_ptr(), 1), (start, self.col_stride)) };
        }
    }
}

/// Copies `width` floats from `src` to `dst`, each stepping by its stride. Rows 32 or 64 wide
/// with unit strides are one move the compiler inlines: a `memcpy` call for each 128-byte row
/// of a head was 5 % of a `long-131k` step.
///
/// # Safety
/// `src + c·src_step` is readable and `dst + c·dst_step` writable for `c < width`, and the two
/// do not overlap.
#[inline(always)]
unsafe fn copy_row(width: usize, (src, src_step): (*const f32, usize), (dst, dst_step): (*mut f32, usize)) {
    /// # Safety
    /// `W` floats are readable at `src` and writable at `dst`, and the two do not overlap.
    #[inline(always)]
    unsafe fn fixed<const W: usize>(src: *const f32, dst: *mut f32) {
        // SAFETY: the contract above; unaligned reads and writes need no alignment beyond f32's.
        unsafe { (dst as *mut [f32; W]).write_unaligned((src as *const [f32; W]).read_unaligned()) }
    }
    // SAFETY: the caller's contract, for every position reached (with unit strides, the `W`
    // floats `fixed` moves are exactly the `width` the contract covers).
    unsafe {
        match (src_step, dst_step, width) {
            (1, 1, 32) => fixed::<32>(src, dst),
            (1, 1, 64) => fixed::<64>(src, dst),
            (1, 1, _) => std::ptr::copy_nonoverlapping(src, dst, width),
            _ => {
                for c in 0..width {
                    *dst.add(c * dst_step) = *src.add(c * src_step);
                }
            }
        }
    }
}

/// [`backward_over_keys`] for heads without a sparse split: each (batch, head) task copies a
/// chunk of `chunk` keys and values (a multiple of [`KEY_BLOCK`]) of its head into buffers of
/// its own, runs the sweep over them into chunk-sized gradients, and writes those over the
/// chunk. The sweep's key blocks, and so its sums, are those of the whole head's sweep: the
/// results are the same bits as [`backward`]'s.
///
/// Before, heads went in waves of one per thread, each into whole-head gradient buffers
/// (zero-filled, then copied over the keys after the wave): at 131k keys those copies were a
/// tenth of the attention backward, and the buffers 64 MiB at the step's peak.
fn over_keys_in_chunks(
    (q, out, lse): (Heads, Heads, (&[f32], &Layout)),
    (k, k_layout): (&mut [f32], &Layout),
    (v, v_layout): (&mut [f32], &Layout),
    d_out: Heads,
    vis: &KeyVisibility,
    chunk: usize,
) -> Vec<f32> {
    assert!(chunk > 0 && chunk.is_multiple_of(KEY_BLOCK), "chunks of whole key blocks");
    let (heads, l, d) = (q.dim(1), q.dim(2), q.dim(3));
    let (n, dv) = (k_layout.shape()[2], v_layout.shape()[3]);
    if l * d == 0 || n * d == 0 || n * dv == 0 {
        return super::pool::zeroed(q.dim(0) * heads * l * d);
    }
    // Token-major, as the query projection's gradient reads it: each task adds into a head's
    // rows of its own (zeroed just before), then copies them to their places.
    let mut dq = super::pool::uninit(q.dim(0) * heads * l * d);
    let merged = TokenMajor::over(&mut dq, (heads, l, d));
    assert!(k_layout.checked_extent().is_some_and(|e| e <= k.len()), "attention backward: k outside storage");
    assert!(v_layout.checked_extent().is_some_and(|e| e <= v.len()), "attention backward: v outside storage");
    let (k_data, v_data) = (SendPtr(k.as_mut_ptr()), SendPtr(v.as_mut_ptr()));
    (0..q.dim(0) * heads).into_par_iter().for_each(|bh| {
        with_head_rows(l * d, |dq| {
            dq.fill(0.0);
            let (b, h) = (bh / heads, bh % heads);
            let (keys, values) =
                (HeadInPlace::new(k_data, k_layout, (b, h)), HeadInPlace::new(v_data, v_layout, (b, h)));
            let (lse, delta) = per_query((out, lse), d_out, (b, h));
            let up = Upstream { d_out: d_out.matrix(b, h, 0), lse: &lse, delta: &delta };
            let rule = HeadRule { vis, b, h, n, band: None };
            let chunk_rows = chunk.min(n);
            let mut scratch = Scratch::take(l, chunk_rows);
            let mut buffers = ChunkBuffers::take((chunk_rows * d, chunk_rows * dv));
            let ChunkBuffers { keys: k_rows, values: v_rows, d_keys: dk, d_values: dvs } = &mut buffers;
            for j0 in (0..n).step_by(chunk) {
                let len = chunk.min(n - j0);
                let (k_rows, v_rows) = (&mut k_rows[..len * d], &mut v_rows[..len * dv]);
                let (dk, dvs) = (&mut dk[..len * d], &mut dvs[..len * dv]);
                // SAFETY: the rows of head (b, h) lie inside `k` and `v` (asserted above, the
                // layouts checked against their storage), whose borrows outlive this parallel
                // section and are not used during it; each layout reaches a position once, so
                // head (b, h)'s positions are this task's alone.
                unsafe {
                    keys.read(j0, k_rows);
                    values.read(j0, v_rows);
                }
                dk.fill(0.0);
                dvs.fill(0.0);
                let rows = Rows {
                    q: q.matrix(b, h, 0),
                    k: Matrix::contiguous(k_rows, d),
                    v: Matrix::contiguous(v_rows, dv),
                    queries: l,
                    keys: len,
                    d,
                    dv,
                };
                let grads = Grads { dq: &mut *dq, dk: &mut *dk, dv: &mut *dvs };
                sweep::backward(rows, up, &FromKey { rule: &rule, first: j0 }, &mut scratch, grads);
                seen_nothing(d_out, (b, h), &lse, n, dvs);
                // SAFETY: as above; the sweep has read these rows for the last time.
                unsafe {
                    keys.write(j0, dk);
                    values.write(j0, dvs);
                }
            }
            scratch.give_back();
            buffers.give_back();
            // SAFETY: `merged` covers `dq`, which outlives this parallel section and is not used
            // elsewhere during it; head (b, h)'s rows are this task's alone.
            unsafe { merged.write_head((b, h), dq) };
        })
    });
    dq
}

/// One chunk of a head's keys and values, and their gradients, row-major: the buffers of
/// [`over_keys_in_chunks`], kept by each thread for its next head.
#[derive(Default)]
struct ChunkBuffers {
    keys: Vec<f32>,
    values: Vec<f32>,
    d_keys: Vec<f32>,
    d_values: Vec<f32>,
}

thread_local! {
    static SPARE_CHUNKS: std::cell::Cell<Option<ChunkBuffers>> = const { std::cell::Cell::new(None) };
}

impl ChunkBuffers {
    /// This thread's spare buffers, with room for `keys` floats of keys (and their gradients)
    /// and `values` of values. Every element a chunk uses is written before it is read.
    fn take((keys, values): (usize, usize)) -> Self {
        let mut buffers = SPARE_CHUNKS.take().unwrap_or_default();
        // This runs at the peak of a long-context step: where the buffers grow, the cache
        // first gives back what it holds beyond the peak. (Trimming it at every call, for
        // buffers already held, freed a 128 MiB buffer that the step then faulted in afresh.)
        let held = buffers.keys.len() + buffers.values.len();
        if keys + values > held {
            super::pool::make_room(2 * (keys + values - held) * std::mem::size_of::<f32>());
        }
        for (buffer, len) in [
            (&mut buffers.keys, keys),
            (&mut buffers.values, values),
            (&mut buffers.d_keys, keys),
            (&mut buffers.d_values, values),
        ] {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        }
        buffers
    }

    /// Keeps the buffers for the thread's next head.
    fn give_back(self) {
        SPARE_CHUNKS.set(Some(self));
    }
}

/// [`backward_over_keys`] for heads with a sparse split, whose far sweeps reach keys anywhere:
/// whole-head gradients, copied over `k` and `v` once complete. In waves of one head per thread,
/// each into buffers of its own, copied over the wave's heads once it has joined (in
/// `[B, N, H, D]` storage the heads' rows interleave), so the peak holds one head's gradients
/// per thread; or (smaller keys, where waves would cost a join per wave to save little) every
/// head at once into fresh buffers.
fn over_keys(
    (q, out, lse): (Heads, Heads, (&[f32], &Layout)),
    (k, k_layout): (&mut [f32], &Layout),
    (v, v_layout): (&mut [f32], &Layout),
    d_out: Heads,
    vis: &KeyVisibility,
    waves: bool,
) -> Vec<f32> {
    let (batch, heads, l, d) = (q.dim(0), q.dim(1), q.dim(2), q.dim(3));
    let (n, dv) = (k_layout.shape()[2], v_layout.shape()[3]);
    if l * d == 0 || n * d == 0 || n * dv == 0 {
        return super::pool::zeroed(batch * heads * l * d);
    }
    if !waves {
        let saved = Saved {
            q,
            k: Heads { data: k, layout: k_layout },
            v: Heads { data: v, layout: v_layout },
            out,
            lse,
        };
        let [dq, dk, dvs] = backward(saved, d_out, vis);
        fn of(grads: &[f32], rows: usize, heads: usize) -> Vec<((usize, usize), &[f32])> {
            grads.chunks_exact(rows).enumerate().map(|(bh, g)| ((bh / heads, bh % heads), g)).collect()
        }
        write_heads((k, k_layout), &of(&dk, n * d, heads), d);
        write_heads((v, v_layout), &of(&dvs, n * dv, heads), dv);
        super::pool::recycle(dk);
        super::pool::recycle(dvs);
        return dq;
    }
    let mut dq = super::pool::zeroed(batch * heads * l * d);
    let threads = rayon::current_num_threads().max(1);
    // This runs at the peak of a long-context step: the cache gives back what it holds beyond
    // it. The buffers are held as storage, so the pool counts them as live memory.
    super::pool::make_room(threads.min(batch * heads) * n * (d + dv) * 4);
    let scratch = |len| CpuStorage::new(super::pool::uninit(len));
    let mut buffers: Vec<(CpuStorage, CpuStorage)> = Vec::new();
    for (wave, dq_wave) in dq.chunks_mut(threads * l * d).enumerate() {
        let first = wave * threads;
        let count = dq_wave.len() / (l * d);
        buffers.resize_with(count.max(buffers.len()), || (scratch(n * d), scratch(n * dv)));
        let saved = Saved {
            q,
            k: Heads { data: k, layout: k_layout },
            v: Heads { data: v, layout: v_layout },
            out,
            lse,
        };
        dq_wave.par_chunks_mut(l * d).zip(buffers[..count].par_iter_mut()).enumerate().for_each(
            |(i, (dq, (dk, dv)))| {
                let (dk, dv) = (dk.as_mut_slice(), dv.as_mut_slice());
                dk.fill(0.0);
                dv.fill(0.0);
                let bh = first + i;
                backward_head(saved, d_out, vis, (bh / heads, bh % heads), Grads { dq, dk, dv });
            },
        );
        let head = |i: usize| ((first + i) / heads, (first + i) % heads);
        let dks: Vec<_> =
            buffers[..count].iter().enumerate().map(|(i, (g, _))| (head(i), g.as_slice())).collect();
        let dvs: Vec<_> =
            buffers[..count].iter().enumerate().map(|(i, (_, g))| (head(i), g.as_slice())).collect();
        write_heads((k, k_layout), &dks, d);
        write_heads((v, v_layout), &dvs, dv);
    }
    dq
}

/// Copies each listed head's rows `[N, width]` (contiguous) to their places in `data`, whose
/// layout lies inside it and reaches no position twice, in parallel over blocks of rows.
fn write_heads((data, layout): (&mut [f32], &Layout), heads: &[((usize, usize), &[f32])], width: usize) {
    const ROWS_PER_TASK: usize = 512;
    assert!(layout.checked_extent().is_some_and(|e| e <= data.len()), "write_heads: layout outside storage");
    let s = layout.strides();
    let base = SendPtr(data.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = heads
        .iter()
        .enumerate()
        .flat_map(|(i, (_, rows))| (0..rows.len() / width).step_by(ROWS_PER_TASK).map(move |t| (i, t)))
        .collect();
    tasks.into_par_iter().for_each(|(i, first)| {
        let ((b, h), rows) = heads[i];
        let head = layout.offset() + b * s[0] + h * s[1];
        let p = base.get();
        for (t, row) in rows.chunks_exact(width).enumerate().skip(first).take(ROWS_PER_TASK) {
            let start = head + t * s[2];
            // SAFETY: position `start + c·s[3]` is the layout's position of index (b, h, t, c),
            // which is inside `data` (asserted above); `data` is borrowed mutably for the whole
            // call. The layout reaches each position once (the `Owned` contract of the
            // storage), and each (b, h, t) row belongs to one task, so no two tasks write the
            // same element and nothing reads `data` meanwhile.
            unsafe {
                if s[3] == 1 {
                    std::ptr::copy_nonoverlapping(row.as_ptr(), p.add(start), width);
                } else {
                    for (c, &x) in row.iter().enumerate() {
                        *p.add(start + c * s[3]) = x;
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    /// Head-major `[B, H, T, D]` read from `[B, T, H, D]` storage, as a model's projections are.
    fn split_heads(b: usize, h: usize, t: usize, d: usize) -> Layout {
        Layout::contiguous(&[b, t, h, d]).permute(&[0, 2, 1, 3]).unwrap()
    }

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// Writing dk and dv over k and v, in waves, all at once or a chunk of keys at a time,
    /// gives exactly the gradients of the plain backward, in k's and v's own layouts: with few
    /// queries and with query blocks, over keys of one chunk or several (the last one short),
    /// causal or not, with hidden keys (some queries see none). The forward's output and the
    /// chunks' `dq` are token-major (read here through that layout).
    #[test]
    fn gradients_over_the_keys_equal_the_plain_backward() {
        for (b, h, l, n, d) in [(2, 3, 5, 37, 4), (1, 2, 40, 3 * KEY_BLOCK + 20, 32)] {
            let causal = KeyVisibility::causal(n - l);
            let hidden: Vec<bool> = (0..b * n).map(|j| j % n < n / 2 || j % 7 == 3).collect();
            let hiding = KeyVisibility { hidden_keys: Some(hidden.into()), ..KeyVisibility::causal(n - l) };
            for vis in [KeyVisibility::default(), causal, hiding] {
                let (lq, lk, lo) = (
                    Layout::contiguous(&[b, h, l, d]),
                    split_heads(b, h, n, d),
                    Layout::contiguous(&[b, h, l, d]),
                );
                // Token-major [B, L, H, D] seen as [B, H, L, D].
                let lt = split_heads(b, h, l, d);
                let (q, k, v, g) = (
                    values(b * h * l * d, 1),
                    values(b * h * n * d, 2),
                    values(b * h * n * d, 3),
                    values(b * h * l * d, 4),
                );
                let heads = |data, layout| Heads { data, layout };
                let (out, lse) = forward(heads(&q, &lq), heads(&k, &lk), heads(&v, &lk), &vis);
                let ll = Layout::contiguous(&[b, h, l]);
                let saved = Saved {
                    q: heads(&q, &lq),
                    k: heads(&k, &lk),
                    v: heads(&v, &lk),
                    out: heads(&out, &lt),
                    lse: (&lse, &ll),
                };
                let [dq, dk, dv] = backward(saved, heads(&g, &lo), &vis);
                for way in ["all at once", "in waves", "in chunks of one block", "in chunks"] {
                    let (mut k2, mut v2) = (k.clone(), v.clone());
                    let inputs = (heads(&q, &lq), heads(&out, &lt), (&lse[..], &ll));
                    let (ko, vo, g) = ((&mut k2[..], &lk), (&mut v2[..], &lk), heads(&g, &lo));
                    let (dq2, order) = match way {
                        "all at once" => (over_keys(inputs, ko, vo, g, &vis, false), &lo),
                        "in waves" => (over_keys(inputs, ko, vo, g, &vis, true), &lo),
                        "in chunks of one block" => {
                            (over_keys_in_chunks(inputs, ko, vo, g, &vis, KEY_BLOCK), &lt)
                        }
                        _ => (over_keys_in_chunks(inputs, ko, vo, g, &vis, CHUNK_KEYS), &lt),
                    };
                    let dq2: Vec<f32> = (0..dq2.len())
                        .map(|i| dq2[order.position(&[i / (h * l * d), i / (l * d) % h, i / d % l, i % d])])
                        .collect();
                    let same =
                        |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(dq2.len() == dq.len() && same(&dq2, &dq), "dq {way}, n={n}");
                    // dk is contiguous [B, H, N, D]; k2 holds it through k's layout.
                    let at = |data: &[f32], i: usize| {
                        let (bb, hh, t, c) = (i / (h * n * d), i / (n * d) % h, i / d % n, i % d);
                        data[lk.position(&[bb, hh, t, c])]
                    };
                    assert!(
                        (0..dk.len()).all(|i| at(&k2, i).to_bits() == dk[i].to_bits()),
                        "dk {way}, n={n}"
                    );
                    assert!(
                        (0..dv.len()).all(|i| at(&v2, i).to_bits() == dv[i].to_bits()),
                        "dv {way}, n={n}"
                    );
                }
            }
        }
    }
}
