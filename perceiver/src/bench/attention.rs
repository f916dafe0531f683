//! `perceiver bench attention`: what a sparse pattern saves. One causal self-attention (the
//! fused op, forward then backward, batch 1) is timed at contexts `n` doubling from 1024, for
//! the dense pattern and the Sparse Transformer's two: strided with stride `⌈√n⌉` and fixed
//! with blocks of `⌈√n⌉` and the last [`SUMMARY`] positions of each block as its summary (a
//! constant, as the paper's `c = 8`: a summary growing with the block would make the summary
//! keys `n·c/ℓ` a fixed fraction of all keys, and the pattern quadratic). The exponent of each
//! curve is the slope of a least-squares line through `(log n, log time)`: about 2 for dense
//! attention, at most 1.5 for a pattern whose kernel visits only the blocks it uses.

use std::sync::Arc;
use std::time::Instant;

use rand::SeedableRng;
use serde::Serialize;
use tensor::{Device, KeyVisibility, SparsePattern, Tensor};

use crate::error::{Error, Result};

/// One pattern's times against the context.
#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    pub pattern: String,
    /// `(n, seconds)`: the median of the timed repeats of forward + backward.
    pub points: Vec<(usize, f64)>,
    /// The fitted exponent of time against `n`.
    pub exponent: f64,
}

/// What `perceiver bench attention` reports.
#[derive(Clone, Debug, Serialize)]
pub struct AttentionBenchResult {
    pub preset: String,
    /// Where it ran (`cpu`, or the OpenCL device's name).
    pub device: String,
    pub heads: usize,
    pub head_dim: usize,
    pub curves: Vec<Curve>,
    pub threads: usize,
}

/// Summary positions per block of the fixed pattern.
pub const SUMMARY: usize = 8;

/// The patterns compared at context `n`: dense, the two merged patterns, and each pattern's
/// first part alone (the heads that attend near the diagonal, of interleaved or split heads).
fn patterns(n: usize) -> [(&'static str, Option<SparsePattern>); 5] {
    let side = (n as f64).sqrt().ceil() as usize;
    let (strided, fixed) = (SparsePattern::strided(side), SparsePattern::fixed(side, SUMMARY.min(side)));
    [
        ("dense", None),
        ("strided", Some(strided.clone())),
        ("fixed", Some(fixed.clone())),
        ("strided local part", Some(SparsePattern::only(strided.parts[0]))),
        ("fixed block part", Some(SparsePattern::only(fixed.parts[0]))),
    ]
}

/// The slope of the least-squares line through `(ln x, ln y)`.
pub fn fitted_exponent(points: &[(usize, f64)]) -> f64 {
    let logs: Vec<(f64, f64)> = points.iter().map(|&(x, y)| ((x as f64).ln(), y.ln())).collect();
    let k = logs.len() as f64;
    let (mx, my) = (logs.iter().map(|p| p.0).sum::<f64>() / k, logs.iter().map(|p| p.1).sum::<f64>() / k);
    let sxy: f64 = logs.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = logs.iter().map(|(x, _)| (x - mx) * (x - mx)).sum();
    sxy / sxx
}

/// Times forward + backward of one attention at every context from 1024 to `max_context`
/// (doubling) on `device`, each the median of `repeats` after one untimed run; `on_point`
/// hears each.
pub fn run(
    device: &Device,
    max_context: usize,
    heads: usize,
    head_dim: usize,
    repeats: usize,
    mut on_point: impl FnMut(&str, usize, f64),
) -> Result<AttentionBenchResult> {
    if max_context < 2048 {
        return Err(Error::Input(format!(
            "--context {max_context}: the curve needs at least two contexts, 1024 and 2048"
        )));
    }
    let contexts: Vec<usize> = std::iter::successors(Some(1024usize), |n| n.checked_mul(2))
        .take_while(|&n| n <= max_context)
        .collect();
    let mut curves: Vec<Curve> = patterns(1024)
        .iter()
        .map(|(name, _)| Curve { pattern: (*name).into(), points: Vec::new(), exponent: 0.0 })
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for &n in &contexts {
        let shape = [1, heads, n, head_dim];
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (q, k, v, d_out) = (
            Tensor::randn(&shape, scale, &mut rng).to_device(device)?,
            Tensor::randn(&shape, 1.0, &mut rng).to_device(device)?,
            Tensor::randn(&shape, 1.0, &mut rng).to_device(device)?,
            Tensor::randn(&shape, 1.0, &mut rng).to_device(device)?,
        );
        for (curve, (name, pattern)) in curves.iter_mut().zip(patterns(n)) {
            let vis = KeyVisibility {
                causal: Some(0),
                pattern: pattern.map(|p| Arc::from(vec![p])),
                ..Default::default()
            };
            let once = || -> Result<f64> {
                let start = Instant::now();
                let parts = q.attention_with_stats(&k, &v, &vis)?;
                let (dq, dk, dv) = q.attention_backward(&k, &v, &parts, &d_out, &vis)?;
                // A device computes in the background: reading the results back waits for it.
                if *device != Device::Cpu {
                    for t in [&parts.out, &dq, &dk, &dv] {
                        t.to_vec()?;
                    }
                }
                Ok(start.elapsed().as_secs_f64())
            };
            once()?;
            let mut times = (0..repeats.max(1)).map(|_| once()).collect::<Result<Vec<f64>>>()?;
            let t = super::median(&mut times);
            on_point(name, n, t);
            curve.points.push((n, t));
        }
    }
    for curve in &mut curves {
        curve.exponent = fitted_exponent(&curve.points);
    }
    Ok(AttentionBenchResult {
        preset: "attention".into(),
        device: device.name(),
        heads,
        head_dim,
        curves,
        threads: rayon::current_num_threads(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fit_recovers_a_power_law() {
        let points: Vec<(usize, f64)> =
            [1024, 2048, 4096].iter().map(|&n| (n, 3e-9 * (n as f64).powf(1.5))).collect();
        assert!((super::fitted_exponent(&points) - 1.5).abs() < 1e-9);
    }
}
