//! Matrix products on AVX-512 register tiles without packing the left operand: `c = beta·c +
//! a·b` for a right operand whose rows are contiguous. Two users:
//!
//! * the fused attention's block products. Each has one short side, the head dimension `D`
//!   (32 or 64): `S = Q Kᵀ` is `[bq, D]·[D, bk]`, `O += P V` is `[bq, bk]·[bk, D]`, and the
//!   backward's `dV += Pᵀ dO`, `dP = dO Vᵀ`, `dQ += dS K`, `dK += dSᵀ Q` are alike. `sgemm`
//!   first copies ("packs") both operands into panels, which pays off when each packed element
//!   is used many times; a score block is used only `D` times per product, and packing the
//!   score blocks cost as much as multiplying them (an eighth of a `long-131k` step). So these
//!   products read both operands where they lie (the sweep copies `Kᵀ` and `Vᵀ` into row-major
//!   blocks, once per key block);
//! * the linear layers' products ([`super::gemm`]), which pack only the right operand, once,
//!   into panels 32 columns wide, and read the left one where it lies.
//!
//! The kernel:
//!
//! * `c` is cut into tiles of `R` rows by 32 columns, held in `2R` AVX-512 registers
//!   ([`ROWS`] = 12 for the attention, [`super::gemm::TILE_ROWS`] = 14 for the linear layers:
//!   taller tiles load `b` fewer times per multiply-add, 8-row tiles ran about a tenth slower);
//! * for each `t` of the inner dimension a tile loads row `t` of `b` (two vectors) and
//!   broadcasts `a[r, t]` for each of its rows: `2R` fused multiply-adds for `R + 2` loads,
//!   all from blocks that stay in the first- or second-level cache;
//! * `a` may have any strides (a transposed matrix is broadcast from where it lies), `b` needs
//!   contiguous rows; a tile narrower than 32 columns is masked.
//!
//! A finished tile is stored as `beta·c + a·b`, or put through an elementwise step on its way
//! out (`Epilogue`): a linear layer's bias added to each row and the residual stream added to
//! its output; an MLP's hidden layer stored as GELU of the product with GELU's derivative
//! beside it, and in the backward the gradient of that GELU's output multiplied by the saved
//! derivative as it is made; in the attention backward, `p = e^{s − lse}` as `S = Q Kᵀ` is
//! recomputed, `ds = p (dp − Δ)` as `dP = dO Vᵀ` is made. Each spares a pass that would read
//! the whole block back from a cache (or, for a layer's output, from memory) and write it
//! again.
//!
//! Each output is a sum over `t` in order, so results agree with `sgemm`'s to rounding, and do
//! not depend on how the caller splits the work. A build without AVX-512 (or an operand `b`
//! without contiguous rows) multiplies with `sgemm` instead.

use super::few_rows::{self, Strided as Matrix};

/// Rows of `c` per register tile in the attention's products.
pub const ROWS: usize = 12;

/// Whether this build has the kernel (the machine's AVX-512, enabled at compile time).
pub const AVAILABLE: bool = cfg!(all(target_arch = "x86_64", target_feature = "avx512f"));

