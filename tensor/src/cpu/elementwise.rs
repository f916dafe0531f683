//! Elementwise kernels: one input (`unary`), two (`binary`), three (`where_cond`).
//!
//! The output is contiguous in row-major order of the (already broadcast) shape. Inputs are
//! read through `Walk` runs: a run of stride 1 is mapped straight from the slice; any other
//! run (a transposed or broadcast view) is first gathered into a small buffer, so the math is
//! the same vectorised code whatever the layout, and so are the results, bit for bit.

use wide::{f32x8, CmpEq, CmpGe, CmpGt};

use super::math;
use super::parallel::for_each_chunk;
use super::walk::Walk;
use crate::backend::{BinaryOp, UnaryOp};
use crate::layout::Layout;

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

/// Applies `op` to a contiguous slice.
pub(crate) fn unary_slice(op: UnaryOp, src: &[f32], dst: &mut [f32]) {
    use UnaryOp::*;
    match op {
        Identity => dst.copy_from_slice(src),
        Neg => math::map(src, dst, |x| -x),
        Exp => math::map(src, dst, math::exp),
        Log => math::map(src, dst, math::ln),
        Sqrt => math::map(src, dst, |x| x.sqrt()),
        Square => math::map(src, dst, |x| x * x),
        Recip => math::map(src, dst, |x| f32x8::ONE / x),
        Tanh => math::map(src, dst, math::tanh),
        Sigmoid => math::map(src, dst, math::sigmoid),
        Relu => math::map(src, dst, |x| x.max(f32x8::ZERO)),
        SquaredRelu => math::map(src, dst, |x| {
            let r = x.max(f32x8::ZERO);
            r * r
        }),
        Gelu => math::map(src, dst, math::gelu),
        GeluDerivative => math::map(src, dst, math::gelu_derivative),
        Step => math::map(src, dst, |x| x.cmp_gt(f32x8::ZERO).blend(f32x8::ONE, f32x8::ZERO)),
        AddScalar(c) => math::map(src, dst, |x| x + f32x8::splat(c)),
        MulScalar(c) => math::map(src, dst, |x| x * f32x8::splat(c)),
        DivScalar(c) => math::map(src, dst, |x| x / f32x8::splat(c)),
        MaxScalar(c) => math::map(src, dst, |x| x.max(f32x8::splat(c))),
        ScalarSub(c) => math::map(src, dst, |x| f32x8::splat(c) - x),
    }
}

/// Applies `op` pairwise to two contiguous slices.
pub(crate) fn binary_slice(op: BinaryOp, a: &[f32], b: &[f32], dst: &mut [f32]) {
    use BinaryOp::*;
    let (one, zero) = (f32x8::ONE, f32x8::ZERO);
    match op {
        Add => math::map2(a, b, dst, |x, y| x + y),
        Sub => math::map2(a, b, dst, |x, y| x - y),
        Mul => math::map2(a, b, dst, |x, y| x * y),
        Div => math::map2(a, b, dst, |x, y| x / y),
        Max => math::map2(a, b, dst, |x, y| x.max(y)),
        Min => math::map2(a, b, dst, |x, y| x.min(y)),
        Gt => math::map2(a, b, dst, |x, y| x.cmp_gt(y).blend(one, zero)),
        Ge => math::map2(a, b, dst, |x, y| x.cmp_ge(y).blend(one, zero)),
        Eq => math::map2(a, b, dst, |x, y| x.cmp_eq(y).blend(one, zero)),
    }
}

/// The input's elements in row-major order: borrowed if already contiguous, else copied.
pub(crate) fn contiguous<'a>(src: &'a [f32], layout: &Layout) -> std::borrow::Cow<'a, [f32]> {
    if layout.is_contiguous() {
        std::borrow::Cow::Borrowed(&src[layout.offset()..layout.offset() + layout.numel()])
    } else {
        std::borrow::Cow::Owned(unary(src, layout, UnaryOp::Identity))
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
                    gather(a, oa + k * BLOCK * sa, sa, &mut ba[..n]);
                    gather(b, ob + k * BLOCK * sb, sb, &mut bb[..n]);
                    binary_slice(op, &ba[..n], &bb[..n], d);
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
