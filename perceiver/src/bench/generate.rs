//! `perceiver bench generate`: how much the key/value cache buys (appendix E.3 of the paper).
//!
//! A model of the `step-2k` shape (context 2048, 256 latents, 256 channels, 6 self-attention
//! layers) with random weights continues a random prompt of the full context greedily, batch 1,
//! twice: through the cache ([`CachedGenerator`], a latent buffer as wide as the training
//! latents) and uncached (a full forward pass over the window per token, `min(len, latents)`
//! latents, as `generate --no-cache` does). Both are timed from the prompt to the last token.
//! Then every cached prediction is recomputed by the full forward pass it stands for (the same
//! window and prefix/latent split) and the largest logit difference is reported.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{peak_rss_bytes, BenchShape};
use crate::error::{Error, Result};
use crate::generate::{full_pass_logits, generate, pick, CachedGenerator, Prediction, Sampling, Split};
use crate::model::PerceiverAr;

/// What `perceiver bench generate` reports.
#[derive(Clone, Debug, Serialize)]
pub struct GenerateBenchResult {
    pub preset: String,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    /// New tokens per second through the cache (prompt pass and refills included).
    pub cached_tokens_per_s: f64,
    /// New tokens per second with a full forward pass per token.
    pub full_tokens_per_s: f64,
    /// `cached_tokens_per_s / full_tokens_per_s`.
    pub speedup: f64,
    /// Largest difference between a cached prediction's logits and those of the full forward
    /// pass with the same window and split, over the whole run.
    pub max_logit_diff: f32,
    /// Full forward passes the cached run made (the prompt's and the refills).
    pub refills: usize,
    pub peak_rss_bytes: Option<u64>,
    pub threads: usize,
    pub shape: BenchShape,
}

/// What the progress callback is told.
#[derive(Clone, Copy, Debug)]
pub enum Phase {
    Cached,
    Full,
    Check,
}

/// Runs the benchmark; `on_token(phase, tokens done)` after each token of each phase.
pub fn run(
    shape: &BenchShape,
    prompt_tokens: usize,
    new_tokens: usize,
    mut on_token: impl FnMut(Phase, usize),
) -> Result<GenerateBenchResult> {
    if prompt_tokens == 0 || new_tokens == 0 {
        return Err(Error::Input("bench generate needs a prompt and at least one new token".into()));
    }
    if shape.batch != 1 {
        return Err(Error::Input(format!("bench generate runs batch 1, not {}", shape.batch)));
    }
    let model = PerceiverAr::new(shape.model_config(), 0)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let prompt: Vec<usize> = (0..prompt_tokens).map(|_| rng.gen_range(0..shape.vocab)).collect();

    // Cached, keeping each prediction and the pass it stands for.
    let t = Instant::now();
    let mut generator = CachedGenerator::new(&model, shape.latents)?;
    let mut step = generator.prompt(&prompt)?;
    let mut predictions: Vec<(Vec<f32>, Split)> = Vec::with_capacity(new_tokens);
    for i in 0..new_tokens {
        let next = pick(&step.logits, Sampling::GREEDY, &mut rng);
        predictions.push((std::mem::take(&mut step.logits), step.split));
        on_token(Phase::Cached, i + 1);
        if i + 1 < new_tokens {
            step = generator.push(next)?;
        }
    }
    let cached_s = t.elapsed().as_secs_f64();
    let mut sequence = generator.tokens().to_vec();
    sequence.push(pick(&predictions[new_tokens - 1].0, Sampling::GREEDY, &mut rng));

    // Uncached, the way `generate --no-cache` predicts.
    let latents = shape.latents;
    let split = move |len: usize| len - len.min(latents);
    let mut done = 0;
    let t = Instant::now();
    generate(
        &model,
        &prompt,
        new_tokens,
        Sampling::GREEDY,
        0,
        Prediction::Full { prefix_len: &split },
        |_| {
            done += 1;
            on_token(Phase::Full, done);
        },
    )?;
    let full_s = t.elapsed().as_secs_f64();

    // Every cached prediction against its full pass.
    let mut max_logit_diff = 0.0f32;
    for (i, (logits, split)) in predictions.iter().enumerate() {
        let full = full_pass_logits(&model, &sequence[..prompt_tokens + i], *split)?;
        let diff = logits.iter().zip(&full).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        max_logit_diff = max_logit_diff.max(if diff.is_nan() { f32::INFINITY } else { diff });
        on_token(Phase::Check, i + 1);
    }

    let (cached, full) = (new_tokens as f64 / cached_s, new_tokens as f64 / full_s);
    Ok(GenerateBenchResult {
        preset: shape.preset.clone(),
        prompt_tokens,
        new_tokens,
        cached_tokens_per_s: cached,
        full_tokens_per_s: full,
        speedup: cached / full,
        max_logit_diff,
        refills: generator.refills,
        peak_rss_bytes: peak_rss_bytes(),
        threads: rayon::current_num_threads(),
        shape: shape.clone(),
    })
}