/// Where a product's operands are zero in a staircase (a causal diagonal block of attention,
/// where query `r` sees the keys before `ends[r]`), what each row tile may leave out. Skipped
/// sums are of zero terms, so the results are the same (up to the sign of a zero).
#[derive(Clone, Copy)]
pub(crate) enum Skip<'a> {
    /// Nothing is left out.
    Nothing,
    /// Row `r` of `c` is needed only before column `ends[r]`: a row tile skips the column
    /// panels from its largest end on, leaving them as they were.
    ColumnsFrom(&'a [usize]),
    /// Row `r` of `a` is zero from column `ends[r]` on: a tile's sums stop at its largest end.
    InnerFrom(&'a [usize]),
    /// Row `r` of `a` is zero before column `starts[r]`: a tile's sums start at its smallest.
    InnerBefore(&'a [usize]),
}

impl Skip<'_> {
    /// For the tile of rows `r0..r0 + h` of an `m × w` product over `k`: the range of `t` its
    /// sums run over, and the column its panels stop before.
    #[inline(always)]
    fn bounds(&self, (r0, h): (usize, usize), (w, k): (usize, usize)) -> (usize, usize, usize) {
        let largest = |ends: &[usize]| ends[r0..r0 + h].iter().copied().max().unwrap_or(0);
        match *self {
            Skip::Nothing => (0, k, w),
            Skip::ColumnsFrom(ends) => (0, k, largest(ends).min(w)),
            Skip::InnerFrom(ends) => (0, largest(ends).min(k), w),
            Skip::InnerBefore(starts) => (starts[r0..r0 + h].iter().copied().min().unwrap_or(0).min(k), k, w),
        }
    }

    fn assert_covers(&self, m: usize) {
        if let Skip::ColumnsFrom(v) | Skip::InnerFrom(v) | Skip::InnerBefore(v) = *self {
            assert!(v.len() >= m, "a bound per row");
        }
    }
}

/// What a product does with `x = (a·b)[r, j]` before storing it as `c[r, j]`.
#[derive(Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// `c = beta·c + x`.
    Accumulate(f32),
    /// `c = ((beta·c + x) + bias[j]) + residual[r, j]`, each term where given: a linear
    /// layer's bias (one value per column) and the residual stream its output is added to (laid
    /// out as `c`), added as the product's last steps, with the same roundings as adding them
    /// to the finished product one after the other.
    Linear { beta: f32, bias: Option<&'a [f32]>, residual: Option<&'a [f32]> },
    /// `c = e^{x − shift[r]}`: `shift` has a value per row.
    ExpShifted(&'a [f32]),
    /// `c = p[r, j] · (x − shift[r])`: `p` is laid out as `c` (same row stride).
    ScaledShifted { p: &'a [f32], shift: &'a [f32] },
    /// `c = (beta·c + x) · by[r, j]`, `by` laid out as `c`: the gradient of an activation's
    /// input, made by the product that makes the gradient of its output, times the
    /// activation's derivative, which its forward saved.
    Scaled { beta: f32, by: &'a [f32] },
}

impl Epilogue<'_> {
    /// The `beta` of a product that leaves its elementwise step to [`Epilogue::apply`].
    pub fn beta(&self) -> f32 {
        match self {
            Epilogue::Accumulate(beta) | Epilogue::Linear { beta, .. } | Epilogue::Scaled { beta, .. } => {
                *beta
            }
            _ => 0.0,
        }
    }

    /// The elementwise step on `c` (`m × w`, row stride `ldc`) holding the plain product, for
    /// products made without the kernel.
    pub fn apply(&self, (m, w): (usize, usize), (c, ldc): (&mut [f32], usize)) {
        let rows = (0..m).map(|r| r * ldc..r * ldc + w);
        match *self {
            Epilogue::Accumulate(_) => {}
            Epilogue::Linear { bias, residual, .. } => {
                for row in rows {
                    if let Some(bias) = bias {
                        c[row.clone()].iter_mut().zip(bias).for_each(|(x, b)| *x += b);
                    }
                    if let Some(residual) = residual {
                        c[row.clone()].iter_mut().zip(&residual[row]).for_each(|(x, r)| *x += r);
                    }
                }
            }
            Epilogue::ExpShifted(shift) => {
                for (r, row) in rows.enumerate() {
                    super::math::exp_shifted_in_place(&mut c[row], shift[r]);
                }
            }
            Epilogue::ScaledShifted { p, shift } => {
                for (r, row) in rows.enumerate() {
                    for (x, &p) in c[row.clone()].iter_mut().zip(&p[row]) {
                        *x = p * (*x - shift[r]);
                    }
                }
            }
            Epilogue::Scaled { by, .. } => {
                for row in rows {
                    c[row.clone()].iter_mut().zip(&by[row]).for_each(|(x, b)| *x *= b);
                }
            }
        }
    }

    /// Checks that the step's per-row and per-element inputs cover an `m × w` product.
    fn assert_covers(&self, (m, w): (usize, usize), ldc: usize) {
        match *self {
            Epilogue::Accumulate(_) => {}
            Epilogue::Linear { bias, residual, .. } => {
                assert!(bias.is_none_or(|b| b.len() >= w), "a bias per column");
                assert!(
                    residual.is_none_or(|r| m == 0 || w == 0 || r.len() >= (m - 1) * ldc + w),
                    "residual as large as c"
                );
            }
            Epilogue::ExpShifted(shift) => assert!(shift.len() >= m, "a shift per row"),
            Epilogue::ScaledShifted { p, shift } => {
                assert!(shift.len() >= m, "a shift per row");
                assert!(m == 0 || w == 0 || p.len() >= (m - 1) * ldc + w, "p as large as c");
            }
            Epilogue::Scaled { by, .. } => {
                assert!(m == 0 || w == 0 || by.len() >= (m - 1) * ldc + w, "a factor per element of c");
            }
        }
    }
}

/// `c = a·b` put through `epilogue` (`beta·c + a·b` for [`Epilogue::Accumulate`]) for `a`
/// `m×k` (any strides), `b` `k×w` with contiguous rows, and `c` row-major `m×w` with row
/// stride `ldc`, leaving out what `skip` allows; with `beta = 0` the old contents of `c` are
/// never read. Returns `false`, computing nothing, where the kernel does not apply. Tiles of
/// [`ROWS`] rows.
pub(crate) fn product(
    shape: (usize, usize, usize),
    a: Matrix,
    b: Matrix,
    (skip, epilogue): (Skip, Epilogue),
    c: (&mut [f32], usize),
) -> bool {
    product_in_tiles_of::<ROWS>(shape, a, b, (skip, epilogue), c, None)
}

/// [`product`] on tiles of `R` rows (at most 15): taller tiles load `b` fewer times per
/// multiply-add, as long as their `2R` accumulators fit in the 32 registers. Where
/// `gelu_derivative` is given (laid out as `c`), each element `y` that the epilogue makes goes
/// to `c` as `GELU(y)` and to `gelu_derivative` as `GELU'(y)`: an MLP's hidden layer and the
/// factor its backward multiplies the gradient by, made as each tile is stored.
pub(crate) fn product_in_tiles_of<const R: usize>(
    (m, w, k): (usize, usize, usize),
    a: Matrix,
    b: Matrix,
    (skip, epilogue): (Skip, Epilogue),
    (c, ldc): (&mut [f32], usize),
    gelu_derivative: Option<&mut [f32]>,
) -> bool {
    const { assert!(R >= 1 && R <= 15, "a tile holds 2R accumulators of the 32 registers") };
    if !AVAILABLE || b.col_stride != 1 {
        return false;
    }
    if m == 0 || w == 0 {
        return true;
    }
    // Bounds of everything the kernel touches, checked here so the call below is sound.
    few_rows::assert_product_in_bounds((m, w, k), &a, &b, (c.len(), ldc));
    epilogue.assert_covers((m, w), ldc);
    skip.assert_covers(m);
    assert!(
        gelu_derivative.as_ref().is_none_or(|g| m == 0 || w == 0 || g.len() >= (m - 1) * ldc + w),
        "the derivatives as large as c"
    );
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: the bounds checks above put `a[r, t]` (r < m, t < k), `b[t, j]`, `c[r, j]` (j < w)
    // and the epilogue's `shift[r]`, `bias[j]`, and `p[r, j]`, `residual[r, j]`, `by[r, j]`
    // and `gelu_derivative[r, j]` (at `c`'s position) inside their slices, which is all the kernel
    // reads or writes (columns past `w` are masked off; absent terms are null and never
    // read); `c` and `gelu_derivative` are borrowed mutably, so nothing else aliases them.
    unsafe {
        let finish = match epilogue {
            Epilogue::Accumulate(beta) => avx512::Finish::Accumulate(beta),
            Epilogue::Linear { beta, bias, residual } => avx512::Finish::Linear(
                beta,
                bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                residual.map_or(std::ptr::null(), |r| r.as_ptr()),
            ),
            Epilogue::ExpShifted(shift) => avx512::Finish::ExpShifted(shift.as_ptr()),
            Epilogue::ScaledShifted { p, shift } => avx512::Finish::ScaledShifted(p.as_ptr(), shift.as_ptr()),
            Epilogue::Scaled { beta, by } => avx512::Finish::Scaled(beta, by.as_ptr()),
        };
        let gelu_derivative = gelu_derivative.map_or(std::ptr::null_mut(), |g| g.as_mut_ptr());
        avx512::product::<R>(
            (m, w),
            (a.data.as_ptr().add(a.offset), a.row_stride, a.col_stride),
            (b.data.as_ptr().add(b.offset), b.row_stride),
            (|rows| skip.bounds(rows, (w, k)), finish),
            (c.as_mut_ptr(), ldc, gelu_derivative),
        );
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "avx512f")))]
    let _ = gelu_derivative;
    true
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
mod avx512 {
    use std::arch::x86_64::*;

