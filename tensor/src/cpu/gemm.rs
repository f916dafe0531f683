//! The linear layers' matrix products `x Wᵀ` and `dy W`: the weight packed once for all
//! threads, and the rows of the output handed out in blocks as threads free up.
//!
//! Through `sgemm`, a product was cut into one half of the rows per thread. Each thread then
//! packed the weight for itself, and whenever a neighbour on the machine slowed one thread,
//! the other finished its half and waited: 7-12 % of each product on this project's two-core
//! machines. Here:
//!
//! 1. `b` (`k×n`, any strides: the weight or its transpose) is copied into panels of
//!    [`PANEL`] columns, each panel `k×32` row-major and zero-padded on the right, so that a
//!    panel's rows are contiguous. The threads share this work, one panel at a time, and each
//!    waits until every panel is packed. At most [`PACKED_MAX`] floats (1 MiB, a second-level
//!    cache) are packed: a deeper or wider `b` goes to `sgemm`.
//! 2. The rows of `c` go in blocks of a few register tiles (fewer towards the end), each
//!    taken by the next thread that is free. A block multiplies its rows of `a`, read where
//!    they lie, by every panel on the AVX-512 register tiles of [`super::tile`] ([`TILE_ROWS`]
//!    rows by 32 columns), tile by tile, each panel's whole inner dimension at once (up to
//!    [`DEPTH`]): the panel streams past from the second-level cache in one run and each tile
//!    of `c` is stored once.
//!
//! `a` must have contiguous rows (activations `x`, `dy`). A weight gradient `dyᵀ x` reads
//! `dyᵀ` down its columns and packs the whole of `x`: `sgemm`, which packs both operands in
//! cache-sized pieces, does that better, and keeps it. Its fixed blocks (one per thread) run
//! at the start of the input gradient's product `dy W` (`Before`), whose tiles then even out
//! whatever one thread's block took longer than the other's.
//!
//! Every element of `c` is a sum over the inner dimension in order (step by step, `t` by
//! `t`), computed by one thread: the result does not depend on which thread took which block,
//! so training stays bit-for-bit reproducible. It agrees with `sgemm` to rounding.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use rayon::prelude::*;

use super::few_rows::{self, Strided};
use super::parallel::{SendPtr, PARALLEL_MIN_FLOPS};
use super::tile::{self, Epilogue, Skip};

/// Rows per register tile: 28 of the 32 vector registers accumulate, and each row of `b`
/// loaded serves 28 multiply-adds.
pub const TILE_ROWS: usize = 14;
/// Columns per packed panel of `b`: one register tile's width.
pub const PANEL: usize = 32;
/// Inner-dimension step. Steps of 256 (a tile's `14 × 256` floats of `a`, 14 KiB, kept in the
/// first-level cache across the panels) made the products over 1024 (`fc2`'s forward, `fc1`'s
/// input gradient) 2-8 % slower per node in a `step-2k` step than one step over the whole of
/// it: each step stored and reloaded the tile of `c`, and broke each panel's stream in four.
pub const DEPTH: usize = 1024;
/// The most floats of `b` this path packs (1 MiB, so the panels stay in the second-level
/// cache): every weight of the `step-2k` and `long-131k` models.
pub const PACKED_MAX: usize = 1 << 18;
/// The packing buffer that products reuse (at most [`PACKED_MAX`] floats).
static PACKED: Mutex<Vec<f32>> = Mutex::new(Vec::new());

/// Whether [`product`] takes `c = a·b` for these operands: the build has the AVX-512 tile
/// kernel, `a`'s rows are contiguous, and `b` packs into at most [`PACKED_MAX`] floats.
pub(crate) fn applies((m, k, n): (usize, usize, usize), a: &Strided) -> bool {
    tile::AVAILABLE && m > 0 && (a.col_stride == 1 || k <= 1) && k * n.div_ceil(PANEL) * PANEL <= PACKED_MAX
}

