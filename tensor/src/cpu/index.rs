//! Indexing kernels: strided copies, index-select and its adjoint index-add (embedding lookup
//! and its scatter-add are the case `axis = 0`), gather / scatter-add, and concatenation.
//!
//! Each is written against two primitives: copy a strided view into a strided destination,
//! and add a strided view into one. Whole rows of contiguous data take a `memcpy` fast path.

use std::ops::Range;

use rayon::prelude::*;

use super::parallel::SendPtr;
use super::walk::Walk;
use crate::layout::Layout;

/// Strided copies and the embedding's adjoint of at least this many elements are split across
/// threads (the lookup splits its rows as every row kernel does): alone on the calling thread,
/// a `step-2k` step's concatenations and embedding lookups left the pool idle for about 1 % of
/// the step.
const PARALLEL_COPY_MIN: usize = 1 << 18;

/// `dst[dl] = src[sl]`, where both layouts have one shape.
pub(crate) fn copy_strided(src: &[f32], sl: &Layout, dst: &mut [f32], dl: &Layout) {
    let numel = sl.numel();
    let threads = rayon::current_num_threads();
    if numel < PARALLEL_COPY_MIN || threads <= 1 || !dl.is_one_to_one() {
        copy_runs(src, sl, (dst.len(), SendPtr(dst.as_mut_ptr())), dl, 0..numel);
        return;
    }
    assert!(dl.checked_extent().is_some_and(|e| e <= dst.len()), "copy_strided: layout outside destination");
    let chunk = numel.div_ceil(threads * 4);
    let dst_ptr = SendPtr(dst.as_mut_ptr());
    (0..numel.div_ceil(chunk)).into_par_iter().for_each(|i| {
        let range = i * chunk..numel.min((i + 1) * chunk);
        copy_runs(src, sl, (dst.len(), dst_ptr), dl, range);
    });
}

/// `dst[dl] = src[sl]` for the elements `range` (in row-major index order) of the common shape.
/// `dst` is `(length, pointer)` of a destination slice that the caller holds mutably; several
/// calls may run at once on disjoint ranges of a one-to-one `dl` (they then write disjoint
/// elements).
fn copy_runs(src: &[f32], sl: &Layout, (dst_len, dst): (usize, SendPtr), dl: &Layout, range: Range<usize>) {
    Walk::new([dl, sl]).runs(range.start, range.end, |run| {
        if run.len == 0 {
            return;
        }
        let ([od, os], [sd, ss]) = (run.offsets, run.strides);
        let last = od + (run.len - 1) * sd;
        assert!(last < dst_len, "copy_strided: destination out of bounds");
        let from = &src[os..os + (run.len - 1) * ss + 1];
        // SAFETY: positions od + t·sd (t < run.len) are at most `last`, inside the destination
        // slice (asserted); the caller holds that slice mutably, and concurrent calls write
        // disjoint elements (distinct indices of a one-to-one layout), so nothing else reads or
        // writes these elements meanwhile.
        unsafe {
            let p = dst.get();
            if sd == 1 && ss == 1 {
                std::ptr::copy_nonoverlapping(from.as_ptr(), p.add(od), run.len);
            } else {
                for t in 0..run.len {
                    *p.add(od + t * sd) = from[t * ss];
                }
            }
        }
    });
}

/// `dst[dl] += src[sl]`, where both layouts have one shape and `dl` has no stride-0 axes.
pub(crate) fn add_strided(src: &[f32], sl: &Layout, dst: &mut [f32], dl: &Layout) {
    Walk::new([dl, sl]).runs(0, sl.numel(), |run| {
        let ([od, os], [sd, ss]) = (run.offsets, run.strides);
        for t in 0..run.len {
            dst[od + t * sd] += src[os + t * ss];
        }
    });
}

/// Layout of a contiguous `shape` narrowed to `[start, start+len)` along `axis`.
fn slot(shape: &[usize], axis: usize, start: usize, len: usize) -> Layout {
    Layout::contiguous(shape).narrow(axis, start, len).expect("slot in bounds")
}

pub(crate) fn index_select(src: &[f32], layout: &Layout, axis: usize, indices: &[usize]) -> Vec<f32> {
    let mut shape = layout.shape().to_vec();
    shape[axis] = indices.len();
    let mut out = super::pool::uninit(shape.iter().product());
    let inner: usize = layout.shape()[axis + 1..].iter().product();
    if axis == 0 && layout.is_contiguous() {
        // Embedding lookup: one contiguous row per index, blocks of rows across threads.
        super::parallel::for_each_rows(&mut out, inner, |first, rows| {
            for (row, &i) in rows.chunks_exact_mut(inner.max(1)).zip(&indices[first..]) {
                let o = layout.offset() + i * inner;
                row.copy_from_slice(&src[o..o + inner]);
            }
        });
        return out;
    }
    for (j, &i) in indices.iter().enumerate() {
        let from = layout.narrow(axis, i, 1).expect("index checked by caller");
        copy_strided(src, &from, &mut out, &slot(&shape, axis, j, 1));
    }
    out
}

