//! Layer norm over the last axis, forward and backward fused (as in llm.c's `layernorm_*`).
//!
//! Forward, per row of `C` values: `μ = Σx/C`, `σ² = Σ(x-μ)²/C`, `r = 1/√(σ²+ε)`,
//! `x̂ = (x-μ)·r`, `y = x̂ ⊙ w + b`. The row's `μ` and `r` are kept for the backward.
//!
//! Backward, with `g = dy ⊙ w`:
//! `dx = r · (g - mean(g) - x̂ · mean(g ⊙ x̂))`, `dw = Σ_rows dy ⊙ x̂`, `db = Σ_rows dy`.
//! Rows are split across threads; each chunk of rows sums its own `dw`, `db`, and the
//! partial sums are added in a fixed order so results do not depend on scheduling.
//!
//! The row sums (`σ²`, `mean(g)`, `mean(g ⊙ x̂)`) run in sixteen independent accumulators,
//! added together at the end of the row: one accumulator would chain every addition on the one
//! before, and the loop could not be vectorized.

use rayon::prelude::*;
use wide::f32x8;

use super::elementwise::contiguous;
use super::parallel::PARALLEL_MIN;
use crate::layout::Layout;

pub(crate) struct Forward {
    pub y: Vec<f32>,
    pub mean: Vec<f32>,
    pub rstd: Vec<f32>,
}

pub(crate) fn forward(src: &[f32], layout: &Layout, w: &[f32], b: &[f32], eps: f32) -> Forward {
    let x = contiguous(src, layout);
    let cols = *layout.shape().last().unwrap_or(&1);
    let rows = x.len().checked_div(cols).unwrap_or(0);
    let mut y = super::pool::uninit(x.len());
    let mut mean = vec![0.0; rows];
    let mut rstd = vec![0.0; rows];
    let per = rows_per_task(rows, cols);
    y.par_chunks_mut((per * cols).max(1))
        .zip(mean.par_chunks_mut(per))
        .zip(rstd.par_chunks_mut(per))
        .enumerate()
        .for_each(|(c, ((y, mean), rstd))| {
            for (r, yr) in y.chunks_exact_mut(cols).enumerate() {
                let xr = &x[(c * per + r) * cols..][..cols];
                let mu = super::math::sum(xr) / cols as f32;
                let var = squared_deviations(xr, mu) / cols as f32;
                let rs = 1.0 / (var + eps).sqrt();
                for (((o, &v), &wv), &bv) in yr.iter_mut().zip(xr).zip(w).zip(b) {
                    *o = (v - mu) * rs * wv + bv;
                }
                mean[r] = mu;
                rstd[r] = rs;
            }
        });
    Forward { y, mean, rstd }
}

/// Rows per parallel task: all rows in one task when small, a few tasks per thread otherwise.
fn rows_per_task(rows: usize, cols: usize) -> usize {
    let threads = rayon::current_num_threads();
    if rows * cols < PARALLEL_MIN || threads <= 1 {
        rows.max(1)
    } else {
        rows.div_ceil(threads * 4).max(1)
    }
}

pub(crate) struct Backward {
    pub dx: Vec<f32>,
    pub dw: Vec<f32>,
    pub db: Vec<f32>,
}

/// `(x, layout)` is the forward's input; `mean` and `rstd` its saved row statistics.
pub(crate) fn backward(
    (src, layout): (&[f32], &Layout),
    w: &[f32],
    (mean, rstd): (&[f32], &[f32]),
    (dy, ldy): (&[f32], &Layout),
) -> Backward {
    let mut dx = super::pool::uninit(layout.numel());
    let (dw, db) = backward_into((src, layout), w, (mean, rstd), (dy, ldy), (&mut dx, false));
    Backward { dx, dw, db }
}

