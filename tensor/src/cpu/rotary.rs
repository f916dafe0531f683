//! Rotation of interleaved channel pairs in one pass (the arithmetic is in
//! [`crate::rotary`]): each output row reads its input row and the matching rows of the cos
//! and sin tables (broadcast layouts), so no intermediate tensor is made.

use rayon::prelude::*;

use super::parallel::{for_each_rows, SendPtr, PARALLEL_MIN};
use crate::layout::Layout;

/// Storage position of the first element of row `r` (row-major over all axes but the last).
fn row_start(layout: &Layout, mut r: usize) -> usize {
    let (shape, strides) = (layout.shape(), layout.strides());
    let mut pos = layout.offset();
    for d in (0..shape.len() - 1).rev() {
        pos += (r % shape[d]) * strides[d];
        r /= shape[d];
    }
    pos
}

/// A broadcast table read row by row: its data, layout and channel stride.
#[derive(Clone, Copy)]
struct Table<'a> {
    data: &'a [f32],
    layout: &'a Layout,
    stride: usize,
}

impl<'a> Table<'a> {
    fn of((data, layout): (&'a [f32], &'a Layout)) -> Self {
        Table { data, layout, stride: layout.strides()[layout.rank() - 1] }
    }
}

/// Rotates the first `dims` channels of row `r`: `read(c)` gives input channel `c`, and
/// `write(c, y)` stores output channel `c` (after both channels of its pair were read, so the
/// two may be the same memory).
#[inline(always)]
fn rotate_row(
    r: usize,
    dims: usize,
    (cos, sin): (Table, Table),
    read: impl Fn(usize) -> f32,
    mut write: impl FnMut(usize, f32),
) {
    let (pc, ps) = (row_start(cos.layout, r), row_start(sin.layout, r));
    for c in (0..dims).step_by(2) {
        let (x0, x1) = (read(c), read(c + 1));
        let (c0, c1) = (cos.data[pc + c * cos.stride], cos.data[pc + (c + 1) * cos.stride]);
        let (s0, s1) = (sin.data[ps + c * sin.stride], sin.data[ps + (c + 1) * sin.stride]);
        // Exactly the composition x ⊙ cos + rotate_half(x) ⊙ sin, in the same order.
        write(c, x0 * c0 + -x1 * s0);
        write(c + 1, x1 * c1 + x0 * s1);
    }
}

/// `x` rotated pairwise by `cos`/`sin`, whose layouts are broadcast to `x`'s shape with their
/// own channel count `dims` (even, at most `x`'s) last; channels from `dims` on pass through.
pub(crate) fn rotate_pairs(x: (&[f32], &Layout), cos: (&[f32], &Layout), sin: (&[f32], &Layout)) -> Vec<f32> {
    let (xs, lx) = x;
    let d = *lx.shape().last().unwrap_or(&0);
    let tables = (Table::of(cos), Table::of(sin));
    let dims = *tables.0.layout.shape().last().unwrap_or(&0);
    let sx = lx.strides()[lx.rank() - 1];
    let mut out = super::pool::uninit(lx.numel());
    for_each_rows(&mut out, d.max(1), |first, rows| {
        for (i, row) in rows.chunks_mut(d.max(1)).enumerate() {
            let r = first + i;
            let px = row_start(lx, r);
            let at = |c: usize| xs[px + c * sx];
            rotate_row(r, dims, tables, at, |c, y| row[c] = y);
            for (c, y) in row.iter_mut().enumerate().skip(dims) {
                *y = at(c);
            }
        }
    });
    out
}

/// [`rotate_pairs`] written over `x` itself, whose layout lies inside `xs` and reaches no
/// position twice (the channels from `dims` on are left as they are).
pub(crate) fn rotate_pairs_in_place(
    (xs, lx): (&mut [f32], &Layout),
    cos: (&[f32], &Layout),
    sin: (&[f32], &Layout),
) {
    let d = *lx.shape().last().unwrap_or(&0);
    if d == 0 || lx.numel() == 0 {
        return;
    }
    assert!(
        lx.checked_extent().is_some_and(|e| e <= xs.len()),
        "rotate_pairs_in_place: layout outside storage"
    );
    let tables = (Table::of(cos), Table::of(sin));
    let dims = *tables.0.layout.shape().last().unwrap_or(&0);
    let sx = lx.strides()[lx.rank() - 1];
    let base = SendPtr(xs.as_mut_ptr());
    let rotate = |r: usize| {
        let px = row_start(lx, r);
        let p = base.get();
        // SAFETY: every position `px + c·sx` (c < d) of row r is inside `xs`, which the layout
        // lies in (asserted above), and `xs` is borrowed mutably for the whole call. The layout
        // reaches each position once (the caller's `Owned` contract), so no other row — no
        // other task — reads or writes these elements; within the row each pair is read before
        // it is written.
        unsafe { rotate_row(r, dims, tables, |c| *p.add(px + c * sx), |c, y| *p.add(px + c * sx) = y) }
    };
    let rows = lx.numel() / d;
    if rayon::current_num_threads() <= 1 || lx.numel() < PARALLEL_MIN {
        (0..rows).for_each(rotate);
    } else {
        (0..rows).into_par_iter().with_min_len(64).for_each(rotate);
    }
}
