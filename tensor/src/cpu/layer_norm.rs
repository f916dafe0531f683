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
fn backward_sums(
    (xr, dyr, w): (&[f32], &[f32], &[f32]),
    (mu, rs): (f32, f32),
    (xhat, g): (&mut [f32], &mut [f32]),
    (dw, db): (&mut [f32], &mut [f32]),
) -> (f32, f32) {
    let cols = xr.len();
    let (mut acc_g, mut acc_gx) = ([0.0f32; LANES], [0.0f32; LANES]);
    let whole = cols - cols % LANES;
    for at in (0..whole).step_by(LANES) {
        let span = at..at + LANES;
        let (xc, dyc, wc) = (&xr[span.clone()], &dyr[span.clone()], &w[span.clone()]);
        let (xh, gc) = (&mut xhat[span.clone()], &mut g[span.clone()]);
        let (dwc, dbc) = (&mut dw[span.clone()], &mut db[span]);
        for l in 0..LANES {
            xh[l] = (xc[l] - mu) * rs;
            gc[l] = dyc[l] * wc[l];
            acc_g[l] += gc[l];
            acc_gx[l] += gc[l] * xh[l];
            dwc[l] += dyc[l] * xh[l];
            dbc[l] += dyc[l];
        }
    }
    let (mut sum_g, mut sum_gx) = (acc_g.iter().sum::<f32>(), acc_gx.iter().sum::<f32>());
    for i in whole..cols {
        xhat[i] = (xr[i] - mu) * rs;
        g[i] = dyr[i] * w[i];
        sum_g += g[i];
        sum_gx += g[i] * xhat[i];
        dw[i] += dyr[i] * xhat[i];
        db[i] += dyr[i];
    }
    (sum_g, sum_gx)
}