/// `c = a·b` for `a` `m×k` with contiguous rows, `b` `k×n` (any strides) and `c` row-major
/// `m×n`, every element of which is written. Only where [`applies`].
///
/// # Panics
/// If an operand does not lie inside its slice, `c` is not `m·n` long, or the product does
/// not [`applies`].
pub(crate) fn product(shape: (usize, usize, usize), a: Strided, b: Strided, c: &mut [f32]) {
    product_with(shape, a, b, Terms::default(), (0.0, c, None), None);
}

/// What a linear layer adds to its product: a bias (`n` values, added to every row) and a
/// residual (`m×n`, laid out as `c`), each where given; or, for the product that makes the
/// gradient of an activation's output, the activation's derivative (`m×n`), which the product
/// is multiplied by.
#[derive(Clone, Copy, Default)]
pub(crate) struct Terms<'a> {
    pub bias: Option<&'a [f32]>,
    pub residual: Option<&'a [f32]>,
    pub times: Option<&'a [f32]>,
}

/// [`product`] plus `terms`: a linear layer's `x Wᵀ + b (+ r)`, the terms added to each tile
/// as it is stored instead of in passes of their own over `c`.
pub(crate) fn product_plus(
    shape: (usize, usize, usize),
    a: Strided,
    b: Strided,
    terms: Terms,
    c: &mut [f32],
) {
    product_with(shape, a, b, terms, (0.0, c, None), None);
}

/// `GELU(y)` into `c` and `GELU'(y)` into `gelu_derivative` (`m×n`) for `y` [`product_plus`]'s
/// output: an MLP's hidden layer and the factor of its backward, made as each tile is stored
/// instead of in passes of their own that read the layer back from memory (and `y` itself
/// is never stored).
pub(crate) fn product_plus_gelu(
    shape: (usize, usize, usize),
    a: Strided,
    b: Strided,
    terms: Terms,
    (c, gelu_derivative): (&mut [f32], &mut [f32]),
) {
    product_with(shape, a, b, terms, (0.0, c, Some(gelu_derivative)), None);
}

/// [`product`] added to what `c` holds: `c += a·b`.
pub(crate) fn product_add(shape: (usize, usize, usize), a: Strided, b: Strided, c: &mut [f32]) {
    product_with(shape, a, b, Terms::default(), (1.0, c, None), None);
}

/// Work that a product's threads do before their share of it: `tasks` fixed pieces of other
/// work (the `sgemm` blocks of another product), piece `t` run by the worker numbered
/// `t % threads`. A worker that finishes its pieces early goes on to this product's tiles,
/// which are handed out as workers free up, so the two end together. Run alone, the fixed
/// pieces of a weight gradient's `sgemm` left one thread idle whenever a neighbour on the
/// machine slowed the other (about 7 % of the core time of a `step-2k` step's backward
/// products, measured as process CPU time against wall time per tape node).
#[derive(Clone, Copy)]
pub(crate) struct Before<'a> {
    pub tasks: usize,
    pub run: &'a (dyn Fn(usize) + Sync),
}

/// [`product_add`] when `beta` is 1, else [`product`], through `terms`, with `before` done
/// first by the same threads.
pub(crate) fn product_after(
    shape: (usize, usize, usize),
    a: Strided,
    b: Strided,
    (beta, c, terms): (f32, &mut [f32], Terms),
    before: Before,
) {
    product_with(shape, a, b, terms, (beta, c, None), Some(before));
}

