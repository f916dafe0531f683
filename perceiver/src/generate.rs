//! Next-token prediction and sampling.
//!
//! Each new token is predicted by a full forward pass over the last `max_seq_len` tokens, with
//! `min(len, max_latents)` latents and the rest as prefix (the reference's convention). The
//! paper's cached generation (appendix E.3) is a later optimisation of the same computation.

use autograd::Tape;
use nn::Ctx;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::model::{Input, PerceiverAr};

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
    let c = &model.config;
    let window = &tokens[tokens.len().saturating_sub(c.max_seq_len)..];
    let prefix = prefix_len(window.len()).min(window.len() - 1);
    let latents = window.len() - prefix;
    let input = Input { ids: window, batch: 1, seq_len: window.len(), prefix_len: prefix };
    let tape = Tape::inference();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let logits = model.forward(&ctx, &input)?;
    Ok(logits.value().narrow(1, latents - 1, 1)?.to_vec()?)
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

/// Extends `prompt` by `count` tokens, calling `on_token` as each one is chosen; `prefix_len`
/// splits each window as in [`next_logits`].
pub fn generate(
    model: &PerceiverAr,
    prompt: &[usize],
    count: usize,
    sampling: Sampling,
    seed: u64,
    prefix_len: &dyn Fn(usize) -> usize,
    mut on_token: impl FnMut(usize),
) -> Result<Vec<usize>> {
    sampling.validate()?;
    let mut tokens = prompt.to_vec();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..count {
        let next = pick(&next_logits(model, &tokens, prefix_len)?, sampling, &mut rng);
        on_token(next);
        tokens.push(next);
    }
    Ok(tokens)
}
