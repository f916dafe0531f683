//! `perceiver bench`: the time of one training step of a Perceiver AR at the shapes of
//! `../shared/bench/README.md`, as a FLOP rate and as a fraction of the sgemm rate measured in
//! the same process on the same threads just before each step (the figure that compares across
//! machines; per step, because a shared machine's speed changes from second to second), and
//! the process's peak resident memory.
//!
//! A step is what PyTorch's reference script times: forward over random bytes, mean
//! cross-entropy of the latents' next bytes, backward, AdamW. FLOPs follow the README's
//! convention: `2·m·k·n` for every matrix product of the forward pass (attention as the full
//! rectangle, `2·2·B·L·keys·C` per layer), and a step is three forward passes.
//!
//! `perceiver bench generate` ([`generate`]) times generation instead: cached against
//! uncached tokens per second at the `step-2k` model shape; `perceiver bench attention`
//! ([`attention`]) times one attention against the context for dense and sparse patterns.

use std::time::Instant;

use autograd::Tape;
use nn::loss::{cross_entropy, CrossEntropy};
use nn::optim::{AdamW, AdamWConfig};
use nn::Ctx;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use crate::config::{AbsolutePositions, PerceiverArConfig};
use crate::distributed::{share, sum_over_ranks, Collective};
use crate::error::{Error, Result};
use crate::model::{Input, PerceiverAr};

pub mod attention;
pub mod generate;

/// The shape of a benchmark step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchShape {
    pub preset: String,
    pub vocab: usize,
    /// Context `n` (prefix + latents).
    pub context: usize,
    pub latents: usize,
    pub batch: usize,
    pub channels: usize,
    pub heads: usize,
    /// Self-attention layers after the cross layer.
    pub layers: usize,
    pub widening: usize,
}

impl BenchShape {
    /// The presets of `../shared/bench/README.md`: `step-2k` (a typical training step) and
    /// `long-131k` (the paper's long-context regime); and `generate`, the `step-2k` model
    /// generating one sequence.
    pub fn preset(name: &str) -> Result<BenchShape> {
        let (context, latents, batch) = match name {
            "step-2k" => (2048, 256, 8),
            "long-131k" => (131_072, 512, 1),
            // Generation at the step-2k model's shape, one sequence.
            "generate" => (2048, 256, 1),
            other => {
                return Err(Error::Input(format!(
                    "unknown bench preset {other:?}: step-2k, long-131k or generate"
                )));
            }
        };
        Ok(BenchShape {
            preset: name.to_string(),
            vocab: 256,
            context,
            latents,
            batch,
            channels: 256,
            heads: 8,
            layers: 6,
            widening: 4,
        })
    }

    /// The model: the perceiver-io variant with learned absolute positions and no cross-attend
    /// dropout (every prefix token is attended).
    pub fn model_config(&self) -> PerceiverArConfig {
        let mut c = PerceiverArConfig::perceiver_io(
            self.vocab,
            self.context,
            self.latents,
            self.channels,
            self.heads,
            self.layers,
        );
        c.absolute_positions = AbsolutePositions::Learned;
        c.cross_attend_dropout = 0.0;
        c.cross_widening = self.widening;
        c.self_widening = self.widening;
        c
    }

    /// FLOPs of one training step by the README's convention.
    pub fn step_flops(&self) -> f64 {
        let (b, n, l, c, v, w) = (
            self.batch as f64,
            self.context as f64,
            self.latents as f64,
            self.channels as f64,
            self.vocab as f64,
            self.widening as f64,
        );
        let layers = self.layers as f64;
        let mut linear = 2.0 * b * l * c * c; // cross q projection (latents)
        linear += 2.0 * 2.0 * b * n * c * c; // cross k, v projections (prefix + latents)
        linear += 2.0 * b * l * c * c; // cross output projection
        linear += 2.0 * 2.0 * b * l * c * w * c; // cross MLP
        linear += layers * (4.0 * 2.0 * b * l * c * c + 2.0 * 2.0 * b * l * c * w * c); // self layers
        linear += 2.0 * b * l * c * v; // logits
        let attention = 2.0 * 2.0 * b * l * n * c + layers * 2.0 * 2.0 * b * l * l * c;
        3.0 * (linear + attention)
    }
}

/// What `perceiver bench` reports.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    pub preset: String,
    /// Median seconds per training step.
    pub step_s: f64,
    /// Every measured step, in seconds.
    pub steps_s: Vec<f64>,
    pub gflop_per_step: f64,
    /// Model FLOP rate of the median step.
    pub gflops: f64,
    /// 1024-square sgemm on the same threads: the median of the rates measured just before
    /// each timed step.
    pub sgemm_gflops: f64,
    /// Each timed step's FLOP rate over `ranks` times the sgemm rate measured just before it
    /// (every rank has threads of its own). On a shared machine whose speed changes from
    /// second to second, a step is compared with the machine as it was then.
    pub ratios: Vec<f64>,
    /// The median of `ratios`.
    pub ratio: f64,
    /// Peak resident memory of the process (`VmHWM`), if the system reports it.
    pub peak_rss_bytes: Option<u64>,
    /// The most bytes live CPU tensors held at once (parameters, optimiser state, activations
    /// and gradients; not the buffer cache): what the step itself needs.
    pub peak_tensor_bytes: u64,
    pub threads: usize,
    /// Processes sharing each batch (data-parallel ranks under `mpirun`).
    pub ranks: usize,
    pub shape: BenchShape,
}

