//! Next-token prediction and sampling, three ways.
//!
//! Uncached ([`next_logits`]): each new token is predicted by a full forward pass over the last
//! `max_seq_len` tokens, the window split into prefix and latents by a rule (the reference's
//! is `min(len, max_latents)` latents). Simple, and as slow as a forward pass per token.
//!
//! Cached ([`CachedGenerator`], the default of `perceiver generate`): the paper's activation
//! caching (appendix E.3), where each token costs one position through the model. See
//! `cached.rs` for the latent buffer and how the window slides.
//!
//! The perceiver-io library's rule ([`LibraryGenerator`], the default for Hugging Face
//! snapshots): cached too, with the library's sliding caches, so that outputs match its own.
//!
//! The decoders (the Sparse Transformer, the dense decoder) generate through their own cache
//! ([`DecoderGenerator`], [`generate_with_decoder`]).

use autograd::Tape;
use nn::Ctx;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::model::{Input, KvCache, PerceiverAr};

mod cached;
mod decoder;
mod library;
pub use cached::{CachedGenerator, Split, Step};
pub use decoder::DecoderGenerator;
pub use library::LibraryGenerator;

/// How to pick a token from logits.
#[derive(Clone, Copy, Debug)]
pub struct Sampling {
    /// Logits are divided by this; 0 picks the most likely token.
    pub temperature: f32,
    /// Keep only the `k` most likely tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches `p`.
    pub top_p: Option<f32>,
}

impl Sampling {
    pub const GREEDY: Sampling = Sampling { temperature: 0.0, top_k: None, top_p: None };

    /// Checks the settings, naming the one out of range: a NaN temperature would otherwise
    /// pick the least likely token, a negative one or `top_k = 0` would quietly be greedy.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Input(format!(
                "temperature must be a finite number of at least 0 (0 is greedy), got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Input("top_k must be at least 1".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Input(format!("top_p must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }
}

/// The split of the reference implementation: `min(len, max_latents)` latents, the rest prefix.
pub fn default_prefix_len(len: usize, model: &PerceiverAr) -> usize {
    len - len.min(model.config.max_latents)
}

/// Logits for the token after `tokens`, over the last `max_seq_len` of them, with the window's
/// first `prefix_len(window length)` tokens as prefix.
pub fn next_logits(
    model: &PerceiverAr,
    tokens: &[usize],
    prefix_len: &dyn Fn(usize) -> usize,
) -> Result<Vec<f32>> {
    if tokens.is_empty() {
        return Err(Error::Input("cannot predict from an empty prompt".into()));
    }
    let start = tokens.len().saturating_sub(model.config.max_seq_len);
    let window = tokens.len() - start;
    full_pass_logits(model, tokens, Split { start, prefix_len: prefix_len(window).min(window - 1) })
}

/// Logits for the token after `tokens`, by the full forward pass over the window
/// `tokens[split.start..]` with `split.prefix_len` prefix positions (read at the last latent).
pub fn full_pass_logits(model: &PerceiverAr, tokens: &[usize], split: Split) -> Result<Vec<f32>> {
    let window = tokens.get(split.start..).unwrap_or_default();
    let input = Input { ids: window, batch: 1, seq_len: window.len(), prefix_len: split.prefix_len };
    last_latent_logits(model, |ctx| model.forward(ctx, &input)) // forward checks the split
}

/// Runs `input` through `cache`; the last latent's logits.
///
/// The step runs on a thread of rayon's pool (`rayon::scope` moves it there when called from
/// outside): its kernels then start their parallel tasks directly, where each one would
/// otherwise wake the pool from outside, which costs about as much as a one-row kernel.
pub(crate) fn cached_logits(model: &PerceiverAr, cache: &mut KvCache, input: &Input) -> Result<Vec<f32>> {
    rayon::scope(|_| last_latent_logits(model, |ctx| model.forward_cached(ctx, input, cache)))
}

/// The logits `[1, L, V]` that `run` computes in inference mode, read at the last latent.
fn last_latent_logits(
    model: &PerceiverAr,
    run: impl FnOnce(&Ctx) -> Result<autograd::Var>,
) -> Result<Vec<f32>> {
    let tape = Tape::inference();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let logits = run(&ctx)?;
    let l = logits.shape()[1];
    Ok(logits.value().narrow(1, l - 1, 1)?.to_vec()?)
}

