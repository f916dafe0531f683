//! Rotation of interleaved channel pairs in one pass (the arithmetic is in
//! [`crate::rotary`]): each row of `x` reads the matching rows of the cos and sin tables
//! (broadcast layouts), so no intermediate tensor is made.
//!
//! The three operands are walked together ([`super::walk`]): the walk hands out runs of whole rows
//! with each operand's offset advanced by carrying, not recomputed with a division per row, and
//! a run whose operands are contiguous rotates plain slices, which the compiler vectorises.

use rayon::prelude::*;

use super::parallel::{SendPtr, PARALLEL_MIN};
use super::walk::{Run, Walk};
use crate::backend::UnaryOp;
use crate::layout::Layout;

/// Rotates one run of channel pairs (`len` even, starting at a pair): operand 0 is `x`, read
/// and written through `p`; 1 and 2 the cos and sin tables.
///
/// # Safety
/// Positions `offsets[0] + t·strides[0]` (`t < len`) are inside the allocation `p` points into,
/// and no other thread reads or writes them meanwhile.
#[inline(always)]
unsafe fn rotate_run(p: *mut f32, run: Run<3>, cos: &[f32], sin: &[f32]) {
    let [ox, oc, os] = run.offsets;
    let [sx, sc, ss] = run.strides;
    // Exactly the composition x ⊙ cos + rotate_half(x) ⊙ sin, in the same order.
    let rotate = |x0: f32, x1: f32, (c0, c1): (f32, f32), (s0, s1): (f32, f32)| {
        (x0 * c0 + -x1 * s0, x1 * c1 + x0 * s1)
    };
    if sx == 1 && sc == 1 && ss == 1 {
        let x = std::slice::from_raw_parts_mut(p.add(ox), run.len);
        let (c, s) = (&cos[oc..oc + run.len], &sin[os..os + run.len]);
        for ((x, c), s) in x.chunks_exact_mut(2).zip(c.chunks_exact(2)).zip(s.chunks_exact(2)) {
            (x[0], x[1]) = rotate(x[0], x[1], (c[0], c[1]), (s[0], s[1]));
        }
    } else {
        for t in (0..run.len).step_by(2) {
            let (a, b) = (p.add(ox + t * sx), p.add(ox + (t + 1) * sx));
            let (c, s) =
                ((cos[oc + t * sc], cos[oc + (t + 1) * sc]), (sin[os + t * ss], sin[os + (t + 1) * ss]));
            (*a, *b) = rotate(*a, *b, c, s);
        }
    }
}

/// `x` rotated pairwise by `cos`/`sin`, whose layouts are broadcast to `x`'s shape with their
/// own channel count `dims` (even, at most `x`'s) last; channels from `dims` on pass through.
pub(crate) fn rotate_pairs(x: (&[f32], &Layout), cos: (&[f32], &Layout), sin: (&[f32], &Layout)) -> Vec<f32> {
    let mut out = super::elementwise::unary(x.0, x.1, UnaryOp::Identity);
    rotate_pairs_in_place((&mut out, &Layout::contiguous(x.1.shape())), cos, sin);
    out
}

/// [`rotate_pairs`] written over `x` itself, whose layout lies inside `xs` and reaches no
/// position twice (the channels from `dims` on are left as they are).
pub(crate) fn rotate_pairs_in_place(
    (xs, lx): (&mut [f32], &Layout),
    (cos, lc): (&[f32], &Layout),
    (sin, ls): (&[f32], &Layout),
) {
    let dims = *lc.shape().last().unwrap_or(&0);
    if dims == 0 || lx.numel() == 0 {
        return;
    }
    assert!(
        lx.checked_extent().is_some_and(|e| e <= xs.len()),
        "rotate_pairs_in_place: layout outside storage"
    );
    let rotated = lx.narrow(lx.rank() - 1, 0, dims).expect("tables checked against x by the caller");
    // The rotation is elementwise, so the three operands may be walked in any order of their
    // axes, as long as it is the same for all three: x's memory order (its axes by decreasing
    // stride, the channels last). Heads split off `[B, T, H·D]` are `[B, H, T, D]` with rows a
    // head apart; walked head by head, every row of the tables was read once per head and x in
    // strides of a row. In memory order each table row serves all heads from L1 and x streams
    // (`long-131k`'s keys: 3 % of a step before).
    let mut order: Vec<usize> = (0..rotated.rank() - 1).collect();
    order.sort_by_key(|&axis| std::cmp::Reverse(rotated.strides()[axis]));
    order.push(rotated.rank() - 1);
    let permuted = |l: &Layout| l.permute(&order).expect("a permutation of the axes");
    let (rotated, lc, ls) = (permuted(&rotated), permuted(lc), permuted(ls));
    let walk = Walk::new([&rotated, &lc, &ls]);
    let base = SendPtr(xs.as_mut_ptr());
    let rotate = |(begin, end): (usize, usize)| {
        // SAFETY: every position of `rotated` is one of `x`'s, inside `xs` (asserted above),
        // which is borrowed mutably for the whole call. The layout reaches each position once
        // (the caller's `Owned` contract) and the tasks cover disjoint ranges of rows, so no
        // other task touches a run's elements. Runs cover whole pairs: ranges start at a row,
        // and the walk's innermost axis is the channels (merged with whole rows at most).
        walk.runs(begin, end, |run| unsafe { rotate_run(base.get(), run, cos, sin) });
    };
    let total = rotated.numel();
    let threads = rayon::current_num_threads();
    if threads <= 1 || total < PARALLEL_MIN {
        rotate((0, total));
    } else {
        let chunk = (total / dims).div_ceil(threads * 4).max(1) * dims;
        (0..total.div_ceil(chunk))
            .into_par_iter()
            .for_each(|i| rotate((i * chunk, ((i + 1) * chunk).min(total))));
    }
}