/// The median of `xs` (sorted in place).
pub(crate) fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// GFLOP/s of a `size`-square sgemm split over rayon's threads (each calls single-threaded
/// `sgemm` on its share of the rows), the median of `repeats` runs.
pub fn sgemm_gflops(size: usize, repeats: usize) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let a: Vec<f32> = (0..size * size).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let b: Vec<f32> = (0..size * size).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut c = vec![0.0f32; size * size];
    let threads = rayon::current_num_threads().max(1);
    let rows = size.div_ceil(threads);
    let mut times: Vec<f64> = (0..repeats.max(1) + 1)
        .map(|_| {
            let t = Instant::now();
            c.par_chunks_mut(rows * size).enumerate().for_each(|(i, out)| {
                let m = out.len() / size;
                // SAFETY: `a` holds rows i·rows.. of length `size` for the `m` rows of this
                // chunk, `b` is size x size, and `out` is exactly m x size and borrowed by this
                // task alone; sgemm reads and writes only within those bounds.
                unsafe {
                    matrixmultiply::sgemm(
                        m,
                        size,
                        size,
                        1.0,
                        a.as_ptr().add(i * rows * size),
                        size as isize,
                        1,
                        b.as_ptr(),
                        size as isize,
                        1,
                        0.0,
                        out.as_mut_ptr(),
                        size as isize,
                        1,
                    );
                }
            });
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.remove(0); // warm-up
    2.0 * (size as f64).powi(3) / median(&mut times) / 1e9
}

/// Peak resident memory of this process, from `/proc/self/status` (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs `warmup` steps, then times `steps` steps, calling `on_step(i, seconds)` after each.
/// With several ranks (`mpirun`), each computes its share of the batch and the gradients are
/// summed across them as in data-parallel training.
pub fn run(
    shape: &BenchShape,
    warmup: usize,
    steps: usize,
    collective: &dyn Collective,
    mut on_step: impl FnMut(usize, f64),
) -> Result<BenchResult> {
    if steps == 0 {
        return Err(Error::Input("bench needs at least one timed step".into()));
    }
    tensor::cpu::pool::reset_peak_live_bytes();
    let config = shape.model_config();
    let mut model = PerceiverAr::new(config, 0)?;
    let mut optimizer = AdamW::new(AdamWConfig::default());
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let (b, n, l) = (shape.batch, shape.context, shape.latents);
    let tokens: Vec<usize> = (0..b * (n + 1)).map(|_| rng.gen_range(0..shape.vocab)).collect();
    let ids: Vec<usize> = tokens.chunks(n + 1).flat_map(|row| row[..n].iter().copied()).collect();
    let targets: Vec<usize> = tokens.chunks(n + 1).flat_map(|row| row[n + 1 - l..].iter().copied()).collect();
    let (rank, ranks) = (collective.rank(), collective.size());
    if ranks > b {
        return Err(Error::Input(format!("a batch of {b} cannot be shared by {ranks} ranks")));
    }
    let rows = share(rank, ranks, b);
    let ids = &ids[rows.start * n..rows.end * n];
    let targets = &targets[rows.start * l..rows.end * l];
    let input = Input { ids, batch: rows.len(), seq_len: n, prefix_len: n - l };
    let flops = shape.step_flops();
    let (mut times, mut sgemms, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..warmup + steps {
        let sgemm = (i >= warmup).then(|| sgemm_gflops(1024, 7));
        let t = Instant::now();
        let tape = Tape::new();
        let ctx = Ctx::new(&tape, &model.params, true, &mut rng);
        let logits = model.forward(&ctx, &input)?;
        let loss = cross_entropy(&logits, targets, CrossEntropy::default())?;
        drop(ctx);
        let mut grads = tape.backward(&loss)?;
        if ranks > 1 {
            let value = loss.value().to_scalar()?;
            sum_over_ranks(collective, &model.params, &mut grads, value, 0, targets.len())?;
        }
        optimizer.update(&mut model.params, &grads, 1e-4)?;
        let seconds = t.elapsed().as_secs_f64();
        if let Some(sgemm) = sgemm {
            times.push(seconds);
            sgemms.push(sgemm);
            ratios.push(flops / seconds / 1e9 / (sgemm * ranks as f64));
        }
        on_step(i, seconds);
    }
    let steps_s = times.clone();
    let step_s = median(&mut times);
    let gflops = flops / step_s / 1e9;
    Ok(BenchResult {
        preset: shape.preset.clone(),
        step_s,
        steps_s,
        gflop_per_step: flops / 1e9,
        gflops,
        sgemm_gflops: median(&mut sgemms),
        ratio: median(&mut ratios.clone()),
        ratios,
        peak_rss_bytes: peak_rss_bytes(),
        peak_tensor_bytes: tensor::cpu::pool::peak_live_bytes() as u64,
        threads: rayon::current_num_threads(),
        ranks,
        shape: shape.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FLOP counts of `../shared/bench/README.md`.
    #[test]
    fn preset_flops_match_the_convention() {
        let gflop = |name: &str| BenchShape::preset(name).unwrap().step_flops() / 1e9;
        assert!((gflop("step-2k") - 102.3).abs() < 0.05, "{}", gflop("step-2k"));
        assert!((gflop("long-131k") - 330.8).abs() < 0.05, "{}", gflop("long-131k"));
        assert!(BenchShape::preset("huge").is_err());
    }
}