/// [`backward`] with `dx` written into `dx_out` (contiguous, the input's size), or added to
/// what it holds (`add`): a gradient the input already has takes `dx` in the same pass over
/// the rows. Returns `(dw, db)`.
pub(crate) fn backward_into(
    (src, layout): (&[f32], &Layout),
    w: &[f32],
    (mean, rstd): (&[f32], &[f32]),
    (dy, ldy): (&[f32], &Layout),
    (dx, add): (&mut [f32], bool),
) -> (Vec<f32>, Vec<f32>) {
    let x = contiguous(src, layout);
    let dy = contiguous(dy, ldy);
    let cols = *layout.shape().last().unwrap_or(&1);
    let rows = x.len().checked_div(cols).unwrap_or(0);
    assert_eq!(dx.len(), x.len(), "layer_norm backward: dx has the input's size");
    let rows_per_chunk = rows_per_task(rows, cols);
    // Each chunk of rows: its dx rows, plus partial dw and db.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
        .par_chunks_mut((rows_per_chunk * cols).max(1))
        .enumerate()
        .map(|(c, dx_chunk)| {
            let mut dw = vec![0.0; cols];
            let mut db = vec![0.0; cols];
            let mut xhat = vec![0.0; cols];
            let mut g = vec![0.0; cols];
            for (r, dxr) in dx_chunk.chunks_exact_mut(cols).enumerate() {
                let row = c * rows_per_chunk + r;
                let xr = &x[row * cols..][..cols];
                let gr = &dy[row * cols..][..cols];
                let (mu, rs) = (mean[row], rstd[row]);
                let (sum_g, sum_gx) =
                    backward_sums((xr, gr, &w[..cols]), (mu, rs), (&mut xhat, &mut g), (&mut dw, &mut db));
                let mean_g = sum_g / cols as f32;
                let mean_gx = sum_gx / cols as f32;
                let dx_at = |i: usize| rs * (g[i] - mean_g - xhat[i] * mean_gx);
                if add {
                    for (i, d) in dxr.iter_mut().enumerate() {
                        *d += dx_at(i);
                    }
                } else {
                    for (i, d) in dxr.iter_mut().enumerate() {
                        *d = dx_at(i);
                    }
                }
            }
            (dw, db)
        })
        .collect();
    let mut dw = vec![0.0; cols];
    let mut db = vec![0.0; cols];
    for (pw, pb) in &partials {
        for i in 0..cols {
            dw[i] += pw[i];
            db[i] += pb[i];
        }
    }
    (dw, db)
}

/// Independent accumulators per row sum (see the module doc).
const LANES: usize = 16;

/// `Σ (x - μ)²` over a row.
fn squared_deviations(xr: &[f32], mu: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut chunks = xr.chunks_exact(LANES);
    for c in &mut chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += (v - mu) * (v - mu);
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|&v| (v - mu) * (v - mu)).sum();
    acc.iter().sum::<f32>() + tail
}

/// One row of the backward's first pass: writes `x̂ = (x - μ) r` and `g = dy ⊙ w`, adds
/// `dy ⊙ x̂` into `dw` and `dy` into `db`, and returns `(Σ g, Σ g ⊙ x̂)`. All slices are one
/// row long.
///
/// Written on eight-lane vectors: as a loop over the sixteen accumulators the compiler kept
/// them on the stack and made every element's seven operations scalar (the backward ran at a
/// quarter of the forward's speed). Each lane does the operations of [`backward_sums_scalar`]
/// in the same order, so the results are the same bits.
fn backward_sums(
    (xr, dyr, w): (&[f32], &[f32], &[f32]),
    (mu, rs): (f32, f32),
    (xhat, g): (&mut [f32], &mut [f32]),
    (dw, db): (&mut [f32], &mut [f32]),
) -> (f32, f32) {
    const HALF: usize = LANES / 2;
    let cols = xr.len();
    let load =
        |s: &[f32], at: usize| f32x8::from(<[f32; HALF]>::try_from(&s[at..at + HALF]).expect("8 floats"));
    let store = |s: &mut [f32], at: usize, v: f32x8| s[at..at + HALF].copy_from_slice(&v.to_array());
    let (mu_v, rs_v) = (f32x8::splat(mu), f32x8::splat(rs));
    // Accumulator lanes 0..8 and 8..16 of each sum.
    let (mut acc_g, mut acc_gx) = ([f32x8::ZERO; 2], [f32x8::ZERO; 2]);
    let whole = cols - cols % LANES;
    for at in (0..whole).step_by(LANES) {
        for half in 0..2 {
            let i = at + half * HALF;
            let dy = load(dyr, i);
            let xh = (load(xr, i) - mu_v) * rs_v;
            let gi = dy * load(w, i);
            acc_g[half] += gi;
            acc_gx[half] += gi * xh;
            store(xhat, i, xh);
            store(g, i, gi);
            store(dw, i, load(dw, i) + dy * xh);
            store(db, i, load(db, i) + dy);
        }
    }
    let lanes = |[lo, hi]: [f32x8; 2]| -> [f32; LANES] {
        std::array::from_fn(|l| if l < HALF { lo.to_array()[l] } else { hi.to_array()[l - HALF] })
    };
    let (sum_g, sum_gx) = (lanes(acc_g).iter().sum::<f32>(), lanes(acc_gx).iter().sum::<f32>());
    row_tail((xr, dyr, w), (mu, rs), (xhat, g), (dw, db), (whole, sum_g, sum_gx))
}

