//! The perceiver-io library's generation rule, so that a model it trained generates here what
//! it generates there (`PerceiverCausalSequenceModel.generate` and
//! `prepare_inputs_for_generation` in perceiver-io 0.11, which the seed model card calls).
//!
//! * The prompt (at most `max_seq_len` tokens) is one full forward pass whose last
//!   `num_latents` positions are latents, the rest prefix (at most `max_seq_len −
//!   max_latents`).
//! * Every new token is one cached step: a new latent at the end of the window.
//! * The self-attention caches are a sliding window of the last `max_latents` latents: once a
//!   step would exceed it, the oldest latents are forgotten (the library keeps the last
//!   `max_latents − 1` and appends one).
//! * The cross-attention cache is a sliding window of `max_seq_len` positions, in the same way.
//!   Keys are cached as projected and rotated by their current window positions at each step,
//!   while the absolute position embedded in a cached key stays the one it had when it was
//!   computed: that is what the library does, and reproducing its outputs means doing the same.
//!
//! Unlike the paper's rule ([`super::CachedGenerator`]), cached steps after the windows start
//! sliding do not equal any full forward pass; this rule exists for agreement with the library.

use super::cached_logits;
use crate::error::{Error, Result};
use crate::model::{Input, KvCache, PerceiverAr};

/// Generates by the perceiver-io library's rule; see the module docs.
pub struct LibraryGenerator<'m> {
    model: &'m PerceiverAr,
    cache: KvCache,
}

impl<'m> LibraryGenerator<'m> {
    pub fn new(model: &'m PerceiverAr) -> Result<Self> {
        let cache = KvCache::new(model, 1, model.config.max_latents)?;
        Ok(LibraryGenerator { model, cache })
    }

    /// The full pass over `prompt` with its last `num_latents` tokens as latents, checked as
    /// the library checks them; returns the logits for the next token.
    pub fn prompt(&mut self, prompt: &[usize], num_latents: usize) -> Result<Vec<f32>> {
        let c = &self.model.config;
        let len = prompt.len();
        if !(1..=c.max_seq_len).contains(&len) {
            return Err(Error::Input(format!(
                "a prompt of {len} tokens: the library generates from 1 to max_seq_len ({}) tokens",
                c.max_seq_len
            )));
        }
        if !(1..=c.max_latents).contains(&num_latents) {
            return Err(Error::Input(format!(
                "--latents {num_latents}: the library's initial latents are 1 to max_latents ({})",
                c.max_latents
            )));
        }
        let latents = num_latents.min(len);
        let prefix_len = len - latents;
        let max_prefix = c.max_seq_len - c.max_latents;
        if prefix_len > max_prefix {
            return Err(Error::Input(format!(
                "--latents {num_latents}: a prompt of {len} tokens needs {} to {} latents (the prefix is at most {max_prefix})",
                latents + prefix_len - max_prefix,
                c.max_latents
            )));
        }
        self.cache.clear();
        cached_logits(self.model, &mut self.cache, &Input { ids: prompt, batch: 1, seq_len: len, prefix_len })
    }

    /// Appends `token` as a new latent and returns the logits for the one after it.
    pub fn push(&mut self, token: usize) -> Result<Vec<f32>> {
        if self.cache.positions() == 0 {
            return Err(Error::Input("push before prompt: the generator has no sequence yet".into()));
        }
        let c = &self.model.config;
        let positions = self.cache.positions() + 1;
        if positions > c.max_seq_len {
            self.cache.drop_oldest_positions(positions - c.max_seq_len)?;
        }
        let latents = self.cache.latents() + 1;
        if latents > c.max_latents {
            self.cache.drop_oldest_latents(latents - c.max_latents)?;
        }
        cached_logits(
            self.model,
            &mut self.cache,
            &Input { ids: &[token], batch: 1, seq_len: 1, prefix_len: 0 },
        )
    }
}
