//! Transcendental functions on eight lanes at once (`wide::f32x8`, AVX when the build has it).
//!
//! Every elementwise kernel maps slices through these functions, eight elements at a time; a
//! ragged tail is padded into one more vector. Strided inputs are gathered into a buffer
//! first, so a result never depends on the layout its input had.
//!
//! - `exp`: Cody–Waite reduction `x = r·ln2 + f` with `|f| ≤ ln2/2`, a degree-7 polynomial for
//!   `e^f` (the Cephes `expf` coefficients), and `2^r` built from exponent bits in two halves so
//!   that results down to the subnormal range and up to overflow (`+inf`) come out right.
//! - `tanh`: for `|x| < 0.625` the odd Cephes polynomial, else `1 - 2/(e^{2|x|}+1)` with the sign.
//! - `erf`: for `|x| < 1` the Cephes odd polynomial in `x`, else Abramowitz–Stegun 7.1.26
//!   (absolute error below 1.5e-7, which is where `erf` is within a few ulp of ±1).
//! - `gelu(x) = x·Φ(x) = ½x(1 + erf(x/√2))`, `gelu'(x) = Φ(x) + x·φ(x)`,
//!   `φ(x) = e^{-x²/2}/√(2π)`.

use wide::{f32x8, CmpLt};

const LANES: usize = 8;

/// `dst[i] = f(src[i])`, eight lanes at a time.
#[inline(always)]
pub(crate) fn map(src: &[f32], dst: &mut [f32], f: impl Fn(f32x8) -> f32x8) {
    debug_assert_eq!(src.len(), dst.len());
    let mut s = src.chunks_exact(LANES);
    let mut d = dst.chunks_exact_mut(LANES);
    for (s, d) in (&mut s).zip(&mut d) {
        let x = f32x8::from(<[f32; LANES]>::try_from(s).unwrap());
        d.copy_from_slice(&f(x).to_array());
    }
    let (s, d) = (s.remainder(), d.into_remainder());
    if !s.is_empty() {
        let mut buf = [0.0; LANES];
        buf[..s.len()].copy_from_slice(s);
        let y = f(f32x8::from(buf)).to_array();
        d.copy_from_slice(&y[..d.len()]);
    }
}

/// `dst[i] = f(a[i], b[i])`, eight lanes at a time.
#[inline(always)]
pub(crate) fn map2(a: &[f32], b: &[f32], dst: &mut [f32], f: impl Fn(f32x8, f32x8) -> f32x8) {
    debug_assert!(a.len() == dst.len() && b.len() == dst.len());
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    let mut d = dst.chunks_exact_mut(LANES);
    for ((x, y), d) in (&mut ca).zip(&mut cb).zip(&mut d) {
        let x = f32x8::from(<[f32; LANES]>::try_from(x).unwrap());
        let y = f32x8::from(<[f32; LANES]>::try_from(y).unwrap());
        d.copy_from_slice(&f(x, y).to_array());
    }
    let (x, y, d) = (ca.remainder(), cb.remainder(), d.into_remainder());
    if !x.is_empty() {
        let (mut bx, mut by) = ([0.0; LANES], [0.0; LANES]);
        bx[..x.len()].copy_from_slice(x);
        by[..y.len()].copy_from_slice(y);
        let r = f(f32x8::from(bx), f32x8::from(by)).to_array();
        d.copy_from_slice(&r[..d.len()]);
    }
}

/// `2^n` for integral `n` in `[-126, 127]` (a float whose exponent bits are `n + 127`).
#[inline(always)]
fn pow2i(n: f32x8) -> f32x8 {
    let bits = (n + f32x8::splat(127.0)).round_int() << 23;
    bytemuck::cast(bits)
}

/// `e^x`; `+inf` above ~88.72, subnormal then `0` below ~-87.3, NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32x8) -> f32x8 {
    let ln2_hi = f32x8::splat(0.693_359_4);
    let ln2_lo = f32x8::splat(-2.121_944_4e-4);
    let xc = x.max(f32x8::splat(-104.0)).min(f32x8::splat(89.0));
    let r = (xc * f32x8::splat(std::f32::consts::LOG2_E)).round();
    let f = (-r).mul_add(ln2_hi, xc);
    let f = (-r).mul_add(ln2_lo, f);
    let p = f32x8::splat(1.987_569_1e-4);
    let p = p.mul_add(f, f32x8::splat(1.398_199_9e-3));
    let p = p.mul_add(f, f32x8::splat(8.333_452e-3));
    let p = p.mul_add(f, f32x8::splat(4.166_579_6e-2));
    let p = p.mul_add(f, f32x8::splat(1.666_666_5e-1));
    let p = p.mul_add(f, f32x8::splat(0.5));
    let ef = (p * f).mul_add(f, f) + f32x8::ONE;
    // 2^r as 2^h * 2^(r-h), each factor in range, so subnormal results and overflow are right.
    let h = (r * f32x8::splat(0.5)).floor();
    let y = ef * pow2i(h) * pow2i(r - h);
    x.is_nan().blend(x, y)
}

