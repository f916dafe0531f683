//! The linear layers' matrix products: `c = a·b` with the right operand packed once for all
//! threads, and the rows of `c` handed out in blocks as threads free up.
//!
//! Through `sgemm`, a product was cut into one half of the rows per thread. Each thread then
//! packed the whole right operand for itself (for a weight gradient `dyᵀ x`, that is all of
//! `x`), and whenever a neighbour on the machine slowed one thread, the other finished its half
//! and waited: 7-12 % of each product on this project's two-core machines. Here:
//!
//! 1. `b` (`k×n`, any strides) is copied into panels of [`PANEL`] columns, each panel `k×32`
//!    row-major and zero-padded on the right, so that a panel's rows are contiguous. The
//!    threads share this work, one panel at a time, and wait until every panel is packed (at
//!    most [`PACKED_MAX`] floats at once: a deeper `b` is packed and multiplied in chunks of
//!    its rows, adding into `c`).
//! 2. The rows of `c` go in blocks of a few register tiles, each taken by the next thread that
//!    is free. A block multiplies its rows of `a`, read where they lie (any strides), by every
//!    panel on the AVX-512 register tiles of [`super::tile`] ([`TILE_ROWS`] rows by 32
//!    columns), in steps of [`DEPTH`] along the inner dimension so that a tile's rows of `a`
//!    stay in the first-level cache while the panels stream past.
//!
//! Every element of `c` is a sum over the inner dimension in order (chunk by chunk, step by
//! step, `t` by `t`), computed by one thread: the result does not depend on which thread took
//! which block, so training stays bit-for-bit reproducible. It agrees with `sgemm` to
//! rounding. Builds without AVX-512 use `sgemm` ([`AVAILABLE`] is false).

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use super::few_rows::{self, Strided};
use super::parallel::SendPtr;
use super::tile;

/// Whether this build has the kernel (the machine's AVX-512, enabled at compile time).
pub const AVAILABLE: bool = tile::AVAILABLE;
/// Rows per register tile: 24 of the 32 vector registers accumulate, and each row of `b`
/// loaded serves 24 multiply-adds.
pub const TILE_ROWS: usize = 12;
/// Columns per packed panel of `b`: one register tile's width.
pub const PANEL: usize = 32;
/// Inner-dimension step: a tile's `12 × 256` floats of `a` (12 KiB) stay in the first-level
/// cache across the panels.
pub const DEPTH: usize = 256;
/// At most this many floats of `b` are packed at once (4 MiB).
pub const PACKED_MAX: usize = 1 << 20;
/// Products smaller than this many multiply-adds run on the calling thread alone.
const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// `c = a·b` for `a` `m×k`, `b` `k×n` (both any strides) and `c` row-major `m×n`, every element
/// of which is written. Must only be called where [`AVAILABLE`].
///
/// # Panics
/// If an operand does not lie inside its slice, `c` is not `m·n` long, or the build has no
/// AVX-512.
pub(crate) fn product((m, k, n): (usize, usize, usize), a: Strided, b: Strided, c: &mut [f32]) {
    assert_eq!(c.len(), m * n, "product output length");
    few_rows::assert_product_in_bounds((m, n, k), &a, &b, (c.len(), n.max(1)));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    let threads = if m * n * k < PARALLEL_MIN_FLOPS { 1 } else { rayon::current_num_threads().max(1) };
    let panels = n.div_ceil(PANEL);
    // Rows of `b` per packed chunk: whole steps, as many as fit in PACKED_MAX.
    let chunk = (PACKED_MAX / (panels * PANEL) / DEPTH).max(1) * DEPTH;
    // About eight blocks per thread, so a slowed thread hands most of its share to the others.
    let block = m.div_ceil(threads * 8).next_multiple_of(TILE_ROWS).clamp(TILE_ROWS, 8 * TILE_ROWS);
    let mut packed = super::pool::uninit(chunk.min(k) * panels * PANEL);
    for p0 in (0..k).step_by(chunk) {
        let depth = chunk.min(k - p0);
        let job = Chunk { a, b, p0, depth, m, n, block, beta: if p0 == 0 { 0.0 } else { 1.0 } };
        job.run(threads, &mut packed[..depth * panels * PANEL], c);
    }
    super::pool::recycle(packed);
}

/// One chunk of the inner dimension, `p0..p0 + depth`: `c = beta·c + a[:, chunk]·b[chunk, :]`.
#[derive(Clone, Copy)]
struct Chunk<'a> {
    a: Strided<'a>,
    b: Strided<'a>,
    p0: usize,
    depth: usize,
    m: usize,
    n: usize,
    /// Rows of `c` per block handed to a thread.
    block: usize,
    beta: f32,
}

