//! Reductions along one axis: sum, max, min, log-sum-exp, and argmax.
//!
//! Two ways to walk, chosen by the stride of the reduced axis:
//! - stride 1 (the common "last axis of contiguous data"): each output element reduces one
//!   contiguous row with vectorised code (eight lanes, several vectors in flight);
//! - otherwise: the output starts as the first slice along the axis and every further slice is
//!   combined into it elementwise, so the inner loops run along a contiguous output
//!   (e.g. summing `[4096, 768]` over axis 0 streams 768-wide rows through L1).
//!
//! Log-sum-exp uses the max shift, `m + log Σ exp(x - m)`, so it never overflows; on a
//! non-unit-stride axis the data is first copied so the axis is last.

use super::elementwise::unary;
use super::math;
use super::parallel::for_each_chunk;
use super::walk::Walk;
use crate::backend::{BinaryOp, ReduceOp, UnaryOp};
use crate::layout::Layout;
use crate::op_table::binary_slice;

/// Reduces `axis` of the strided input; output is contiguous with `axis` of size 1.
pub(crate) fn reduce(src: &[f32], layout: &Layout, axis: usize, op: ReduceOp) -> Vec<f32> {
    let len = layout.shape()[axis];
    let stride = layout.strides()[axis];
    // A layout over the output shape that points at the first element of each reduced row.
    let first = layout.narrow(axis, 0, len.min(1)).expect("axis checked by caller");
    let mut out_shape = layout.shape().to_vec();
    out_shape[axis] = 1;
    let first = Layout::from_parts(out_shape.clone(), first.strides().to_vec(), first.offset());
    let numel: usize = out_shape.iter().product();
    if len == 0 {
        let identity = match op {
            ReduceOp::Sum => 0.0,
            ReduceOp::Max | ReduceOp::LogSumExp => f32::NEG_INFINITY,
            ReduceOp::Min => f32::INFINITY,
        };
        return vec![identity; numel];
    }
    if len == 1 {
        // Each output reduces one element: a copy (every reduction of one `x` is `x`).
        return unary(src, &first, UnaryOp::Identity);
    }
    if stride == 1 {
        return reduce_rows(src, &first, len, op);
    }
    if op == ReduceOp::LogSumExp {
        // Bring the axis last and contiguous, then reduce rows.
        let mut dims: Vec<usize> = (0..layout.rank()).filter(|&d| d != axis).collect();
        dims.push(axis);
        let moved = layout.permute(&dims).expect("valid permutation");
        let data = unary(src, &moved, UnaryOp::Identity);
        let rows = Layout::from_parts(vec![numel, 1], vec![len, 1], 0);
        return reduce_rows(&data, &rows, len, op);
    }
    // Combine slice after slice into the output.
    let walk = Walk::new([&first]);
    let combine = match op {
        ReduceOp::Sum => BinaryOp::Add,
        ReduceOp::Max => BinaryOp::Max,
        ReduceOp::Min => BinaryOp::Min,
        ReduceOp::LogSumExp => unreachable!("handled above"),
    };
    let mut out = super::pool::uninit(numel);
    for_each_chunk(&mut out, len, |start, chunk| {
        let mut buf = [0.0f32; 256];
        let mut acc = [0.0f32; 256];
        walk.runs(start, start + chunk.len(), |run| {
            let dst = &mut chunk[run.start - start..][..run.len];
            let (off, s) = (run.offsets[0], run.strides[0]);
            for (b, d) in dst.chunks_mut(256).enumerate() {
                let n = d.len();
                let base = off + b * 256 * s;
                for r in 0..len {
                    let o = base + r * stride;
                    let slice: &[f32] = if s == 1 {
                        &src[o..o + n]
                    } else {
                        for (t, x) in buf[..n].iter_mut().enumerate() {
                            *x = src[o + t * s];
                        }
                        &buf[..n]
                    };
                    if r == 0 {
                        d.copy_from_slice(slice);
                    } else {
                        binary_slice(combine, d, slice, &mut acc[..n]);
                        d.copy_from_slice(&acc[..n]);
                    }
                }
            }
        });
    });
    out
}

/// Reduces rows of `len` contiguous elements; `first` maps each output index to its row start.
fn reduce_rows(src: &[f32], first: &Layout, len: usize, op: ReduceOp) -> Vec<f32> {
    let walk = Walk::new([first]);
    let mut out = super::pool::uninit(walk.numel());
    for_each_chunk(&mut out, len, |start, chunk| {
        walk.runs(start, start + chunk.len(), |run| {
            let dst = &mut chunk[run.start - start..][..run.len];
            for (t, d) in dst.iter_mut().enumerate() {
                let o = run.offsets[0] + t * run.strides[0];
                *d = reduce_row(&src[o..o + len], op);
            }
        });
    });
    out
}

/// One contiguous row.
pub(crate) fn reduce_row(row: &[f32], op: ReduceOp) -> f32 {
    match op {
        ReduceOp::Sum => math::sum(row),
        ReduceOp::Max => math::max(row),
        ReduceOp::Min => math::min(row),
        ReduceOp::LogSumExp => {
            let m = math::max(row);
            if m == f32::NEG_INFINITY || !m.is_finite() {
                // All -inf gives -inf; +inf or NaN propagate.
                return m;
            }
            m + math::sum_exp_shifted(row, m, None).ln()
        }
    }
}

/// Index of the maximum along `axis` (first on ties; NaN counts as largest).
pub(crate) fn argmax(src: &[f32], layout: &Layout, axis: usize) -> Vec<usize> {
    let len = layout.shape()[axis];
    let mut dims: Vec<usize> = (0..layout.rank()).filter(|&d| d != axis).collect();
    dims.push(axis);
    let moved = layout.permute(&dims).expect("valid permutation");
    let data = unary(src, &moved, UnaryOp::Identity);
    if len == 0 {
        return vec![0; layout.numel()];
    }
    data.chunks_exact(len)
        .map(|row| {
            let mut best = 0;
            for (i, &x) in row.iter().enumerate() {
                if x > row[best] || (x.is_nan() && !row[best].is_nan()) {
                    best = i;
                }
            }
            best
        })
        .collect()
}