/// `ln 2⁻¹²⁶` rounded up: `e^x` is a normal f32 for `x` from here on.
pub(crate) const LEAST_NORMAL_EXPONENT: f32 = -87.336_54;

/// [`exp`] with the results that would be subnormal flushed to zero (see
/// [`sixteen::exp_flushed`], which gives the same bits).
#[inline(always)]
pub(crate) fn exp_flushed(x: f32x8) -> f32x8 {
    x.cmp_lt(f32x8::splat(LEAST_NORMAL_EXPONENT)).blend(f32x8::ZERO, exp(x))
}

/// `tanh(x)` to a few ulp.
#[inline(always)]
pub(crate) fn tanh(x: f32x8) -> f32x8 {
    let ax = x.abs();
    // Small |x|: x + x^3 P(x^2).
    let z = x * x;
    let p = f32x8::splat(-5.704_988_7e-3);
    let p = p.mul_add(z, f32x8::splat(2.063_909e-2));
    let p = p.mul_add(z, f32x8::splat(-5.373_971_6e-2));
    let p = p.mul_add(z, f32x8::splat(1.333_144_2e-1));
    let p = p.mul_add(z, f32x8::splat(-3.333_328e-1));
    let small = (p * z).mul_add(x, x);
    // Large |x|: sign(x) (1 - 2 / (e^{2|x|} + 1)).
    let e = exp(ax + ax);
    let big = f32x8::ONE - f32x8::splat(2.0) / (e + f32x8::ONE);
    let big = big.copysign(x);
    ax.cmp_lt(f32x8::splat(0.625)).blend(small, big)
}

/// `erf(x)`.
#[inline(always)]
pub(crate) fn erf(x: f32x8) -> f32x8 {
    erf_and_gaussian(x).0
}

/// `erf(x)` and `e^{-x²}`, which its large-|x| branch computes anyway (GELU's derivative needs
/// both: one exponential instead of two).
#[inline(always)]
pub(crate) fn erf_and_gaussian(x: f32x8) -> (f32x8, f32x8) {
    let ax = x.abs();
    // |x| < 1: x * T(x^2) (Cephes erff).
    let z = x * x;
    let t = f32x8::splat(7.853_861_4e-5);
    let t = t.mul_add(z, f32x8::splat(-8.010_193_6e-4));
    let t = t.mul_add(z, f32x8::splat(5.188_327_7e-3));
    let t = t.mul_add(z, f32x8::splat(-2.685_381_2e-2));
    let t = t.mul_add(z, f32x8::splat(1.128_358_5e-1));
    let t = t.mul_add(z, f32x8::splat(-3.761_262_6e-1));
    let t = t.mul_add(z, f32x8::splat(std::f32::consts::FRAC_2_SQRT_PI));
    let small = x * t;
    // |x| >= 1: 1 - poly(s) e^{-x^2}, s = 1/(1 + p|x|) (Abramowitz & Stegun 7.1.26).
    let s = f32x8::ONE / f32x8::splat(0.327_591_1).mul_add(ax, f32x8::ONE);
    let q = f32x8::splat(1.061_405_4);
    let q = q.mul_add(s, f32x8::splat(-1.453_152_1));
    let q = q.mul_add(s, f32x8::splat(1.421_413_8));
    let q = q.mul_add(s, f32x8::splat(-0.284_496_72));
    let q = q.mul_add(s, f32x8::splat(0.254_829_6));
    let gaussian = exp(-z);
    let big = (f32x8::ONE - q * s * gaussian).copysign(x);
    (ax.cmp_lt(f32x8::ONE).blend(small, big), gaussian)
}

/// `1 / (1 + e^{-x})`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32x8) -> f32x8 {
    f32x8::ONE / (f32x8::ONE + exp(-x))
}

/// Exact GELU, `½ x (1 + erf(x/√2))`.
#[inline(always)]
pub(crate) fn gelu(x: f32x8) -> f32x8 {
    let half = f32x8::splat(0.5);
    half * x * (f32x8::ONE + erf(x * f32x8::splat(std::f32::consts::FRAC_1_SQRT_2)))
}

/// `d/dx gelu(x) = Φ(x) + x φ(x)`.
#[inline(always)]
pub(crate) fn gelu_derivative(x: f32x8) -> f32x8 {
    let half = f32x8::splat(0.5);
    // With u = x/√2: Φ(x) = ½(1 + erf u) and φ(x) = e^{-u²}/√(2π).
    let (erf, gaussian) = erf_and_gaussian(x * f32x8::splat(std::f32::consts::FRAC_1_SQRT_2));
    let cdf = half * (f32x8::ONE + erf);
    // 1/√(2π)
    let pdf = f32x8::splat(0.398_942_3) * gaussian;
    x.mul_add(pdf, cdf)
}

/// Natural log (`wide`'s, which handles 0, negatives, infinities and NaN).
#[inline(always)]
pub(crate) fn ln(x: f32x8) -> f32x8 {
    x.ln()
}