/// The elements from `from` on of [`backward_sums`]'s row, one at a time, added to the sums
/// so far.
fn row_tail(
    (xr, dyr, w): (&[f32], &[f32], &[f32]),
    (mu, rs): (f32, f32),
    (xhat, g): (&mut [f32], &mut [f32]),
    (dw, db): (&mut [f32], &mut [f32]),
    (from, mut sum_g, mut sum_gx): (usize, f32, f32),
) -> (f32, f32) {
    for i in from..xr.len() {
        xhat[i] = (xr[i] - mu) * rs;
        g[i] = dyr[i] * w[i];
        sum_g += g[i];
        sum_gx += g[i] * xhat[i];
        dw[i] += dyr[i] * xhat[i];
        db[i] += dyr[i];
    }
    (sum_g, sum_gx)
}

/// [`backward_sums`] written per accumulator lane, as the definition its vectors are tested
/// against.
#[cfg(test)]
fn backward_sums_scalar(
    (xr, dyr, w): (&[f32], &[f32], &[f32]),
    (mu, rs): (f32, f32),
    (xhat, g): (&mut [f32], &mut [f32]),
    (dw, db): (&mut [f32], &mut [f32]),
) -> (f32, f32) {
    let cols = xr.len();
    let (mut acc_g, mut acc_gx) = ([0.0f32; LANES], [0.0f32; LANES]);
    let whole = cols - cols % LANES;
    for at in (0..whole).step_by(LANES) {
        for l in 0..LANES {
            let i = at + l;
            xhat[i] = (xr[i] - mu) * rs;
            g[i] = dyr[i] * w[i];
            acc_g[l] += g[i];
            acc_gx[l] += g[i] * xhat[i];
            dw[i] += dyr[i] * xhat[i];
            db[i] += dyr[i];
        }
    }
    let (sum_g, sum_gx) = (acc_g.iter().sum::<f32>(), acc_gx.iter().sum::<f32>());
    row_tail((xr, dyr, w), (mu, rs), (xhat, g), (dw, db), (whole, sum_g, sum_gx))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors give the bits of the per-lane definition, on rows with and without a tail,
    /// several rows adding into the same `dw` and `db`.
    #[test]
    fn backward_sums_match_their_definition_bit_for_bit() {
        let value = |i: usize| ((i as u64 * 2654435761 % 1000) as f32) / 250.0 - 2.0;
        for cols in [1, 7, 16, 37, 256, 259] {
            let w: Vec<f32> = (0..cols).map(|i| value(i + 1)).collect();
            let (mut dw, mut db) = (vec![0.0; cols], vec![0.0; cols]);
            let (mut dw_want, mut db_want) = (vec![0.0; cols], vec![0.0; cols]);
            for row in 0..3 {
                let x: Vec<f32> = (0..cols).map(|i| value(i + 100 * row + 7)).collect();
                let dy: Vec<f32> = (0..cols).map(|i| value(i + 100 * row + 51)).collect();
                let (mu, rs) = (value(row) * 0.1, 1.0 + value(row + 3).abs());
                let (mut xhat, mut g) = (vec![0.0; cols], vec![0.0; cols]);
                let (mut xhat_want, mut g_want) = (vec![0.0; cols], vec![0.0; cols]);
                let got = backward_sums((&x, &dy, &w), (mu, rs), (&mut xhat, &mut g), (&mut dw, &mut db));
                let want = backward_sums_scalar(
                    (&x, &dy, &w),
                    (mu, rs),
                    (&mut xhat_want, &mut g_want),
                    (&mut dw_want, &mut db_want),
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    (got.0.to_bits(), got.1.to_bits()),
                    (want.0.to_bits(), want.1.to_bits()),
                    "{cols}"
                );
                for (a, b) in [(&xhat, &xhat_want), (&g, &g_want), (&dw, &dw_want), (&db, &db_want)] {
                    assert_eq!(bits(a), bits(b), "{cols} columns, row {row}");
                }
            }
        }
    }
}
