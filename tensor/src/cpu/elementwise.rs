//! Elementwise kernels: one input (`unary`), two (`binary`), three (`where_cond`).
//!
//! The output is contiguous in row-major order of the (already broadcast) shape. Inputs are
//! read through `Walk` runs: a run of stride 1 is mapped straight from the slice; any other
//! run (a transposed or broadcast view) is first gathered into a small buffer, so the math is
//! the same vectorised code whatever the layout, and so are the results, bit for bit.

use super::parallel::for_each_chunk;
use super::walk::Walk;
use crate::backend::{BinaryOp, UnaryOp};
use crate::layout::Layout;
use crate::op_table::{binary_slice, unary_slice};

const BLOCK: usize = 256;

/// Copies `len` elements starting at `offset` with `stride` into `buf`.
#[inline]
fn gather(src: &[f32], offset: usize, stride: usize, buf: &mut [f32]) {
    if stride == 0 {
        buf.fill(src[offset]);
    } else {
        for (t, b) in buf.iter_mut().enumerate() {
            *b = src[offset + t * stride];
        }
    }
}

/// `len = buf.len()` elements from `offset` with `stride`: read where they lie when they are
/// contiguous (a row against a broadcast column), else gathered into `buf`.
#[inline]
fn run_of<'a>(src: &'a [f32], offset: usize, stride: usize, buf: &'a mut [f32]) -> &'a [f32] {
    if stride == 1 {
        &src[offset..offset + buf.len()]
    } else {
        gather(src, offset, stride, buf);
        buf
    }
}

/// The input's elements in row-major order: borrowed if already contiguous, else copied into
/// a buffer that goes back to the [`super::pool`] when dropped (a plain `Vec` would go back to
/// the system, and the next copy of its size be faulted in afresh).
pub(crate) fn contiguous<'a>(src: &'a [f32], layout: &Layout) -> Contiguous<'a> {
    if layout.is_contiguous() {
        Contiguous::Borrowed(&src[super::span(layout)])
    } else {
        Contiguous::Copied(super::CpuStorage::new(unary(src, layout, UnaryOp::Identity)))
    }
}

/// What [`contiguous`] returns: the elements, in place or in a pooled copy.
pub(crate) enum Contiguous<'a> {
    Borrowed(&'a [f32]),
    Copied(super::CpuStorage),
}

impl std::ops::Deref for Contiguous<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            Contiguous::Borrowed(x) => x,
            Contiguous::Copied(x) => x.as_slice(),
        }
    }
}

/// `op` over every element of a strided input; returns contiguous output.
pub(crate) fn unary(src: &[f32], layout: &Layout, op: UnaryOp) -> Vec<f32> {
    let walk = Walk::new([layout]);
    let mut out = super::pool::uninit(walk.numel());
    for_each_chunk(&mut out, 1, |start, chunk| {
        let mut buf = [0.0; BLOCK];
        walk.runs(start, start + chunk.len(), |run| {
            let dst = &mut chunk[run.start - start..][..run.len];
            let (off, stride) = (run.offsets[0], run.strides[0]);
            if stride == 1 {
                unary_slice(op, &src[off..off + run.len], dst);
            } else {
                for (b, d) in dst.chunks_mut(BLOCK).enumerate() {
                    let buf = &mut buf[..d.len()];
                    gather(src, off + b * BLOCK * stride, stride, buf);
                    unary_slice(op, buf, d);
                }
            }
        });
    });
    out
}

/// `op(a, b)` over two strided inputs of one shape; returns contiguous output.
pub(crate) fn binary(a: &[f32], la: &Layout, b: &[f32], lb: &Layout, op: BinaryOp) -> Vec<f32> {
    let walk = Walk::new([la, lb]);
    let mut out = super::pool::uninit(walk.numel());
    for_each_chunk(&mut out, 2, |start, chunk| {
        let (mut ba, mut bb) = ([0.0; BLOCK], [0.0; BLOCK]);
        walk.runs(start, start + chunk.len(), |run| {
            let dst = &mut chunk[run.start - start..][..run.len];
            let ([oa, ob], [sa, sb]) = (run.offsets, run.strides);
            if sa == 1 && sb == 1 {
                binary_slice(op, &a[oa..oa + run.len], &b[ob..ob + run.len], dst);
            } else {
                for (k, d) in dst.chunks_mut(BLOCK).enumerate() {
                    let n = d.len();
                    let xa = run_of(a, oa + k * BLOCK * sa, sa, &mut ba[..n]);
                    let xb = run_of(b, ob + k * BLOCK * sb, sb, &mut bb[..n]);
                    binary_slice(op, xa, xb, d);
                }
            }
        });
    });
    out
}

/// `cond != 0 ? t : f` over three strided inputs of one shape.
pub(crate) fn where_cond(c: &[f32], lc: &Layout, t: &[f32], lt: &Layout, f: &[f32], lf: &Layout) -> Vec<f32> {
    let walk = Walk::new([lc, lt, lf]);
    let mut out = super::pool::uninit(walk.numel());
    for_each_chunk(&mut out, 3, |start, chunk| {
        walk.runs(start, start + chunk.len(), |run| {
            let dst = &mut chunk[run.start - start..][..run.len];
            let ([oc, ot, of], [sc, st, sf]) = (run.offsets, run.strides);
            for (i, d) in dst.iter_mut().enumerate() {
                *d = if c[oc + i * sc] != 0.0 { t[ot + i * st] } else { f[of + i * sf] };
            }
        });
    });
    out
}