/// Rows `ids` of `table` `[vocab, dim]`, row `i` plus row `i % N` of `rows` `[N, dim]`:
/// an embedding lookup and its positions in one pass, blocks of rows across threads.
pub(crate) fn embedding_plus(
    (table, lt): (&[f32], &Layout),
    ids: &[usize],
    (rows, lr): (&[f32], &Layout),
) -> Vec<f32> {
    let (table, rows) = (super::elementwise::contiguous(table, lt), super::elementwise::contiguous(rows, lr));
    let dim = lt.shape()[1];
    let positions = lr.shape()[0];
    let mut out = super::pool::uninit(ids.len() * dim);
    if dim == 0 {
        return out;
    }
    super::parallel::for_each_rows(&mut out, dim, |first, chunk| {
        for (r, (row, &id)) in chunk.chunks_exact_mut(dim).zip(&ids[first..]).enumerate() {
            let (token, position) =
                (&table[id * dim..][..dim], &rows[(first + r) % positions * dim..][..dim]);
            for ((o, &t), &p) in row.iter_mut().zip(token).zip(position) {
                *o = t + p;
            }
        }
    });
    out
}

pub(crate) fn index_add(
    src: &[f32],
    layout: &Layout,
    axis: usize,
    indices: &[usize],
    size: usize,
) -> Vec<f32> {
    let mut shape = layout.shape().to_vec();
    shape[axis] = size;
    let mut out = super::pool::zeroed(shape.iter().product());
    let inner: usize = layout.shape()[axis + 1..].iter().product();
    if axis == 0 && layout.is_contiguous() {
        // Embedding backward: add each gradient row into its token's row. Two rows may share a
        // token, so threads split the columns, each adding every row's part in order.
        let threads = rayon::current_num_threads();
        let columns =
            if src.len() < PARALLEL_COPY_MIN || threads <= 1 { inner } else { inner.div_ceil(threads) };
        let (len, out_ptr) = (out.len(), SendPtr(out.as_mut_ptr()));
        let add_columns = |c0: usize| {
            let width = columns.min(inner - c0);
            for (j, &i) in indices.iter().enumerate() {
                let from = &src[layout.offset() + j * inner + c0..][..width];
                let at = i * inner + c0;
                assert!(at + width <= len, "index_add: index {i} out of range");
                // SAFETY: `at..at + width` lies inside `out` (asserted), which lives and is not
                // otherwise used until the tasks join; each task adds only into its own columns
                // c0..c0 + width of every row, so no other task touches these elements, and this
                // slice is the only reference to them while it lives. (As a slice the loop is
                // vectorised: adds through the raw pointer, which might alias `src`, were not.)
                let to = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(at), width) };
                for (x, &g) in to.iter_mut().zip(from) {
                    *x += g;
                }
            }
        };
        if columns >= inner {
            add_columns(0);
        } else {
            (0..inner.div_ceil(columns)).into_par_iter().for_each(|t| add_columns(t * columns));
        }
        return out;
    }
    for (j, &i) in indices.iter().enumerate() {
        let from = layout.narrow(axis, j, 1).expect("in bounds");
        add_strided(src, &from, &mut out, &slot(&shape, axis, i, 1));
    }
    out
}

/// Splits a row-major flat index of `shape` into (outer, along-axis, inner) coordinates.
fn split(flat: usize, shape: &[usize], axis: usize) -> (usize, usize, usize) {
    let inner: usize = shape[axis + 1..].iter().product();
    let a = shape[axis];
    (flat / (inner * a), (flat / inner) % a, flat % inner)
}

pub(crate) fn gather(
    src: &[f32],
    layout: &Layout,
    axis: usize,
    indices: &[usize],
    out_shape: &[usize],
) -> Vec<f32> {
    // A contiguous copy makes the (outer, axis, inner) arithmetic plain.
    let x = super::elementwise::contiguous(src, layout);
    let shape = layout.shape();
    let inner: usize = shape[axis + 1..].iter().product();
    indices
        .iter()
        .enumerate()
        .map(|(flat, &i)| {
            let (o, _, r) = split(flat, out_shape, axis);
            x[(o * shape[axis] + i) * inner + r]
        })
        .collect()
}

pub(crate) fn scatter_add(
    src: &[f32],
    layout: &Layout,
    axis: usize,
    indices: &[usize],
    size: usize,
) -> Vec<f32> {
    let g = super::elementwise::contiguous(src, layout);
    let shape = layout.shape();
    let inner: usize = shape[axis + 1..].iter().product();
    let outer: usize = shape[..axis].iter().product();
    let mut out = super::pool::zeroed(outer * size * inner);
    for (flat, &i) in indices.iter().enumerate() {
        let (o, _, r) = split(flat, shape, axis);
        out[(o * size + i) * inner + r] += g[flat];
    }
    out
}

/// Concatenates parts along `axis`; all parts agree on every other axis.
pub(crate) fn cat(parts: &[(&[f32], &Layout)], axis: usize) -> Vec<f32> {
    let mut shape = parts[0].1.shape().to_vec();
    shape[axis] = parts.iter().map(|(_, l)| l.shape()[axis]).sum();
    let mut out = super::pool::uninit(shape.iter().product());
    let mut start = 0;
    for (data, l) in parts {
        let len = l.shape()[axis];
        copy_strided(data, l, &mut out, &slot(&shape, axis, start, len));
        start += len;
    }
    out
}