/// Sum of a slice with eight independent lanes (and four vectors in flight), then the lanes.
#[inline]
pub(crate) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [f32x8::ZERO; 4];
    let mut chunks = xs.chunks_exact(4 * LANES);
    for c in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            *a += f32x8::from(<[f32; LANES]>::try_from(&c[k * LANES..(k + 1) * LANES]).unwrap());
        }
    }
    let mut total = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    let rest = chunks.remainder();
    let mut tail = rest.chunks_exact(LANES);
    for c in &mut tail {
        total += f32x8::from(<[f32; LANES]>::try_from(c).unwrap());
    }
    let mut s = total.reduce_add();
    for &x in tail.remainder() {
        s += x;
    }
    s
}

/// Maximum of a slice (NaN if any element is NaN; `-inf` for an empty slice).
#[inline]
pub(crate) fn max(xs: &[f32]) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: the build enables AVX-512 (the cfg), so the machine it runs on has it.
    return unsafe { sixteen::max(xs) };
    #[allow(unreachable_code)]
    extremum(xs, f32::NEG_INFINITY, |a, b| a.max(b), f32::max)
}

/// Minimum of a slice (NaN if any element is NaN; `+inf` for an empty slice).
#[inline]
pub(crate) fn min(xs: &[f32]) -> f32 {
    extremum(xs, f32::INFINITY, |a, b| a.min(b), f32::min)
}

/// Folds a slice with `lanes` eight at a time and `scalar` for the rest; any NaN wins.
#[inline(always)]
fn extremum(
    xs: &[f32],
    init: f32,
    lanes: impl Fn(f32x8, f32x8) -> f32x8,
    scalar: fn(f32, f32) -> f32,
) -> f32 {
    let mut acc = f32x8::splat(init);
    let mut nan = false;
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        let v = f32x8::from(<[f32; LANES]>::try_from(c).unwrap());
        nan |= v.is_nan().any();
        acc = lanes(acc, v);
    }
    let mut m = acc.to_array().into_iter().fold(init, scalar);
    for &x in chunks.remainder() {
        nan |= x.is_nan();
        m = scalar(m, x);
    }
    if nan {
        f32::NAN
    } else {
        m
    }
}

/// `dst[i] = op(src[i])` on sixteen lanes, for the ops that have a sixteen-lane kernel (`exp`,
/// GELU and its derivative), the same bits as the eight-lane kernels; `false` for the others, or
/// without AVX-512.
pub(crate) fn map_sixteen(op: crate::backend::UnaryOp, src: &[f32], dst: &mut [f32]) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: the build enables AVX-512 (the cfg), so the machine it runs on has it.
    return unsafe { sixteen::map_op(op, src, dst) };
    #[allow(unreachable_code)]
    {
        let _ = (op, src, dst);
        false
    }
}

/// `dst[i] = op(a[i], b[i])` on sixteen lanes, for the binary ops that have a sixteen-lane kernel
/// (GELU's backward); `false` for the others, or without AVX-512.
pub(crate) fn map2_sixteen(op: crate::backend::BinaryOp, a: &[f32], b: &[f32], dst: &mut [f32]) -> bool {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: the build enables AVX-512 (the cfg), so the machine it runs on has it.
    return unsafe { sixteen::map2_op(op, a, b, dst) };
    #[allow(unreachable_code)]
    {
        let _ = (op, a, b, dst);
        false
    }
}

/// `Σ e^{x - shift}` over a slice, writing `e^{x - shift}` into `out` when given.
#[inline]
pub(crate) fn sum_exp_shifted(xs: &[f32], shift: f32, out: Option<&mut [f32]>) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: the build enables AVX-512 (the cfg), so the machine it runs on has it.
    return unsafe { sixteen::sum_exp_shifted(xs, shift, out) };
    #[allow(unreachable_code)]
    let s = f32x8::splat(shift);
    match out {
        Some(out) => {
            map(xs, out, |v| exp_flushed(v - s));
            sum(out)
        }
        None => {
            let mut acc = f32x8::ZERO;
            let mut chunks = xs.chunks_exact(LANES);
            for c in &mut chunks {
                acc += exp_flushed(f32x8::from(<[f32; LANES]>::try_from(c).unwrap()) - s);
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let mut buf = [f32::NEG_INFINITY; LANES];
                buf[..rest.len()].copy_from_slice(rest);
                acc += exp_flushed(f32x8::from(buf) - s);
            }
            acc.reduce_add()
        }
    }
}

/// `x ← e^{x − shift}` over a slice, returning the sum of the results (the same numbers as
/// [`sum_exp_shifted`] writing into another slice, without a second block of memory).
#[inline]
pub(crate) fn exp_shifted_in_place(xs: &mut [f32], shift: f32) -> f32 {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    // SAFETY: the build enables AVX-512 (the cfg), so the machine it runs on has it.
    return unsafe { sixteen::exp_shifted_in_place(xs, shift) };
    #[allow(unreachable_code)]
    let s = f32x8::splat(shift);
    let mut chunks = xs.chunks_exact_mut(LANES);
    for c in &mut chunks {
        let y = exp_flushed(f32x8::from(<[f32; LANES]>::try_from(&*c).unwrap()) - s);
        c.copy_from_slice(&y.to_array());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut buf = [0.0; LANES];
        buf[..rest.len()].copy_from_slice(rest);
        let n = rest.len();
        rest.copy_from_slice(&(exp_flushed(f32x8::from(buf) - s)).to_array()[..n]);
    }
    sum(xs)
}

