//! Matrix products with very few rows (`m ≤ FEW_ROWS`), without packing.
//!
//! `sgemm` copies ("packs") the right operand into cache-sized panels before multiplying. That
//! pays off when each panel is reused by many rows of the left operand; with one row (a cached
//! generation step: one position through every projection) the packing costs as much as the
//! product itself, and most of a step went there. Here each output element is computed
//! straight from the operands:
//!
//! * right operand stored by columns (a weight `W` `[out, in]` read as `Wᵀ`, keys read as
//!   `Kᵀ`): `c[r, j] = a[r, :] · b[:, j]`, a dot product of two contiguous runs;
//! * right operand stored by rows (values `V`): `c[r, :] += a[r, p] · b[p, :]` over `p`, a
//!   scaled add of contiguous rows;
//! * anything else: the plain triple loop.
//!
//! Sums run in a different order than `sgemm`'s, so results agree with it to rounding.

use wide::f32x8;

/// Products whose left operand has at most this many rows take this path.
pub const FEW_ROWS: usize = 4;

/// A strided matrix inside a slice: element `(r, c)` at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> Strided<'a> {
    /// The same matrix transposed (a view: strides swapped).
    pub fn t(self) -> Self {
        Strided { row_stride: self.col_stride, col_stride: self.row_stride, ..self }
    }
    /// A row-major matrix with `cols` columns filling `data`.
    pub fn contiguous(data: &'a [f32], cols: usize) -> Self {
        Strided { data, offset: 0, row_stride: cols, col_stride: 1 }
    }
    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[self.offset + r * self.row_stride + c * self.col_stride]
    }
    /// Elements `from..from + len` of row `r` (the caller checked `col_stride == 1`).
    fn row(&self, r: usize, from: usize, len: usize) -> &[f32] {
        let start = self.offset + r * self.row_stride + from;
        &self.data[start..start + len]
    }
    /// The first `len` elements of column `c` (the caller checked `row_stride == 1`).
    fn col(&self, c: usize, len: usize) -> &[f32] {
        let start = self.offset + c * self.col_stride;
        &self.data[start..start + len]
    }
}

/// Asserts that a product `c = a·b` (`a` `m×k`, `b` `k×n`, `c` row-major `m×n` with row stride
/// `ldc` in a slice of `c_len`) reads and writes only inside its slices: what a kernel that
/// works through raw pointers (`sgemm`, the attention's tiles) checks before its `unsafe` call.
pub(crate) fn assert_product_in_bounds(
    (m, n, k): (usize, usize, usize),
    a: &Strided,
    b: &Strided,
    (c_len, ldc): (usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    let last =
        |x: &Strided, r: usize, cols: usize| x.offset + (r - 1) * x.row_stride + (cols - 1) * x.col_stride;
    assert!(
        k == 0 || (last(a, m, k) < a.data.len() && last(b, k, n) < b.data.len()),
        "product operand out of bounds"
    );
    assert!(n <= ldc && (m - 1) * ldc + n <= c_len, "product output out of bounds");
}

/// `c[r, j] = beta·c[r, j] + Σ_p a[r, p]·b[p, j0 + j]` for `a` `m×k`, `b` `k×(j0 + n)`, and
/// `c` row-major `m×n` with row stride `ldc` (the caller may split the columns across threads,
/// handing each its `j0`). With `beta = 0` the old contents of `c` are never read.
pub(crate) fn product(
    (m, k, n): (usize, usize, usize),
    a: Strided,
    b: Strided,
    beta: f32,
    (j0, c, ldc): (usize, &mut [f32], usize),
) {
    for r in 0..m {
        let out = &mut c[r * ldc..r * ldc + n];
        if a.col_stride == 1 && b.row_stride == 1 {
            let x = a.row(r, 0, k);
            for (j, o) in out.iter_mut().enumerate() {
                let s = dot(x, b.col(j0 + j, k));
                *o = if beta == 0.0 { s } else { beta * *o + s };
            }
        } else if b.col_stride == 1 {
            if beta == 0.0 {
                out.fill(0.0);
            } else if beta != 1.0 {
                out.iter_mut().for_each(|o| *o *= beta);
            }
            for p in 0..k {
                axpy(a.at(r, p), b.row(p, j0, n), out);
            }
        } else {
            for (j, o) in out.iter_mut().enumerate() {
                let s: f32 = (0..k).map(|p| a.at(r, p) * b.at(p, j0 + j)).sum();
                *o = if beta == 0.0 { s } else { beta * *o + s };
            }
        }
    }
}

/// `Σ x[i]·y[i]`, eight lanes at a time with two accumulators.
fn dot(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len().min(y.len());
    let (xs, ys) = (x[..n].chunks_exact(16), y[..n].chunks_exact(16));
    let (xr, yr) = (xs.remainder(), ys.remainder());
    let (mut s0, mut s1) = (f32x8::ZERO, f32x8::ZERO);
    for (a, b) in xs.zip(ys) {
        let lanes = |v: &[f32]| f32x8::from(<[f32; 8]>::try_from(v).expect("eight lanes"));
        s0 = lanes(&a[..8]).mul_add(lanes(&b[..8]), s0);
        s1 = lanes(&a[8..]).mul_add(lanes(&b[8..]), s1);
    }
    (s0 + s1).reduce_add() + xr.iter().zip(yr).map(|(a, b)| a * b).sum::<f32>()
}

/// `out[i] += alpha·x[i]`.
fn axpy(alpha: f32, x: &[f32], out: &mut [f32]) {
    let a = f32x8::splat(alpha);
    let mut xs = x.chunks_exact(8);
    let mut os = out.chunks_exact_mut(8);
    for (xv, ov) in (&mut xs).zip(&mut os) {
        let v = f32x8::from(<[f32; 8]>::try_from(xv).expect("eight lanes"));
        let o = f32x8::from(<[f32; 8]>::try_from(&*ov).expect("eight lanes"));
        ov.copy_from_slice(&v.mul_add(a, o).to_array());
    }
    for (o, v) in os.into_remainder().iter_mut().zip(xs.remainder()) {
        *o += alpha * v;
    }
}
