//! Rotation of interleaved channel pairs in one pass (the arithmetic is in
//! [`crate::rotary`]): each output row reads its input row and the matching rows of the cos
//! and sin tables (broadcast layouts), so no intermediate tensor is made.

use super::parallel::for_each_rows;
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

/// `x` rotated pairwise by `cos`/`sin`, whose layouts are broadcast to `x`'s shape with their
/// own channel count `dims` (even, at most `x`'s) last; channels from `dims` on pass through.
pub(crate) fn rotate_pairs(x: (&[f32], &Layout), cos: (&[f32], &Layout), sin: (&[f32], &Layout)) -> Vec<f32> {
    let ((xs, lx), (cs, lc), (ss, ls)) = (x, cos, sin);
    let d = *lx.shape().last().unwrap_or(&0);
    let dims = *lc.shape().last().unwrap_or(&0);
    let (sx, sc, sn) =
        (lx.strides()[lx.rank() - 1], lc.strides()[lc.rank() - 1], ls.strides()[ls.rank() - 1]);
    let mut out = super::pool::uninit(lx.numel());
    for_each_rows(&mut out, d.max(1), |first, rows| {
        for (i, row) in rows.chunks_mut(d.max(1)).enumerate() {
            let r = first + i;
            let (px, pc, ps) = (row_start(lx, r), row_start(lc, r), row_start(ls, r));
            let at = |c: usize| xs[px + c * sx];
            for c in (0..dims).step_by(2) {
                let (x0, x1) = (at(c), at(c + 1));
                let (c0, c1) = (cs[pc + c * sc], cs[pc + (c + 1) * sc]);
                let (s0, s1) = (ss[ps + c * sn], ss[ps + (c + 1) * sn]);
                // Exactly the composition x ⊙ cos + rotate_half(x) ⊙ sin, in the same order.
                row[c] = x0 * c0 + -x1 * s0;
                row[c + 1] = x1 * c1 + x0 * s1;
            }
            for (c, y) in row.iter_mut().enumerate().skip(dims) {
                *y = at(c);
            }
        }
    });
    out
}