impl Chunk<'_> {
    /// Packs `b`'s rows of this chunk into `packed` and multiplies, on `threads` tasks that
    /// share both the packing and the row blocks.
    fn run(self, threads: usize, packed: &mut [f32], c: &mut [f32]) {
        let panels = self.n.div_ceil(PANEL);
        let blocks = self.m.div_ceil(self.block);
        let (next_panel, panels_packed, next_block) =
            (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
        let (packed_len, packed_ptr, c_ptr) =
            (packed.len(), SendPtr(packed.as_mut_ptr()), SendPtr(c.as_mut_ptr()));
        let work = || {
            loop {
                let p = next_panel.fetch_add(1, Ordering::Relaxed);
                if p >= panels {
                    break;
                }
                let size = self.depth * PANEL;
                // SAFETY: panel `p` is `packed[p·size..(p + 1)·size]`, inside `packed`
                // (`packed_len = panels·size`); the counter hands each `p` to one task only, and
                // no task reads `packed` before every panel is counted as packed (below).
                let panel = unsafe { std::slice::from_raw_parts_mut(packed_ptr.get().add(p * size), size) };
                self.pack_panel(p, panel);
                panels_packed.fetch_add(1, Ordering::Release);
            }
            // Every panel has been taken by a running task (this one, or one that took it
            // before this one looked): wait for those to finish.
            let mut spins = 0u32;
            while panels_packed.load(Ordering::Acquire) < panels {
                spins += 1;
                if spins < 1 << 12 {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            // SAFETY: every panel is written (the Acquire load above saw each task's Release
            // after its writes) and nothing writes `packed` any more.
            let packed = unsafe { std::slice::from_raw_parts(packed_ptr.get() as *const f32, packed_len) };
            loop {
                let blk = next_block.fetch_add(1, Ordering::Relaxed);
                if blk >= blocks {
                    break;
                }
                let r0 = blk * self.block;
                let rows = self.block.min(self.m - r0);
                // SAFETY: rows r0..r0 + rows of `c` (m·n long, row-major) lie inside it; the
                // counter hands each block to one task only, so no other task touches them,
                // and `c` outlives this parallel section (which joins before `run` returns).
                let c_rows =
                    unsafe { std::slice::from_raw_parts_mut(c_ptr.get().add(r0 * self.n), rows * self.n) };
                self.multiply_rows(r0, packed, c_rows);
            }
        };
        if threads <= 1 {
            work();
        } else {
            (0..threads).into_par_iter().for_each(|_| work());
        }
    }

    /// Copies columns `32p..32p + 32` of this chunk's rows of `b` into `panel` (`depth × 32`,
    /// row-major), zeros past column `n`.
    fn pack_panel(&self, p: usize, panel: &mut [f32]) {
        let (j0, b) = (p * PANEL, &self.b);
        let width = PANEL.min(self.n - j0);
        for (t, row) in panel.chunks_exact_mut(PANEL).enumerate() {
            let start = b.offset + (self.p0 + t) * b.row_stride + j0 * b.col_stride;
            if b.col_stride == 1 {
                row[..width].copy_from_slice(&b.data[start..start + width]);
            } else {
                for (x, out) in row[..width].iter_mut().enumerate() {
                    *out = b.data[start + x * b.col_stride];
                }
            }
            row[width..].fill(0.0);
        }
    }

    /// Rows `r0..r0 + rows` of `c` (`c_rows`, row-major with `n` columns) against every packed
    /// panel, in steps of [`DEPTH`].
    fn multiply_rows(&self, r0: usize, packed: &[f32], c_rows: &mut [f32]) {
        let (a, n) = (&self.a, self.n);
        let rows = c_rows.len() / n;
        for s0 in (0..self.depth).step_by(DEPTH) {
            let steps = DEPTH.min(self.depth - s0);
            let beta = if s0 == 0 { self.beta } else { 1.0 };
            let a_block =
                Strided { offset: a.offset + r0 * a.row_stride + (self.p0 + s0) * a.col_stride, ..*a };
            for (p, panel) in packed.chunks_exact(self.depth * PANEL).enumerate() {
                let j0 = p * PANEL;
                let width = PANEL.min(n - j0);
                let b_block = Strided { data: panel, offset: s0 * PANEL, row_stride: PANEL, col_stride: 1 };
                let c_block = &mut c_rows[j0..(rows - 1) * n + j0 + width];
                let done = tile::product_in_tiles_of::<TILE_ROWS>(
                    (rows, width, steps),
                    a_block,
                    b_block,
                    beta,
                    (c_block, n),
                );
                assert!(done, "gemm::product needs the AVX-512 tile kernel (gemm::AVAILABLE)");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes that exercise partial tiles, partial panels, several steps and several packed
    /// chunks, with `a` and `b` row-major, transposed and strided, against the triple loop in
    /// f64 — and the same bits whatever the number of threads.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn products_match_the_triple_loop_on_any_threads() {
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 500.0 - 1.0;
        let shapes =
            [(1, 1, 1), (13, 7, 33), (40, 300, 64), (100, 530, 70), (257, 64, 1100), (30, 4500, 300)];
        for (m, k, n) in shapes {
            for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
                let a_data: Vec<f32> = (0..(m + 2) * (k + 2)).map(value).collect();
                let b_data: Vec<f32> = (0..(k + 2) * (n + 2)).map(|i| value(i + 5)).collect();
                let a = if a_t {
                    Strided { data: &a_data, offset: 1, row_stride: 1, col_stride: m + 1 }
                } else {
                    Strided { data: &a_data, offset: 2, row_stride: k + 2, col_stride: 1 }
                };
                let b = if b_t {
                    Strided { data: &b_data, offset: 3, row_stride: 1, col_stride: k + 1 }
                } else {
                    Strided { data: &b_data, offset: 0, row_stride: n + 2, col_stride: 1 }
                };
                let at =
                    |x: &Strided, r: usize, c: usize| x.data[x.offset + r * x.row_stride + c * x.col_stride];
                let mut got = vec![f32::NAN; m * n];
                product((m, k, n), a, b, &mut got);
                for r in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|t| at(&a, r, t) as f64 * at(&b, t, j) as f64).sum();
                        let g = got[r * n + j] as f64;
                        assert!(
                            (g - want).abs() < 1e-5 * (1.0 + k as f64),
                            "({m},{k},{n}) [{r},{j}]: {g} vs {want}"
                        );
                    }
                }
                let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
                let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
                for pool in [one, three] {
                    let mut again = vec![f32::NAN; m * n];
                    pool.install(|| product((m, k, n), a, b, &mut again));
                    assert!(
                        got.iter().zip(&again).all(|(x, y)| x.to_bits() == y.to_bits()),
                        "({m},{k},{n}) bits"
                    );
                }
            }
        }
    }
}