    use crate::cpu::math::sixteen::{exp_flushed, first, gelu_and_derivative};

    /// Columns per tile: two vectors of 16.
    const COLS: usize = 32;

    /// [`super::Epilogue`] with its slices as pointers to their first element, each moved to a
    /// tile's first row (and column) by [`Finish::at`].
    #[derive(Clone, Copy)]
    pub enum Finish {
        Accumulate(f32),
        /// `beta`, then the bias and the residual (null where absent).
        Linear(f32, *const f32, *const f32),
        ExpShifted(*const f32),
        ScaledShifted(*const f32, *const f32),
        /// `beta`, then the factors.
        Scaled(f32, *const f32),
    }

    impl Finish {
        /// The epilogue of the tile whose corner is `c[r0, j0]`.
        fn at(self, r0: usize, j0: usize, ldc: usize) -> Finish {
            match self {
                Finish::Accumulate(beta) => Finish::Accumulate(beta),
                Finish::Linear(beta, bias, residual) => {
                    // An absent term stays null.
                    let at = |p: *const f32, i: usize| if p.is_null() { p } else { p.wrapping_add(i) };
                    Finish::Linear(beta, at(bias, j0), at(residual, r0 * ldc + j0))
                }
                Finish::ExpShifted(shift) => Finish::ExpShifted(shift.wrapping_add(r0)),
                Finish::ScaledShifted(p, shift) => {
                    Finish::ScaledShifted(p.wrapping_add(r0 * ldc + j0), shift.wrapping_add(r0))
                }
                Finish::Scaled(beta, by) => Finish::Scaled(beta, by.wrapping_add(r0 * ldc + j0)),
            }
        }
    }