/// `c = beta·c + a·b` through `terms` (`beta` 0 or 1), after `before` where given; where
/// `gelu_derivative` is given, `c` takes GELU of that and `gelu_derivative` GELU' of it.
fn product_with(
    (m, k, n): (usize, usize, usize),
    a: Strided,
    b: Strided,
    terms: Terms,
    (beta, c, mut gelu_derivative): (f32, &mut [f32], Option<&mut [f32]>),
    before: Option<Before>,
) {
    assert!(applies((m, k, n), &a), "gemm::product called where it does not apply");
    assert_eq!(c.len(), m * n, "product output length");
    assert!(terms.bias.is_none_or(|bias| bias.len() == n), "a bias per column");
    assert!(terms.residual.is_none_or(|r| r.len() == m * n), "a residual of the output's size");
    assert!(terms.times.is_none_or(|x| x.len() == m * n), "a factor per element of the output");
    assert!(
        terms.times.is_none() || (terms.bias.is_none() && terms.residual.is_none()),
        "a scaled product adds no terms"
    );
    assert!(gelu_derivative.as_ref().is_none_or(|g| g.len() == m * n), "derivatives of the output's size");
    few_rows::assert_product_in_bounds((m, n, k), &a, &b, (c.len(), n.max(1)));
    if n == 0 || k == 0 {
        if let Some(before) = before {
            (0..before.tasks).into_par_iter().for_each(before.run);
        }
        if n > 0 {
            c.iter_mut().for_each(|x| *x *= beta);
            match terms.times {
                Some(by) => Epilogue::Scaled { beta, by }.apply((m, n), (c, n)),
                None => Epilogue::Linear { beta, bias: terms.bias, residual: terms.residual }
                    .apply((m, n), (c, n)),
            }
            if let Some(g) = gelu_derivative {
                super::math::map(c, g, super::math::gelu_derivative);
                let y = c.to_vec();
                super::math::map(&y, c, super::math::gelu);
            }
        }
        return;
    }
    let alone = m * n * k < PARALLEL_MIN_FLOPS && before.is_none_or(|b| b.tasks <= 1);
    let threads = if alone { 1 } else { rayon::current_num_threads().max(1) };
    let panels = n.div_ceil(PANEL);
    // The packed weight goes into one buffer kept for the next product (concurrent products
    // take a fresh one). From the tensor pool, whose trimming frees its smallest buffers
    // first, a buffer this size was often a fresh mapping whose pages the system faulted in
    // and zeroed on every product (4 % of a step-2k step).
    let mut kept = PACKED.try_lock().ok();
    let mut fresh = Vec::new();
    let packed: &mut Vec<f32> = kept.as_deref_mut().unwrap_or(&mut fresh);
    packed.resize(k * panels * PANEL, 0.0);
    let job = Product { a, b, k, n, beta, terms };
    let (next_panel, panels_packed, next_tile) =
        (AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0));
    let (packed_len, packed_ptr, c_ptr) =
        (packed.len(), SendPtr(packed.as_mut_ptr()), SendPtr(c.as_mut_ptr()));
    let derivative_ptr = gelu_derivative.as_mut().map(|g| SendPtr(g.as_mut_ptr()));
    let work = |worker: usize| {
        if let Some(before) = before {
            (worker..before.tasks).step_by(threads).for_each(before.run);
        }
        loop {
            let p = next_panel.fetch_add(1, Ordering::Relaxed);
            if p >= panels {
                break;
            }
            let size = k * PANEL;
            // SAFETY: panel `p` is `packed[p·size..(p + 1)·size]`, inside `packed` (`packed_len
            // = panels·size`); the counter hands each `p` to one task only, and no task reads
            // `packed` before every panel is counted as packed (below).
            let panel = unsafe { std::slice::from_raw_parts_mut(packed_ptr.get().add(p * size), size) };
            job.pack_panel(p, panel);
            panels_packed.fetch_add(1, Ordering::Release);
        }
        // Every panel has been taken by a running task (this one, or one that took it before
        // this one looked), which packs it without waiting on anything: wait for those.
        let mut spins = 0u32;
        while panels_packed.load(Ordering::Acquire) < panels {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: every panel is written (the Acquire load above saw each task's Release after
        // its writes), and nothing writes `packed` any more.
        let packed = unsafe { std::slice::from_raw_parts(packed_ptr.get() as *const f32, packed_len) };
        while let Some((tile, count)) = claim_tiles(&next_tile, m.div_ceil(TILE_ROWS), threads) {
            let (r0, rows) = (tile * TILE_ROWS, (count * TILE_ROWS).min(m - tile * TILE_ROWS));
            // SAFETY: rows r0..r0 + rows of `c` (m·n, row-major) lie inside it; the counter
            // hands each tile to one task only, so no other task touches them, and `c`
            // outlives this parallel section (which joins before `product` returns).
            let c_rows = unsafe { std::slice::from_raw_parts_mut(c_ptr.get().add(r0 * n), rows * n) };
            // SAFETY: as for `c`: `gelu_derivative` is `m·n` long (asserted), and these rows are
            // this task's alone.
            let derivative_rows = derivative_ptr
                .map(|g| unsafe { std::slice::from_raw_parts_mut(g.get().add(r0 * n), rows * n) });
            job.multiply_rows(r0, packed, (c_rows, derivative_rows));
        }
    };
    if threads <= 1 {
        work(0);
    } else {
        (0..threads).into_par_iter().for_each(work);
    }
}

/// Claims the next row tiles of a product of `tiles` (the first and how many): four at a time
/// while there are plenty, so that a slowed thread hands most of its share to the others, then
/// fewer as they run out, so that the threads finish within one tile of each other. (Fixed
/// blocks of four tiles left one thread up to a block behind the other at the end of each
/// product; eight-tile blocks, twice that.)
fn claim_tiles(next: &AtomicUsize, tiles: usize, threads: usize) -> Option<(usize, usize)> {
    let mut t = next.load(Ordering::Relaxed);
    loop {
        if t >= tiles {
            return None;
        }
        let count = ((tiles - t) / (2 * threads)).clamp(1, 4);
        match next.compare_exchange_weak(t, t + count, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return Some((t, count)),
            Err(now) => t = now,
        }
    }
}

/// The operands of one product, `[m, k]·[k, n]`.
#[derive(Clone, Copy)]
struct Product<'a> {
    a: Strided<'a>,
    b: Strided<'a>,
    k: usize,
    n: usize,
    /// What `c`'s old contents are scaled by (0: never read).
    beta: f32,
    /// Added to `c` after the product.
    terms: Terms<'a>,
}