/// Picks a token from `logits` according to `sampling`.
pub fn pick(logits: &[f32], sampling: Sampling, rng: &mut impl Rng) -> usize {
    let argmax =
        || logits.iter().enumerate().fold(0, |best, (i, &v)| if v > logits[best] { i } else { best });
    if sampling.temperature <= 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].partial_cmp(&logits[a]).unwrap_or(std::cmp::Ordering::Equal));
    if let Some(k) = sampling.top_k {
        order.truncate(k.max(1));
    }
    let m = logits[order[0]];
    let mut probs: Vec<f64> =
        order.iter().map(|&i| (((logits[i] - m) / sampling.temperature) as f64).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = sampling.top_p {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= top_p as f64
        });
        let keep = keep.map_or(probs.len(), |i| i + 1);
        order.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut u: f64 = rng.gen();
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return order[i];
        }
        u -= p;
    }
    *order.last().unwrap()
}

/// How each next token is predicted.
#[derive(Clone, Copy)]
pub enum Prediction<'a> {
    /// A full forward pass per token over the last `max_seq_len` tokens, the window's first
    /// `prefix_len(window length)` tokens as prefix.
    Full { prefix_len: &'a dyn Fn(usize) -> usize },
    /// Cached steps with a latent buffer of this width (appendix E.3; see [`CachedGenerator`]).
    Cached { latents: usize },
    /// The perceiver-io library's rule, starting with this many latents ([`LibraryGenerator`]).
    Library { latents: usize },
}

/// Extends `prompt` by `count` tokens, calling `on_token` as each one is chosen.
pub fn generate(
    model: &PerceiverAr,
    prompt: &[usize],
    count: usize,
    sampling: Sampling,
    seed: u64,
    prediction: Prediction,
    mut on_token: impl FnMut(usize),
) -> Result<Vec<usize>> {
    sampling.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    match prediction {
        Prediction::Full { prefix_len } => {
            let mut tokens = prompt.to_vec();
            for _ in 0..count {
                let next = pick(&next_logits(model, &tokens, prefix_len)?, sampling, &mut rng);
                on_token(next);
                tokens.push(next);
            }
            Ok(tokens)
        }
        Prediction::Cached { latents } => {
            let mut generator = CachedGenerator::new(model, latents)?;
            step_by_step(prompt, count, sampling, &mut rng, on_token, |step| match step {
                None => Ok(generator.prompt(prompt)?.logits),
                Some(token) => Ok(generator.push(token)?.logits),
            })
        }
        Prediction::Library { latents } => {
            let mut generator = LibraryGenerator::new(model)?;
            step_by_step(prompt, count, sampling, &mut rng, on_token, |step| match step {
                None => generator.prompt(prompt, latents),
                Some(token) => generator.push(token),
            })
        }
    }
}

/// Extends `prompt` by `count` tokens with a decoder: through its cache, or (`cached` false)
/// with a full forward pass over the last `max_seq_len` tokens per token.
pub fn generate_with_decoder(
    model: &crate::sparse_transformer::SparseTransformer,
    prompt: &[usize],
    count: usize,
    sampling: Sampling,
    seed: u64,
    cached: bool,
    on_token: impl FnMut(usize),
) -> Result<Vec<usize>> {
    sampling.validate()?;
    if prompt.is_empty() {
        return Err(Error::Input("generation needs a prompt of at least one token".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    if cached {
        let mut generator = DecoderGenerator::new(model)?;
        return step_by_step(prompt, count, sampling, &mut rng, on_token, |step| match step {
            None => generator.prompt(prompt),
            Some(token) => generator.push(token),
        });
    }
    let mut tokens = prompt.to_vec();
    step_by_step(prompt, count, sampling, &mut rng, on_token, |step| {
        if let Some(token) = step {
            tokens.push(token);
        }
        let window = &tokens[tokens.len().saturating_sub(model.config.max_seq_len)..];
        decoder::last_position_logits(model, window, None)
    })
}

/// Extends `prompt` by `count` tokens from a stateful predictor: `predict(None)` gives the
/// logits after the prompt, `predict(Some(token))` those after appending `token`.
fn step_by_step(
    prompt: &[usize],
    count: usize,
    sampling: Sampling,
    rng: &mut ChaCha8Rng,
    mut on_token: impl FnMut(usize),
    mut predict: impl FnMut(Option<usize>) -> Result<Vec<f32>>,
) -> Result<Vec<usize>> {
    let mut tokens = prompt.to_vec();
    if count == 0 {
        return Ok(tokens);
    }
    let mut logits = predict(None)?;
    for i in 0..count {
        let next = pick(&logits, sampling, rng);
        on_token(next);
        tokens.push(next);
        if i + 1 < count {
            logits = predict(Some(next))?;
        }
    }
    Ok(tokens)
}
