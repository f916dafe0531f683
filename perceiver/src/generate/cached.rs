//! Cached generation with the paper's half-refilled latent buffer (appendix E.3).
//!
//! A transformer decoder caches every position's keys and values and runs each new token
//! through the model alone. Perceiver AR cannot keep latents forever: each latent has attended
//! to every latent before it, and training never showed the self-attention stack more than
//! its `L` latents, so a cache of ever more latents would feed the model activations shaped by
//! more context than it was trained on. The paper's answer is a latent buffer as wide as the
//! training latents (`width`):
//!
//! * a full forward pass with `width / 2` latents fills the buffer half way (and the cross
//!   layer's cache with every position of the window);
//! * each new token is then one cached step ([`PerceiverAr::forward_cached`]): a new latent
//!   at the end of the window, attending to the cached keys;
//! * when the buffer holds `width` latents, the next token starts over with a full pass with
//!   `width / 2` latents.
//!
//! The cross layer's cache needs the same trick once the sequence outgrows `max_seq_len` (the
//! appendix's last sentence): the window then slides, every position's absolute embedding
//! changes, and no cached key stays valid. So a refill also chooses where the window starts:
//! `max_seq_len − (width − width/2)` tokens back at most, which leaves room for exactly the
//! cached steps until the buffer is full again. The window reaches `max_seq_len` tokens just as
//! the buffer fills, and slides only at refills. (While the sequence is shorter the window
//! starts at its beginning and nothing is lost.)
//!
//! So every prediction equals a full forward pass: over `tokens[start..]`, with the first
//! `prefix_len` window positions as prefix, where `start` and the prefix are fixed at the last
//! refill and the latents grow by one per step. [`Step::split`] names that pass, and the tests
//! compare the two.

use super::cached_logits;
use crate::error::{Error, Result};
use crate::model::{Input, KvCache, PerceiverAr};

/// The full forward pass a prediction equals: the window `tokens[start..]`, its first
/// `prefix_len` positions as prefix, the rest latents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    pub start: usize,
    pub prefix_len: usize,
}

/// One prediction: logits for the token after the sequence so far.
#[derive(Clone, Debug)]
pub struct Step {
    pub logits: Vec<f32>,
    pub split: Split,
    /// Whether this step was a full forward pass (a refill) rather than a cached step.
    pub refilled: bool,
}

/// Generates from a key/value cache with a latent buffer `width` wide; see the module docs.
pub struct CachedGenerator<'m> {
    model: &'m PerceiverAr,
    cache: KvCache,
    width: usize,
    /// The sequence so far (prompt and pushed tokens).
    tokens: Vec<usize>,
    /// Where the window starts in `tokens`.
    start: usize,
    /// Full forward passes run so far.
    pub refills: usize,
}

impl<'m> CachedGenerator<'m> {
    /// A generator whose latent buffer is `width` latents wide (the training latents are the
    /// paper's choice; anything from 1 to the context works).
    pub fn new(model: &'m PerceiverAr, width: usize) -> Result<Self> {
        let context = model.config.max_seq_len;
        if width == 0 || width > context {
            return Err(Error::Input(format!(
                "--latents {width}: the latent buffer must hold between 1 and the context's {context} latents"
            )));
        }
        let cache = KvCache::new(model, 1, width)?;
        Ok(CachedGenerator { model, cache, width, tokens: Vec::new(), start: 0, refills: 0 })
    }

    /// Starts afresh from `prompt`: a full forward pass.
    pub fn prompt(&mut self, prompt: &[usize]) -> Result<Step> {
        if prompt.is_empty() {
            return Err(Error::Input("cannot predict from an empty prompt".into()));
        }
        self.tokens = prompt.to_vec();
        self.refill()
    }

    /// Appends `token` and predicts the next one: a cached step while the latent buffer has
    /// room (and so does the window), a full pass with half the latents when it is full.
    pub fn push(&mut self, token: usize) -> Result<Step> {
        if self.tokens.is_empty() {
            return Err(Error::Input("push before prompt: the generator has no sequence yet".into()));
        }
        self.tokens.push(token);
        let window = self.tokens.len() - self.start;
        if self.cache.latents() == self.width || window > self.model.config.max_seq_len {
            return self.refill();
        }
        let input = Input { ids: &self.tokens[self.tokens.len() - 1..], batch: 1, seq_len: 1, prefix_len: 0 };
        let logits = cached_logits(self.model, &mut self.cache, &input)?;
        let split = Split { start: self.start, prefix_len: window - self.cache.latents() };
        Ok(Step { logits, split, refilled: false })
    }

    /// The sequence so far.
    pub fn tokens(&self) -> &[usize] {
        &self.tokens
    }

    /// A full forward pass with half the buffer's latents over a window that leaves room for
    /// the cached steps until the buffer is full.
    fn refill(&mut self) -> Result<Step> {
        let t = self.tokens.len();
        let latents = (self.width / 2).max(1).min(t);
        let room = self.width - latents;
        self.start = (t + room).saturating_sub(self.model.config.max_seq_len);
        let window = t - self.start;
        let split = Split { start: self.start, prefix_len: window - latents };
        self.cache.clear();
        let ids = &self.tokens[self.start..];
        let input = Input { ids, batch: 1, seq_len: window, prefix_len: split.prefix_len };
        let logits = cached_logits(self.model, &mut self.cache, &input)?;
        self.refills += 1;
        Ok(Step { logits, split, refilled: true })
    }
}