    /// See [`super::product_in_tiles_of`]; `bounds` gives each row tile `(r0, h)` the range
    /// of `t` it sums over and the column its panels stop before; where `gelu_derivative` is
    /// not null, `c` takes GELU of what the epilogue makes and `gelu_derivative` GELU' of it.
    ///
    /// # Safety
    /// For `r < m`, `j < w` and every `t` in the ranges `bounds` returns: `a + r·ars + t·acs` and
    /// `b + t·brs + j` are readable, `c + r·ldc + j` (and `gelu_derivative + r·ldc + j` where not
    /// null) is writable, and nothing else accesses `c` or `gelu_derivative` meanwhile.
    pub unsafe fn product<const R: usize>(
        (m, w): (usize, usize),
        (a, ars, acs): (*const f32, usize, usize),
        (b, brs): (*const f32, usize),
        (bounds, finish): (impl Fn((usize, usize)) -> (usize, usize, usize), Finish),
        (c, ldc, gelu_derivative): (*mut f32, usize, *mut f32),
    ) {
        for j0 in (0..w).step_by(COLS) {
            let cols = COLS.min(w - j0);
            let masks = (first(cols), first(cols.saturating_sub(16)));
            let b = (b.wrapping_add(j0), brs);
            let mut r0 = 0;
            while r0 < m {
                let h = R.min(m - r0);
                let (t0, t1, end) = bounds((r0, h));
                if j0 < end {
                    let (a, c) = (a.wrapping_add(r0 * ars), c.wrapping_add(r0 * ldc + j0));
                    // A null pointer stays null.
                    let g = if gelu_derivative.is_null() {
                        gelu_derivative
                    } else {
                        gelu_derivative.wrapping_add(r0 * ldc + j0)
                    };
                    let args = ((t0, t1), (a, ars, acs), b, masks, finish.at(r0, j0, ldc), (c, ldc, g));
                    // A full tile, or the last `m - r0 < R` rows: one tile of that height (a
                    // constant for each arm).
                    macro_rules! rows {
                        ($($h:literal)*) => {
                            match h {
                                $($h => tile::<$h>(args.0, args.1, args.2, args.3, args.4, args.5),)*
                                _ => unreachable!("R <= 15 rows"),
                            }
                        };
                    }
                    if h == R {
                        tile::<R>(args.0, args.1, args.2, args.3, args.4, args.5);
                    } else {
                        rows!(1 2 3 4 5 6 7 8 9 10 11 12 13 14);
                    }
                }
                r0 += h;
            }
        }
    }

