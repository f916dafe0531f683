//! Indexing kernels: strided copies, index-select and its adjoint index-add (embedding lookup
//! and its scatter-add are the case `axis = 0`), gather / scatter-add, and concatenation.
//!
//! Each is written against two primitives: copy a strided view into a strided destination,
//! and add a strided view into one. Whole rows of contiguous data take a `memcpy` fast path.

use super::walk::Walk;
use crate::layout::Layout;

/// `dst[dl] = src[sl]`, where both layouts have one shape.
pub(crate) fn copy_strided(src: &[f32], sl: &Layout, dst: &mut [f32], dl: &Layout) {
    Walk::new([dl, sl]).runs(0, sl.numel(), |run| {
        let ([od, os], [sd, ss]) = (run.offsets, run.strides);
        if sd == 1 && ss == 1 {
            dst[od..od + run.len].copy_from_slice(&src[os..os + run.len]);
        } else {
            for t in 0..run.len {
                dst[od + t * sd] = src[os + t * ss];
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
        // Embedding lookup: one contiguous row per index.
        for (row, &i) in out.chunks_exact_mut(inner.max(1)).zip(indices) {
            let o = layout.offset() + i * inner;
            row.copy_from_slice(&src[o..o + inner]);
        }
        return out;
    }
    for (j, &i) in indices.iter().enumerate() {
        let from = layout.narrow(axis, i, 1).expect("index checked by caller");
        copy_strided(src, &from, &mut out, &slot(&shape, axis, j, 1));
    }
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
        // Embedding backward: add each gradient row into its token's row.
        for (j, &i) in indices.iter().enumerate() {
            let from = &src[layout.offset() + j * inner..][..inner];
            for (o, &g) in out[i * inner..(i + 1) * inner].iter_mut().zip(from) {
                *o += g;
            }
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
