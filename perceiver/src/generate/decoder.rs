//! Generation with a decoder (the Sparse Transformer or the dense decoder) through its
//! key/value cache: the prompt's window runs through the model once, filling every layer's
//! cache, then each new token is one position per layer
//! ([`SparseTransformer::forward_cached`]).
//!
//! Positions are learned and absolute, so the cache holds at most `max_seq_len` positions
//! numbered from the window's start. When it is full, the window restarts at the last half of
//! the sequence: the cache is cleared and refilled by one pass over those tokens (the decoder's
//! counterpart of Perceiver AR's refill, appendix E.3). Every prediction therefore equals the
//! full forward pass over `tokens[start..]` ([`DecoderGenerator::start`]).

use autograd::Tape;
use nn::Ctx;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;
use crate::model::{Input, KvBuffer};
use crate::sparse_transformer::SparseTransformer;

pub struct DecoderGenerator<'a> {
    model: &'a SparseTransformer,
    caches: Vec<KvBuffer>,
    /// The whole sequence so far.
    tokens: Vec<usize>,
    /// Where the cached window starts in `tokens`.
    start: usize,
}

impl<'a> DecoderGenerator<'a> {
    pub fn new(model: &'a SparseTransformer) -> Result<Self> {
        Ok(DecoderGenerator { model, caches: model.new_cache(1)?, tokens: Vec::new(), start: 0 })
    }

    /// Where the window of the last prediction started: it equals the full forward pass over
    /// the tokens from here.
    pub fn start(&self) -> usize {
        self.start
    }

    /// The logits of the token after `prompt` (the last `max_seq_len` of it, at most).
    pub fn prompt(&mut self, prompt: &[usize]) -> Result<Vec<f32>> {
        self.tokens = prompt.to_vec();
        self.refill(prompt.len().saturating_sub(self.model.config.max_seq_len))
    }

    /// The logits of the token after appending `token`.
    pub fn push(&mut self, token: usize) -> Result<Vec<f32>> {
        self.tokens.push(token);
        if self.caches[0].len() == self.model.config.max_seq_len {
            // Full: restart the window at the last half.
            let keep = (self.model.config.max_seq_len / 2).max(1);
            return self.refill(self.tokens.len() - keep);
        }
        self.run(&[token])
    }

    /// Clears the caches and runs `tokens[start..]` through the model.
    fn refill(&mut self, start: usize) -> Result<Vec<f32>> {
        self.start = start;
        self.caches.iter_mut().for_each(KvBuffer::clear);
        let window = self.tokens[start..].to_vec();
        self.run(&window)
    }

    /// Runs `ids` after the cached positions; the last one's logits.
    fn run(&mut self, ids: &[usize]) -> Result<Vec<f32>> {
        last_position_logits(self.model, ids, Some(&mut self.caches))
    }
}

/// The logits after the last of `ids` (numbered after what `caches` hold, if given).
pub(super) fn last_position_logits(
    model: &SparseTransformer,
    ids: &[usize],
    caches: Option<&mut [KvBuffer]>,
) -> Result<Vec<f32>> {
    let tape = Tape::inference();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let input = Input { ids, batch: 1, seq_len: ids.len(), prefix_len: ids.len() - 1 };
    Ok(model.forward_cached(&ctx, &input, caches)?.value().to_vec()?)
}