    /// One tile of `R` rows by up to 32 columns (the lanes `masks` keeps).
    ///
    /// # Safety
    /// As [`product`], for the tile's rows and the columns its masks keep; masked-off lanes are
    /// neither read nor written (AVX-512 masked loads and stores suppress their accesses).
    #[inline(always)]
    unsafe fn tile<const R: usize>(
        (t0, t1): (usize, usize),
        (a, ars, acs): (*const f32, usize, usize),
        (b, brs): (*const f32, usize),
        (m0, m1): (__mmask16, __mmask16),
        finish: Finish,
        (c, ldc, gelu_derivative): (*mut f32, usize, *mut f32),
    ) {
        let mut lo = [_mm512_setzero_ps(); R];
        let mut hi = [_mm512_setzero_ps(); R];
        for t in t0..t1 {
            let bt = b.wrapping_add(t * brs);
            let b0 = _mm512_maskz_loadu_ps(m0, bt);
            let b1 = _mm512_maskz_loadu_ps(m1, bt.wrapping_add(16));
            let at = a.wrapping_add(t * acs);
            for r in 0..R {
                let x = _mm512_set1_ps(*at.add(r * ars));
                lo[r] = _mm512_fmadd_ps(x, b0, lo[r]);
                hi[r] = _mm512_fmadd_ps(x, b1, hi[r]);
            }
        }
        // A bias is the same for every row of the tile.
        let bias = match finish {
            Finish::Linear(_, bias, _) if !bias.is_null() => {
                (_mm512_maskz_loadu_ps(m0, bias), _mm512_maskz_loadu_ps(m1, bias.wrapping_add(16)))
            }
            _ => (_mm512_setzero_ps(), _mm512_setzero_ps()),
        };
        for r in 0..R {
            let cr = c.wrapping_add(r * ldc);
            let (mut x0, mut x1) = (lo[r], hi[r]);
            match finish {
                Finish::Accumulate(beta) | Finish::Linear(beta, ..) | Finish::Scaled(beta, _)
                    if beta != 0.0 =>
                {
                    let scale = _mm512_set1_ps(beta);
                    x0 = _mm512_fmadd_ps(scale, _mm512_maskz_loadu_ps(m0, cr), x0);
                    x1 = _mm512_fmadd_ps(scale, _mm512_maskz_loadu_ps(m1, cr.wrapping_add(16)), x1);
                }
                Finish::ExpShifted(shift) => {
                    let s = _mm512_set1_ps(*shift.add(r));
                    (x0, x1) = (exp_flushed(_mm512_sub_ps(x0, s)), exp_flushed(_mm512_sub_ps(x1, s)));
                }
                Finish::Accumulate(_) | Finish::Linear(..) | Finish::Scaled(..) => {}
                Finish::ScaledShifted(p, shift) => {
                    let (s, pr) = (_mm512_set1_ps(*shift.add(r)), p.wrapping_add(r * ldc));
                    x0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, pr), _mm512_sub_ps(x0, s));
                    x1 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m1, pr.wrapping_add(16)), _mm512_sub_ps(x1, s));
                }
            }
            if let Finish::Scaled(_, by) = finish {
                let br = by.wrapping_add(r * ldc);
                let (b0, b1) =
                    (_mm512_maskz_loadu_ps(m0, br), _mm512_maskz_loadu_ps(m1, br.wrapping_add(16)));
                (x0, x1) = (_mm512_mul_ps(x0, b0), _mm512_mul_ps(x1, b1));
            }
            if let Finish::Linear(_, b, residual) = finish {
                if !b.is_null() {
                    (x0, x1) = (_mm512_add_ps(x0, bias.0), _mm512_add_ps(x1, bias.1));
                }
                if !residual.is_null() {
                    let rr = residual.wrapping_add(r * ldc);
                    x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, rr));
                    x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, rr.wrapping_add(16)));
                }
            }
            if !gelu_derivative.is_null() {
                let ((g0, d0), (g1, d1)) = (gelu_and_derivative(x0), gelu_and_derivative(x1));
                (x0, x1) = (g0, g1);
                let dr = gelu_derivative.wrapping_add(r * ldc);
                _mm512_mask_storeu_ps(dr, m0, d0);
                _mm512_mask_storeu_ps(dr.wrapping_add(16), m1, d1);
            }
            _mm512_mask_storeu_ps(cr, m0, x0);
            _mm512_mask_storeu_ps(cr.wrapping_add(16), m1, x1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a staircase lets a product leave out changes nothing it computes: sums that skip
    /// the zero part of `a`'s rows equal the full sums, and rows limited to their first columns
    /// get those columns right (the panels past a tile's largest end are left as they were).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn skipping_a_staircase_changes_nothing() {
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 500.0 - 1.0;
        let (m, w, k) = (37, 70, 50);
        let ends: Vec<usize> = (0..m).map(|r| (r * k / m + 3).min(k)).collect();
        let starts: Vec<usize> = (0..m).map(|r| r * k / (2 * m)).collect();
        let b_data: Vec<f32> = (0..k * w).map(|i| value(i + 1)).collect();
        let b = Matrix::contiguous(&b_data, w);
        let full = |a: Matrix| {
            let mut c = vec![0.0; m * w];
            assert!(product((m, w, k), a, b, (Skip::Nothing, Epilogue::Accumulate(0.0)), (&mut c, w)));
            c
        };
        for (skip, zero) in [
            (Skip::InnerFrom(&ends), &|r: usize, t: usize| t >= ends[r]),
            (Skip::InnerBefore(&starts), &|r: usize, t: usize| t < starts[r]),
        ] as [(Skip, &dyn Fn(usize, usize) -> bool); 2]
        {
            let a_data: Vec<f32> =
                (0..m * k).map(|i| if zero(i / k, i % k) { 0.0 } else { value(i) }).collect();
            let a = Matrix::contiguous(&a_data, k);
            let mut c = vec![0.0; m * w];
            assert!(product((m, w, k), a, b, (skip, Epilogue::Accumulate(0.0)), (&mut c, w)));
            assert_eq!(c, full(a));
        }
        let a_data: Vec<f32> = (0..m * k).map(value).collect();
        let a = Matrix::contiguous(&a_data, k);
        let column_ends: Vec<usize> = (0..m).map(|r| (r * w / m + 1).min(w)).collect();
        let mut c = vec![f32::NAN; m * w];
        assert!(product(
            (m, w, k),
            a,
            b,
            (Skip::ColumnsFrom(&column_ends), Epilogue::Accumulate(0.0)),
            (&mut c, w)
        ));
        let want = full(a);
        for r in 0..m {
            let tile = r / ROWS * ROWS..(r / ROWS * ROWS + ROWS).min(m);
            let panels_end = column_ends[tile].iter().max().unwrap().next_multiple_of(32).min(w);
            for j in 0..w {
                if j < column_ends[r] {
                    assert_eq!(c[r * w + j], want[r * w + j], "[{r},{j}]");
                } else if j >= panels_end {
                    assert!(c[r * w + j].is_nan(), "[{r},{j}] past the tile's panels was written");
                }
            }
        }
    }

    /// Each epilogue in the kernel gives bit for bit what the kernel's plain product (with the
    /// epilogue's `beta`) followed by [`Epilogue::apply`] (the fallback's step) gives, on full
    /// and partial tiles.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn epilogues_match_the_product_then_the_step() {
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 250.0 - 2.0;
        for (m, w, k) in [(13, 47, 9), (128, 256, 32), (5, 16, 3), (25, 33, 64)] {
            let a_data: Vec<f32> = (0..m * k).map(value).collect();
            let b_data: Vec<f32> = (0..k * w).map(|i| value(i + 3)).collect();
            let (a, b) = (Matrix::contiguous(&a_data, k), Matrix::contiguous(&b_data, w));
            let ldc = w + 2;
            let shift: Vec<f32> = (0..m).map(|i| value(i + 5) * 3.0).collect();
            let p: Vec<f32> = (0..m * ldc).map(|i| value(i + 9).abs()).collect();
            let bias: Vec<f32> = (0..w).map(|i| value(i + 13)).collect();
            let by: Vec<f32> = (0..m * ldc).map(|i| value(i + 17)).collect();
            for epilogue in [
                Epilogue::Scaled { beta: 0.0, by: &by },
                Epilogue::Scaled { beta: 1.0, by: &by },
                Epilogue::ExpShifted(&shift),
                Epilogue::ScaledShifted { p: &p, shift: &shift },
                Epilogue::Linear { beta: 0.0, bias: Some(&bias), residual: None },
                Epilogue::Linear { beta: 1.0, bias: Some(&bias), residual: None },
                Epilogue::Linear { beta: 0.0, bias: None, residual: Some(&p) },
                Epilogue::Linear { beta: 1.0, bias: Some(&bias), residual: Some(&p) },
            ] {
                let mut fused = vec![7.0; m * ldc];
                assert!(product((m, w, k), a, b, (Skip::Nothing, epilogue), (&mut fused, ldc)));
                let mut plain = vec![7.0; m * ldc];
                assert!(product(
                    (m, w, k),
                    a,
                    b,
                    (Skip::Nothing, Epilogue::Accumulate(epilogue.beta())),
                    (&mut plain, ldc)
                ));
                epilogue.apply((m, w), (&mut plain, ldc));
                for (i, (x, y)) in fused.iter().zip(&plain).enumerate() {
                    assert_eq!(x.to_bits(), y.to_bits(), "({m},{w},{k}) element {i}: {x} vs {y}");
                }
            }
        }
    }

    /// GELU and its derivative of what a product would store (here with a bias), stored in its
    /// place and beside it by the kernel, give the bits of GELU and its derivative applied to
    /// the stored product, on full and partial tiles, over both branches of GELU's erf, and
    /// touch nothing past the product's columns.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn gelu_and_its_derivative_replace_the_output() {
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 250.0 - 2.0;
        for (m, w, k) in [(13, 47, 9), (14, 64, 32), (5, 16, 3), (29, 33, 64)] {
            let a_data: Vec<f32> = (0..m * k).map(value).collect();
            let b_data: Vec<f32> = (0..k * w).map(|i| value(i + 3)).collect();
            let (a, b) = (Matrix::contiguous(&a_data, k), Matrix::contiguous(&b_data, w));
            let ldc = w + 2;
            let bias: Vec<f32> = (0..w).map(|i| value(i + 13)).collect();
            let epilogue = Epilogue::Linear { beta: 0.0, bias: Some(&bias), residual: None };
            let (mut c, mut derivatives) = (vec![7.0; m * ldc], vec![7.0; m * ldc]);
            let shape = (m, w, k);
            let with_gelu = Some(&mut derivatives[..]);
            assert!(product_in_tiles_of::<14>(
                shape,
                a,
                b,
                (Skip::Nothing, epilogue),
                (&mut c, ldc),
                with_gelu
            ));
            let mut plain = vec![7.0; m * ldc];
            assert!(product_in_tiles_of::<14>(
                shape,
                a,
                b,
                (Skip::Nothing, epilogue),
                (&mut plain, ldc),
                None
            ));
            let (mut gelu, mut derivative) = (vec![0.0; m * ldc], vec![0.0; m * ldc]);
            super::super::math::map(&plain, &mut gelu, super::super::math::gelu);
            super::super::math::map(&plain, &mut derivative, super::super::math::gelu_derivative);
            for (got, want, name) in [(&c, &gelu, "GELU"), (&derivatives, &derivative, "GELU'")] {
                for (i, (x, y)) in got.iter().zip(want).enumerate() {
                    let y = if i % ldc < w { *y } else { 7.0 };
                    assert_eq!(x.to_bits(), y.to_bits(), "{name} ({m},{w},{k}) element {i}: {x} vs {y}");
                }
            }
        }
    }

    /// Every shape class (full and partial row tiles, full and masked column tiles, empty inner
    /// dimension, transposed and strided `a`, `beta` 0 and 1), on tiles of 12 and of 14 rows,
    /// against the triple loop.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn tiles_match_the_triple_loop() {
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 500.0 - 1.0;
        let shapes =
            [(8, 32, 5), (13, 47, 9), (1, 1, 1), (17, 16, 0), (7, 64, 33), (128, 256, 32), (35, 40, 20)];
        for ((m, w, k), tall) in shapes.into_iter().flat_map(|s| [(s, false), (s, true)]) {
            for transposed in [false, true] {
                for beta in [0.0, 1.0] {
                    // `a` m×k, stored either row-major with a gap or as the transpose of k×m.
                    let a_data: Vec<f32> = (0..(m + 1) * (k + 3)).map(value).collect();
                    let a = if transposed {
                        Matrix { data: &a_data, offset: 1, row_stride: 1, col_stride: m + 1 }
                    } else {
                        Matrix { data: &a_data, offset: 2, row_stride: k + 3, col_stride: 1 }
                    };
                    let b_data: Vec<f32> = (0..k * (w + 2) + 1).map(|i| value(i + 7)).collect();
                    let b = Matrix { data: &b_data, offset: 1, row_stride: w + 2, col_stride: 1 };
                    let ldc = w + 3;
                    let mut c: Vec<f32> = (0..m * ldc).map(|i| value(i + 11)).collect();
                    let before = c.clone();
                    let done = if tall {
                        product_in_tiles_of::<14>(
                            (m, w, k),
                            a,
                            b,
                            (Skip::Nothing, Epilogue::Accumulate(beta)),
                            (&mut c, ldc),
                            None,
                        )
                    } else {
                        product((m, w, k), a, b, (Skip::Nothing, Epilogue::Accumulate(beta)), (&mut c, ldc))
                    };
                    assert!(done);
                    for r in 0..m {
                        for j in 0..ldc {
                            let got = c[r * ldc + j];
                            if j >= w {
                                assert_eq!(got, before[r * ldc + j], "column {j} past w written");
                                continue;
                            }
                            let at = |x: &Matrix, r: usize, c: usize| {
                                x.data[x.offset + r * x.row_stride + c * x.col_stride]
                            };
                            let want: f64 =
                                (0..k).map(|t| at(&a, r, t) as f64 * at(&b, t, j) as f64).sum::<f64>()
                                    + beta as f64 * before[r * ldc + j] as f64;
                            assert!(
                                (got as f64 - want).abs() < 1e-5 * (1.0 + k as f64),
                                "({m},{w},{k}) [{r},{j}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