impl Product<'_> {
    /// Copies columns `32p..32p + 32` of `b` into `panel` (`k × 32`, row-major), zeros past
    /// column `n`.
    fn pack_panel(&self, p: usize, panel: &mut [f32]) {
        let (j0, b) = (p * PANEL, &self.b);
        let width = PANEL.min(self.n - j0);
        for (t, row) in panel.chunks_exact_mut(PANEL).enumerate() {
            let start = b.offset + t * b.row_stride + j0 * b.col_stride;
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

    /// Rows `r0..` of `c` (`c_rows`, row-major with `n` columns) against every packed panel,
    /// tile by tile, in steps of [`DEPTH`]; where `derivative_rows` is given (laid out alike),
    /// the rows take GELU of the product and `derivative_rows` GELU' of it.
    fn multiply_rows(
        &self,
        r0: usize,
        packed: &[f32],
        (c_rows, mut derivative_rows): (&mut [f32], Option<&mut [f32]>),
    ) {
        let (a, n) = (&self.a, self.n);
        let rows = c_rows.len() / n;
        let c_lines = (c_rows.as_ptr(), c_rows.len());
        for t0 in (0..rows).step_by(TILE_ROWS) {
            let tile_rows = TILE_ROWS.min(rows - t0);
            let c_tile = &mut c_rows[t0 * n..(t0 + tile_rows) * n];
            for s0 in (0..self.k).step_by(DEPTH) {
                let steps = DEPTH.min(self.k - s0);
                let beta = if s0 == 0 { self.beta } else { 1.0 };
                let a_tile = Strided { offset: a.offset + (r0 + t0) * a.row_stride + s0, ..*a };
                for (p, panel) in packed.chunks_exact(self.k * PANEL).enumerate() {
                    let j0 = p * PANEL;
                    let width = PANEL.min(n - j0);
                    let b_block =
                        Strided { data: panel, offset: s0 * PANEL, row_stride: PANEL, col_stride: 1 };
                    // The lines of the block of `c` stored next (the next panel's, or the next
                    // tile's first), asked for now: they arrive while this block is multiplied,
                    // where a tile's stores to lines not in the cache stalled it (2-3 % of a
                    // step-2k step, whose products write 2-16 MB each).
                    if s0 + DEPTH >= self.k {
                        let next = if j0 + PANEL < n {
                            Some((t0, j0 + PANEL))
                        } else if t0 + TILE_ROWS < rows {
                            Some((t0 + TILE_ROWS, 0))
                        } else {
                            None
                        };
                        if let Some((t, j)) = next {
                            for r in t..(t + TILE_ROWS).min(rows) {
                                prefetch_for_write(c_lines, r * n + j);
                                prefetch_for_write(c_lines, r * n + j + 16);
                            }
                        }
                    }
                    let block = j0..(tile_rows - 1) * n + j0 + width;
                    let c_block = &mut c_tile[block.clone()];
                    let shape = (tile_rows, width, steps);
                    // The terms go in with the last step, onto the finished sums.
                    let last = s0 + DEPTH >= self.k;
                    let Terms { bias, residual, times } = self.terms;
                    let at = (r0 + t0) * n + j0;
                    let epilogue = match times {
                        Some(by) if last => {
                            Epilogue::Scaled { beta, by: &by[at..at + (tile_rows - 1) * n + width] }
                        }
                        _ if last && (bias.is_some() || residual.is_some()) => Epilogue::Linear {
                            beta,
                            bias: bias.map(|b| &b[j0..j0 + width]),
                            residual: residual.map(|r| &r[at..at + (tile_rows - 1) * n + width]),
                        },
                        _ => Epilogue::Accumulate(beta),
                    };
                    let derivative_block = match derivative_rows.as_deref_mut() {
                        Some(g) if last => Some(&mut g[t0 * n..(t0 + tile_rows) * n][block]),
                        _ => None,
                    };
                    let done = tile::product_in_tiles_of::<TILE_ROWS>(
                        shape,
                        a_tile,
                        b_block,
                        (Skip::Nothing, epilogue),
                        (c_block, n),
                        derivative_block,
                    );
                    assert!(done, "the tile kernel takes every packed panel");
                }
            }
        }
    }
}

/// Asks the cache for the line holding `data[i]`, to be written (nothing past the end).
#[inline(always)]
fn prefetch_for_write((data, len): (*const f32, usize), i: usize) {
    #[cfg(target_arch = "x86_64")]
    if i < len {
        // SAFETY: a prefetch reads nothing the program sees and cannot fault; the address is
        // inside `data` anyway.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_ET0 }>(data.add(i) as *const i8)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shapes that exercise partial tiles, partial panels and several steps, with `a`'s rows
    /// contiguous or strided and `b` row-major, transposed or strided, against the triple loop
    /// in f64, and the same bits whatever the number of threads.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn products_match_the_triple_loop_on_any_threads() {
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 500.0 - 1.0;
        let shapes = [(1, 1, 1), (13, 7, 33), (40, 300, 64), (100, 530, 70), (257, 64, 1000), (30, 800, 300)];
        for (m, k, n) in shapes {
            for (a_gap, b_t) in [(0, false), (k + 3, false), (0, true), (k + 3, true)] {
                // `a` row-major, or every other row of a wider matrix.
                let a_data: Vec<f32> = (0..(m + 1) * (k + 2 + a_gap)).map(value).collect();
                let b_data: Vec<f32> = (0..(k + 2) * (n + 2)).map(|i| value(i + 5)).collect();
                let a = Strided { data: &a_data, offset: 2, row_stride: k + 2 + a_gap, col_stride: 1 };
                let b = if b_t {
                    Strided { data: &b_data, offset: 3, row_stride: 1, col_stride: k + 1 }
                } else {
                    Strided { data: &b_data, offset: 0, row_stride: n + 2, col_stride: 1 }
                };
                let at =
                    |x: &Strided, r: usize, c: usize| x.data[x.offset + r * x.row_stride + c * x.col_stride];
                let mut got = vec![f32::NAN; m * n];
                assert!(applies((m, k, n), &a));
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

    /// GELU of the output and its derivative stored in its place and beside it, and the
    /// output multiplied elementwise by given factors, each as the last step along the inner
    /// dimension stores a tile, give the bits of the plain product (with its bias) followed by
    /// the separate ops, over one step and several, partial tiles and panels, on one thread or
    /// three.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn gelu_and_factors_in_the_product_match_the_ops_after() {
        use super::super::math;
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 500.0 - 1.0;
        for (m, k, n) in [(13, 7, 33), (40, 300, 64), (20, DEPTH + 76, 40)] {
            let a_data: Vec<f32> = (0..m * k).map(value).collect();
            let b_data: Vec<f32> = (0..k * n).map(|i| value(i + 5)).collect();
            let (a, b) = (Strided::contiguous(&a_data, k), Strided::contiguous(&b_data, n));
            let bias: Vec<f32> = (0..n).map(|i| value(i + 9)).collect();
            let by: Vec<f32> = (0..m * n).map(|i| 4.0 * value(i + 11)).collect();
            let with_bias = Terms { bias: Some(&bias), ..Terms::default() };
            let mut plain = vec![0.0; m * n];
            product_plus((m, k, n), a, b, with_bias, &mut plain);
            let (mut gelu_after, mut derivative_after) = (vec![0.0; m * n], vec![0.0; m * n]);
            math::map(&plain, &mut gelu_after, math::gelu);
            math::map(&plain, &mut derivative_after, math::gelu_derivative);
            let mut product_alone = vec![0.0; m * n];
            product((m, k, n), a, b, &mut product_alone);
            let scaled_after: Vec<f32> = product_alone.iter().zip(&by).map(|(x, b)| x * b).collect();
            let same = |x: &[f32], y: &[f32]| x.iter().zip(y).all(|(x, y)| x.to_bits() == y.to_bits());
            for threads in [1, 3] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let (mut c, mut derivatives) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                pool.install(|| product_plus_gelu((m, k, n), a, b, with_bias, (&mut c, &mut derivatives)));
                assert!(same(&c, &gelu_after) && same(&derivatives, &derivative_after), "({m},{k},{n}) GELU");
                let mut c = vec![f32::NAN; m * n];
                let before = Before { tasks: 0, run: &|_| {} };
                let scaled = Terms { times: Some(&by), ..Terms::default() };
                pool.install(|| product_after((m, k, n), a, b, (0.0, &mut c, scaled), before));
                assert!(same(&c, &scaled_after), "({m},{k},{n}) scaled");
            }
        }
    }

    /// A left operand read down its columns, or a right operand too big to pack, goes to
    /// `sgemm`.
    #[test]
    fn weight_gradients_and_deep_operands_do_not_apply() {
        let data = vec![0.0; 4];
        let rows = Strided { data: &data, offset: 0, row_stride: 256, col_stride: 1 };
        let columns = Strided { data: &data, offset: 0, row_stride: 1, col_stride: 256 };
        assert_eq!(applies((2048, 256, 1024), &rows), tile::AVAILABLE);
        assert!(!applies((256, 2048, 256), &columns));
        assert!(!applies((2048, 2048, 1024), &rows));
    }

    /// Products started from inside parallel loops (nested in the pool's threads, several at
    /// once, so most find the kept packing buffer taken) give the same bits as one alone.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn concurrent_and_nested_products_give_the_same_bits() {
        use rayon::prelude::*;
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 500.0 - 1.0;
        let (m, k, n) = (200, 256, 96);
        let a_data: Vec<f32> = (0..m * k).map(value).collect();
        let b_data: Vec<f32> = (0..k * n).map(|i| value(i + 3)).collect();
        let (a, b) = (Strided::contiguous(&a_data, k), Strided::contiguous(&b_data, n));
        let mut alone = vec![0.0; m * n];
        product((m, k, n), a, b, &mut alone);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let results: Vec<Vec<f32>> = pool.install(|| {
            (0..12)
                .into_par_iter()
                .map(|_| {
                    let mut c = vec![0.0; m * n];
                    product((m, k, n), a, b, &mut c);
                    c
                })
                .collect()
        });
        for c in results {
            assert!(c.iter().zip(&alone).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
    }
}
