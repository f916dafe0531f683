//! Softmax along the last axis, forward and backward.
//!
//! Forward, per row: `m = max x`, `e = exp(x - m)`, `y = e / Σ e`. Shifting by the max keeps
//! every `exp` at most 1, so nothing overflows, and the result is unchanged because the shift
//! cancels in the ratio.
//!
//! Backward: with `y = softmax(x)` and upstream `dy`, the Jacobian is `diag(y) - y yᵀ`, so
//! `dx = y ⊙ (dy - ⟨dy, y⟩)`, one dot product and one pass per row.

use super::elementwise::contiguous;
use super::math;
use super::parallel::for_each_rows;
use crate::layout::Layout;

pub(crate) fn softmax(src: &[f32], layout: &Layout) -> Vec<f32> {
    let x = contiguous(src, layout);
    let cols = *layout.shape().last().unwrap_or(&1);
    let mut out = super::pool::uninit(x.len());
    for_each_rows(&mut out, cols, |row0, chunk| {
        for (r, y) in chunk.chunks_exact_mut(cols).enumerate() {
            let xr = &x[(row0 + r) * cols..][..cols];
            let m = math::max(xr);
            let s = math::sum_exp_shifted(xr, m, Some(y));
            let inv = 1.0 / s;
            for v in y.iter_mut() {
                *v *= inv;
            }
        }
    });
    out
}

pub(crate) fn softmax_backward(y: &[f32], ly: &Layout, dy: &[f32], ldy: &Layout) -> Vec<f32> {
    let y = contiguous(y, ly);
    let dy = contiguous(dy, ldy);
    let cols = *ly.shape().last().unwrap_or(&1);
    let mut out = super::pool::uninit(y.len());
    for_each_rows(&mut out, cols, |row0, chunk| {
        for (r, dx) in chunk.chunks_exact_mut(cols).enumerate() {
            let yr = &y[(row0 + r) * cols..][..cols];
            let gr = &dy[(row0 + r) * cols..][..cols];
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((d, &yv), &gv) in dx.iter_mut().zip(yr).zip(gr) {
                *d = yv * (gv - dot);
            }
        }
    });
    out
}