/// The softmax's row passes on sixteen lanes (AVX-512), where the build has them: the
/// attention and softmax spend most of their time outside products here. [`sixteen::exp`] does
/// [`exp`]'s operations in the same order, so each element comes out bit for bit the same; sums
/// and maxima are the same up to the order of their terms.
#[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
pub(crate) mod sixteen {
    use std::arch::x86_64::*;

    const LANES: usize = 16;
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

    /// [`super::exp`] on sixteen lanes. The clamp's operands are ordered so that a NaN `x`
    /// passes through (`max`/`min` return their second operand when either is NaN), and
    /// `scalef` multiplies by `2^r` with one rounding, which is what the eight-lane version's
    /// two exact halves come to: fifteen instructions where that takes about thirty.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp(x: __m512) -> __m512 {
        let (ef, r) = exp_parts(x);
        _mm512_scalef_ps(ef, r)
    }

    /// `e^x = ef · 2^r` for `x` clamped to `[−104, 89]`: `(ef, r)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp_parts(x: __m512) -> (__m512, __m512) {
        let splat = _mm512_set1_ps;
        let xc = _mm512_min_ps(splat(89.0), _mm512_max_ps(splat(-104.0), x));
        let r = _mm512_roundscale_ps::<NEAREST>(_mm512_mul_ps(xc, splat(std::f32::consts::LOG2_E)));
        let f = _mm512_fnmadd_ps(r, splat(0.693_359_4), xc);
        let f = _mm512_fnmadd_ps(r, splat(-2.121_944_4e-4), f);
        let p = splat(1.987_569_1e-4);
        let p = _mm512_fmadd_ps(p, f, splat(1.398_199_9e-3));
        let p = _mm512_fmadd_ps(p, f, splat(8.333_452e-3));
        let p = _mm512_fmadd_ps(p, f, splat(4.166_579_6e-2));
        let p = _mm512_fmadd_ps(p, f, splat(1.666_666_5e-1));
        let p = _mm512_fmadd_ps(p, f, splat(0.5));
        let ef = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, f), f, f), splat(1.0));
        (ef, r)
    }

    /// [`exp`] with the results that would be subnormal flushed to zero: lanes where `x` lies
    /// below −87.33654 (the log of the least normal f32, 2⁻¹²⁶) give 0. The softmax's
    /// weights use it: a weight that small is below one part in 10³⁸ of its row's largest, and
    /// making a subnormal (or an underflow) took a microcode assist, 17 times the time of a
    /// normal vector, for every score that far below its row's maximum.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp_flushed(x: __m512) -> __m512 {
        // Not less than the bound (NaN included: it passes through).
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(super::LEAST_NORMAL_EXPONENT));
        let (ef, r) = exp_parts(x);
        _mm512_maskz_scalef_ps(keep, ef, r)
    }

    /// `|x|`, on the bits.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn abs(x: __m512) -> __m512 {
        _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(i32::MAX)))
    }

    /// `x` with the sign of `sign`, on the bits.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn copysign(x: __m512, sign: __m512) -> __m512 {
        let bits = _mm512_set1_epi32(i32::MIN);
        let magnitude = _mm512_andnot_si512(bits, _mm512_castps_si512(x));
        _mm512_castsi512_ps(_mm512_or_si512(magnitude, _mm512_and_si512(bits, _mm512_castps_si512(sign))))
    }

    /// [`super::erf_and_gaussian`] on sixteen lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn erf_and_gaussian(x: __m512) -> (__m512, __m512) {
        let splat = _mm512_set1_ps;
        let one = splat(1.0);
        let ax = abs(x);
        let z = _mm512_mul_ps(x, x);
        let t = splat(7.853_861_4e-5);
        let t = _mm512_fmadd_ps(t, z, splat(-8.010_193_6e-4));
        let t = _mm512_fmadd_ps(t, z, splat(5.188_327_7e-3));
        let t = _mm512_fmadd_ps(t, z, splat(-2.685_381_2e-2));
        let t = _mm512_fmadd_ps(t, z, splat(1.128_358_5e-1));
        let t = _mm512_fmadd_ps(t, z, splat(-3.761_262_6e-1));
        let t = _mm512_fmadd_ps(t, z, splat(std::f32::consts::FRAC_2_SQRT_PI));
        let small = _mm512_mul_ps(x, t);
        let s = _mm512_div_ps(one, _mm512_fmadd_ps(splat(0.327_591_1), ax, one));
        let q = splat(1.061_405_4);
        let q = _mm512_fmadd_ps(q, s, splat(-1.453_152_1));
        let q = _mm512_fmadd_ps(q, s, splat(1.421_413_8));
        let q = _mm512_fmadd_ps(q, s, splat(-0.284_496_72));
        let q = _mm512_fmadd_ps(q, s, splat(0.254_829_6));
        let minus_z =
            _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(z), _mm512_set1_epi32(i32::MIN)));
        let gaussian = exp(minus_z);
        let big = copysign(_mm512_sub_ps(one, _mm512_mul_ps(_mm512_mul_ps(q, s), gaussian)), x);
        (_mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(ax, one), big, small), gaussian)
    }

    /// [`super::gelu`] on sixteen lanes (the derivative's operations, unused, are dropped
    /// when this is inlined).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn gelu(x: __m512) -> __m512 {
        gelu_and_derivative(x).0
    }

    /// [`super::gelu`] and [`super::gelu_derivative`] of `x` on sixteen lanes, from one `erf`
    /// and one exponential: what GELU's backward multiplies by is made with the activation.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn gelu_and_derivative(x: __m512) -> (__m512, __m512) {
        let (half, one) = (_mm512_set1_ps(0.5), _mm512_set1_ps(1.0));
        let (e, gaussian) =
            erf_and_gaussian(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2)));
        let gelu = _mm512_mul_ps(_mm512_mul_ps(half, x), _mm512_add_ps(one, e));
        let cdf = _mm512_mul_ps(half, _mm512_add_ps(one, e));
        let pdf = _mm512_mul_ps(_mm512_set1_ps(0.398_942_3), gaussian);
        (gelu, _mm512_fmadd_ps(x, pdf, cdf))
    }

    /// [`super::gelu_derivative`] on sixteen lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn gelu_derivative(x: __m512) -> __m512 {
        gelu_and_derivative(x).1
    }

    /// See [`super::map_sixteen`].
    #[target_feature(enable = "avx512f")]
    pub fn map_op(op: crate::backend::UnaryOp, src: &[f32], dst: &mut [f32]) -> bool {
        use crate::backend::UnaryOp;
        match op {
            UnaryOp::Exp => map(src, dst, |x| exp(x)),
            UnaryOp::Gelu => map(src, dst, |x| gelu(x)),
            UnaryOp::GeluDerivative => map(src, dst, |x| gelu_derivative(x)),
            _ => return false,
        }
        true
    }

    /// See [`super::map2_sixteen`].
    #[target_feature(enable = "avx512f")]
    pub fn map2_op(op: crate::backend::BinaryOp, a: &[f32], b: &[f32], dst: &mut [f32]) -> bool {
        use crate::backend::BinaryOp;
        match op {
            BinaryOp::GeluBackward => map2(a, b, dst, |g, x| _mm512_mul_ps(g, gelu_derivative(x))),
            _ => return false,
        }
        true
    }

    /// `dst[i] = f(src[i])`, sixteen lanes at a time (the tail masked).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn map(src: &[f32], dst: &mut [f32], f: impl Fn(__m512) -> __m512) {
        assert_eq!(src.len(), dst.len());
        for at in (0..src.len()).step_by(LANES) {
            let n = LANES.min(src.len() - at);
            // SAFETY: `dst` is as long as `src` (asserted), so the kept lanes `at..at + n` are
            // inside it; `dst` is borrowed mutably.
            unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(at), first(n), f(load(src, at, n))) };
        }
    }

    /// `dst[i] = f(a[i], b[i])`, sixteen lanes at a time (the tail masked).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn map2(a: &[f32], b: &[f32], dst: &mut [f32], f: impl Fn(__m512, __m512) -> __m512) {
        assert!(a.len() == dst.len() && b.len() == dst.len());
        for at in (0..dst.len()).step_by(LANES) {
            let n = LANES.min(dst.len() - at);
            // SAFETY: `dst` is as long as `a` and `b` (asserted), so the kept lanes `at..at + n`
            // are inside it; `dst` is borrowed mutably.
            unsafe {
                _mm512_mask_storeu_ps(dst.as_mut_ptr().add(at), first(n), f(load(a, at, n), load(b, at, n)))
            };
        }
    }

    /// Columns `c0..c0 + 16` of sixteen rows, transposed: column `c0 + c` (one value from each
    /// row, in row order) into `dst[c·stride..c·stride + 16]`. Four rounds of sixty-four
    /// shuffles in registers, where copying element by element took a load and a store each.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn transpose_16x16(rows: [&[f32]; 16], c0: usize, (dst, stride): (&mut [f32], usize)) {
        assert!(rows.iter().all(|r| r.len() >= c0 + LANES), "sixteen columns in every row");
        assert!(stride >= LANES && dst.len() >= (LANES - 1) * stride + LANES, "sixteen rows of dst");
        // SAFETY: each row holds `c0..c0 + 16` (asserted).
        let r: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(rows[i].as_ptr().add(c0)) });
        // Within each 128-bit lane L: pairs of rows interleaved, then quads, so that vector
        // `4k + m` holds column `4L + m` of rows `4k..4k + 4`.
        let t: [__m512; 16] = std::array::from_fn(|i| {
            let (a, b) = (r[i & !1], r[i | 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let u: [__m512; 16] = std::array::from_fn(|i| {
            let (k, m) = (i / 4, i % 4);
            let (a, b) = (_mm512_castps_pd(t[4 * k + m / 2]), _mm512_castps_pd(t[4 * k + 2 + m / 2]));
            _mm512_castpd_ps(if m % 2 == 0 { _mm512_unpacklo_pd(a, b) } else { _mm512_unpackhi_pd(a, b) })
        });
        // Then the 128-bit lanes: column `4L + m` gathers lane L of vectors m, 4 + m, 8 + m, 12 + m.
        for m in 0..4 {
            let x0 = _mm512_shuffle_f32x4::<0x88>(u[m], u[4 + m]);
            let x1 = _mm512_shuffle_f32x4::<0xDD>(u[m], u[4 + m]);
            let y0 = _mm512_shuffle_f32x4::<0x88>(u[8 + m], u[12 + m]);
            let y1 = _mm512_shuffle_f32x4::<0xDD>(u[8 + m], u[12 + m]);
            let columns = [
                (m, _mm512_shuffle_f32x4::<0x88>(x0, y0)),
                (4 + m, _mm512_shuffle_f32x4::<0x88>(x1, y1)),
                (8 + m, _mm512_shuffle_f32x4::<0xDD>(x0, y0)),
                (12 + m, _mm512_shuffle_f32x4::<0xDD>(x1, y1)),
            ];
            for (c, v) in columns {
                // SAFETY: `c < 16`, so `c·stride + 16 ≤ 15·stride + 16 ≤ dst.len()` (asserted);
                // `dst` is borrowed mutably.
                unsafe { _mm512_storeu_ps(dst.as_mut_ptr().add(c * stride), v) };
            }
        }
    }

    /// The mask of the first `n` lanes (all sixteen for `n ≥ 16`).
    pub(crate) fn first(n: usize) -> __mmask16 {
        ((1u32 << n.min(LANES)) - 1) as __mmask16
    }

    /// `n ≤ 16` elements of `xs` from `at`, zeros past them.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load(xs: &[f32], at: usize, n: usize) -> __m512 {
        assert!(n <= LANES && at + n <= xs.len());
        // SAFETY: the lanes the mask keeps are `xs[at..at + n]`, inside the slice (asserted);
        // masked-off lanes are not read.
        unsafe { _mm512_maskz_loadu_ps(first(n), xs.as_ptr().add(at)) }
    }

    /// See [`super::sum_exp_shifted`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn sum_exp_shifted(xs: &[f32], shift: f32, out: Option<&mut [f32]>) -> f32 {
        if let Some(out) = &out {
            assert_eq!(out.len(), xs.len());
        }
        // SAFETY: `xs` holds `xs.len()` elements and `out`, when given, as many (asserted),
        // borrowed mutably.
        unsafe { exp_shifted(xs.as_ptr(), out.map(|o| o.as_mut_ptr()), xs.len(), shift) }
    }

    /// See [`super::exp_shifted_in_place`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn exp_shifted_in_place(xs: &mut [f32], shift: f32) -> f32 {
        let at = xs.as_mut_ptr();
        // SAFETY: `xs` holds `xs.len()` elements, borrowed mutably; each vector is read before
        // the same lanes are written.
        unsafe { exp_shifted(at, Some(at), xs.len(), shift) }
    }

    /// `Σ e^{x − shift}` over `len` elements from `src`, each also stored to `dst` when given
    /// (which may be `src` itself).
    ///
    /// # Safety
    /// `src` is readable and `dst`, when given, writable for `len` elements, and nothing else
    /// accesses `dst` meanwhile.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp_shifted(src: *const f32, dst: Option<*mut f32>, len: usize, shift: f32) -> f32 {
        let s = _mm512_set1_ps(shift);
        let mut acc = _mm512_setzero_ps();
        for at in (0..len).step_by(LANES) {
            let mask = first(len - at);
            // SAFETY: the lanes the mask keeps are elements `at..min(at + 16, len)`, inside
            // `src` (the caller's contract); masked-off lanes are not read.
            let e = exp_flushed(_mm512_sub_ps(unsafe { _mm512_maskz_loadu_ps(mask, src.add(at)) }, s));
            acc = _mm512_mask_add_ps(acc, mask, acc, e);
            if let Some(dst) = dst {
                // SAFETY: the same lanes of `dst`, writable and not otherwise accessed (the
                // caller's contract); masked-off lanes are not written.
                unsafe { _mm512_mask_storeu_ps(dst.add(at), mask, e) };
            }
        }
        _mm512_reduce_add_ps(acc)
    }

    /// See [`super::max`].
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub fn max(xs: &[f32]) -> f32 {
        // Four accumulators: each `max` waits on the one four vectors back, not on the one
        // before (one chain of four-cycle `max`es was a fifth of the attention's softmax).
        let mut acc = [_mm512_set1_ps(f32::NEG_INFINITY); 4];
        let mut nan = 0;
        let mut blocks = xs.chunks_exact(4 * LANES);
        for block in &mut blocks {
            for (i, acc) in acc.iter_mut().enumerate() {
                let v = load(block, i * LANES, LANES);
                nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                *acc = _mm512_max_ps(*acc, v);
            }
        }
        let rest = blocks.remainder();
        for at in (0..rest.len()).step_by(LANES) {
            let n = LANES.min(rest.len() - at);
            let v = load(rest, at, n);
            nan |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
            acc[0] = _mm512_mask_max_ps(acc[0], first(n), acc[0], v);
        }
        if nan != 0 {
            f32::NAN
        } else {
            let [a, b, c, d] = acc;
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(a, b), _mm512_max_ps(c, d)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worst error of `f` against the f64 reference `g` over a grid, as (absolute, relative).
    fn worst(f: impl Fn(f32x8) -> f32x8, g: impl Fn(f64) -> f64, lo: f32, hi: f32) -> (f64, f64) {
        let n = 200_000;
        let xs: Vec<f32> = (0..n).map(|i| lo + (hi - lo) * i as f32 / n as f32).collect();
        let mut ys = vec![0.0; n];
        map(&xs, &mut ys, f);
        let (mut abs, mut rel) = (0.0f64, 0.0f64);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = g(x as f64);
            let err = (y as f64 - want).abs();
            abs = abs.max(err);
            rel = rel.max(err / want.abs().max(1e-30));
        }
        (abs, rel)
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let (_, rel) = worst(exp, f64::exp, -87.0, 88.0);
        assert!(rel < 2.5e-7, "exp relative error {rel}");
    }

    #[test]
    fn exp_handles_the_edges() {
        let xs = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 89.0, -110.0, 88.7, -100.0, 0.0];
        let mut ys = [0.0; 8];
        map(&xs, &mut ys, exp);
        assert!(ys[0].is_nan());
        assert_eq!(ys[1], f32::INFINITY);
        assert_eq!(ys[2], 0.0);
        assert_eq!(ys[3], f32::INFINITY);
        assert_eq!(ys[4], 0.0);
        assert!((ys[5] as f64 / (88.7f32 as f64).exp() - 1.0).abs() < 3e-7);
        // e^-100 is subnormal in f32: relative accuracy drops, absolute is tiny.
        assert!((ys[6] as f64 - (-100f64).exp()).abs() < 1e-44);
        assert_eq!(ys[7], 1.0);
    }

    #[test]
    fn tanh_is_accurate() {
        let (_, rel) = worst(tanh, f64::tanh, -10.0, 10.0);
        assert!(rel < 5e-7, "tanh relative error {rel}");
    }

    #[test]
    fn erf_is_accurate() {
        let (abs, _) = worst(erf, libm::erf, -6.0, 6.0);
        assert!(abs < 3e-7, "erf absolute error {abs}");
        let (_, rel) = worst(erf, libm::erf, -0.99, 0.99);
        assert!(rel < 5e-7, "erf relative error below 1: {rel}");
    }

    #[test]
    fn gelu_and_its_derivative_are_accurate() {
        let phi = |x: f64| 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
        let (abs, _) = worst(gelu, |x| x * phi(x), -8.0, 8.0);
        assert!(abs < 1e-6, "gelu absolute error {abs}");
        let d = |x: f64| phi(x) + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        let (abs, _) = worst(gelu_derivative, d, -8.0, 8.0);
        assert!(abs < 1e-6, "gelu' absolute error {abs}");
    }

    #[test]
    fn sigmoid_and_ln_are_accurate() {
        let (abs, _) = worst(sigmoid, |x| 1.0 / (1.0 + (-x).exp()), -30.0, 30.0);
        assert!(abs < 2e-7, "sigmoid absolute error {abs}");
        let (_, rel) = worst(ln, f64::ln, 1e-3, 1e3);
        assert!(rel < 3e-7, "ln relative error {rel}");
    }

    #[test]
    fn sums_and_max_match_plain_loops() {
        let xs: Vec<f32> = (0..1001).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        assert_eq!(sum(&xs), xs.iter().sum::<f32>());
        assert_eq!(max(&xs), 50.0);
        assert!(max(&[1.0, f32::NAN, 2.0]).is_nan());
        // In place: the same values and sum as into another slice, at every tail length.
        for len in [0, 1, 15, 16, 17, 1001] {
            let mut out = vec![0.0; len];
            let want = sum_exp_shifted(&xs[..len], 3.0, Some(&mut out));
            let mut inplace = xs[..len].to_vec();
            assert_eq!(exp_shifted_in_place(&mut inplace, 3.0).to_bits(), want.to_bits());
            assert!(inplace.iter().zip(&out).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
        let lse = max(&xs) + sum_exp_shifted(&xs, max(&xs), None).ln();
        let want = xs.iter().map(|&x| (x as f64 - 50.0).exp()).sum::<f64>().ln() + 50.0;
        assert!((lse as f64 - want).abs() < 1e-5);
    }

    /// The sixteen-lane transpose puts every element where the definition does.
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn sixteen_by_sixteen_transpose() {
        let data: Vec<f32> = (0..16 * 40).map(|i| i as f32).collect();
        let rows: [&[f32]; 16] = std::array::from_fn(|r| &data[r * 40..(r + 1) * 40]);
        for c0 in [0, 5, 24] {
            let mut dst = vec![f32::NAN; 15 * 20 + 16];
            // SAFETY: the build enables AVX-512 (the cfg).
            unsafe { sixteen::transpose_16x16(rows, c0, (&mut dst, 20)) };
            for c in 0..16 {
                for r in 0..16 {
                    assert_eq!(dst[c * 20 + r], rows[r][c0 + c], "column {c}, row {r}");
                }
            }
        }
    }

    /// The sixteen-lane exp gives every element bit for bit what the eight-lane one does, and
    /// the row passes built on it agree with plain loops at every length (masked tails).
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    #[test]
    fn sixteen_lanes_agree_with_eight() {
        let mut xs: Vec<f32> = (0..40_000).map(|i| -110.0 + i as f32 * 0.005_137).collect();
        xs.extend([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::MAX, 1e-30, -87.5]);
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        let mut eight = vec![0.0; xs.len()];
        map(&xs, &mut eight, exp);
        let mut sixteen = vec![0.0; xs.len()];
        // SAFETY: this test is compiled only where the build enables AVX-512.
        unsafe { sixteen::map(&xs, &mut sixteen, |x| sixteen::exp(x)) };
        for ((x, &a), &b) in xs.iter().zip(&eight).zip(&sixteen) {
            assert!(same(a, b), "exp({x}): {a} vs {b}");
        }
        // The softmax's weights: the same bits on eight and sixteen lanes, e^x where that is a
        // normal number (or NaN, or inf), zero where it would be subnormal.
        let mut flushed = vec![0.0; xs.len()];
        map(&xs, &mut flushed, exp_flushed);
        // SAFETY: as above.
        unsafe { sixteen::sum_exp_shifted(&xs, 0.0, Some(&mut sixteen)) };
        for (((x, &e), &a), &b) in xs.iter().zip(&eight).zip(&flushed).zip(&sixteen) {
            assert!(same(a, b), "exp_flushed({x}): {a} vs {b}");
            let want = if *x < LEAST_NORMAL_EXPONENT { 0.0 } else { e };
            assert!(same(a, want), "exp_flushed({x}): {a}, not {want}");
            assert!(!a.is_subnormal(), "exp_flushed({x}) = {a}");
        }
        for (op, f) in [
            (crate::backend::UnaryOp::Gelu, gelu as fn(f32x8) -> f32x8),
            (crate::backend::UnaryOp::GeluDerivative, gelu_derivative),
        ] {
            let xs: Vec<f32> =
                (0..20_001).map(|i| -12.0 + i as f32 * 0.0012).chain([0.0, -0.0, 1.0, -1.0]).collect();
            let (mut eight, mut sixteen) = (vec![0.0; xs.len()], vec![0.0; xs.len()]);
            map(&xs, &mut eight, f);
            assert!(map_sixteen(op, &xs, &mut sixteen));
            for ((x, a), b) in xs.iter().zip(&eight).zip(&sixteen) {
                assert_eq!(a.to_bits(), b.to_bits(), "{op:?}({x}): {a} vs {b}");
            }
        }
        // GELU's backward, g · GELU'(x): the same bits as the eight-lane product, and as the two
        // passes it replaces (the derivative, then the product).
        let xs: Vec<f32> = (0..20_003).map(|i| -12.0 + i as f32 * 0.0012).collect();
        let gs: Vec<f32> = (0..xs.len()).map(|i| ((i * 37) % 101) as f32 / 25.0 - 2.0).collect();
        let (mut eight, mut sixteen, mut derivative) =
            (vec![0.0; xs.len()], vec![0.0; xs.len()], vec![0.0; xs.len()]);
        map2(&gs, &xs, &mut eight, |g, x| g * gelu_derivative(x));
        assert!(map2_sixteen(crate::backend::BinaryOp::GeluBackward, &gs, &xs, &mut sixteen));
        map(&xs, &mut derivative, gelu_derivative);
        for i in 0..xs.len() {
            let two_passes = gs[i] * derivative[i];
            assert_eq!(eight[i].to_bits(), sixteen[i].to_bits(), "gelu_backward({}, {})", gs[i], xs[i]);
            assert_eq!(two_passes.to_bits(), sixteen[i].to_bits(), "gelu_backward({}, {})", gs[i], xs[i]);
        }
        // The maximum, and a NaN, wherever they lie: in each of the four accumulators' blocks
        // of sixty-four, and in the masked tail.
        let base: Vec<f32> = (0..150).map(|i| -((i * 7) % 13) as f32 - 1.0).collect();
        for at in 0..base.len() {
            let mut row = base.clone();
            row[at] = 3.5;
            assert_eq!(max(&row), 3.5, "max at {at}");
            row[at] = f32::NAN;
            assert!(max(&row).is_nan(), "NaN at {at}");
        }
        for n in 0..200 {
            let row: Vec<f32> = (0..n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
            let want_max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&row), want_max, "max of {n}");
            let want: f64 = row.iter().map(|&x| (x as f64 - 1.0).exp()).sum();
            let got = sum_exp_shifted(&row, 1.0, None) as f64;
            assert!((got - want).abs() <= 1e-6 * want.max(1.0), "sum of {n}: {got} vs {want}");
        }
    }
}
