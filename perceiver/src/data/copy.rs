//! The copy task (Perceiver AR, section 5.1): `[BOS] b₁ … b_k b_k … b₁ [EOS]`, k random bytes
//! followed by the same bytes mirrored. Only the mirrored half can be predicted, so only it is
//! scored: the model must find, for each output, the input byte at the mirrored position,
//! which needs both content and position information to flow through the cross-attention.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Batch, IGNORE};

/// Byte values 0..=255, then the two markers.
pub const BOS: usize = 256;
pub const EOS: usize = 257;
pub const VOCAB: usize = 258;

/// Sequences of `k` random bytes and their mirror image.
#[derive(Clone, Debug)]
pub struct CopyTask {
    pub k: usize,
}

impl CopyTask {
    /// Model input length: the sequence without its last token.
    pub fn seq_len(&self) -> usize {
        // Saturating: a k read from a damaged config must give an error later, not overflow.
        self.k.saturating_mul(2).saturating_add(1)
    }

    /// Latents needed to cover the mirrored half and the end marker.
    pub fn min_latents(&self) -> usize {
        self.k.saturating_add(1)
    }

    /// One full sequence `[BOS, bytes, reversed bytes, EOS]`.
    pub fn sequence(&self, rng: &mut impl Rng) -> Vec<usize> {
        let bytes: Vec<usize> = (0..self.k).map(|_| rng.gen_range(0..256)).collect();
        let mut seq = Vec::with_capacity(2 * self.k + 2);
        seq.push(BOS);
        seq.extend(&bytes);
        seq.extend(bytes.iter().rev());
        seq.push(EOS);
        seq
    }

    /// A training batch with `latents` latents. With at least `k + 1` (enough for the whole
    /// mirrored half and the end marker) every sequence is whole and latents before the mirror
    /// are not scored. With fewer (the paper's setting, section 5.1), each batch is cut at one
    /// random end inside the mirror and its last `latents` positions are scored, so the model
    /// learns to copy from every mirrored position with few latents.
    pub fn batch(&self, batch: usize, latents: usize, rng: &mut impl Rng) -> Batch {
        let n = self.seq_len();
        let latents = latents.clamp(1, n);
        let end = if latents >= self.min_latents() { n } else { rng.gen_range(self.k + 1..=n) };
        let seqs: Vec<Vec<usize>> = (0..batch).map(|_| self.sequence(rng)).collect();
        self.window(&seqs, end, latents, 0, None)
    }

    /// The first `end` tokens of each sequence with the last `latents` as latents; positions
    /// before `scored_from` and before the mirror are not scored.
    fn window(
        &self,
        seqs: &[Vec<usize>],
        end: usize,
        latents: usize,
        scored_from: usize,
        sequences: Option<Vec<usize>>,
    ) -> Batch {
        let latents = latents.min(end);
        let prefix_len = end - latents;
        let mut ids = Vec::with_capacity(seqs.len() * end);
        let mut targets = Vec::with_capacity(seqs.len() * latents);
        for seq in seqs {
            ids.extend(&seq[..end]);
            for pos in prefix_len..end {
                // Position pos predicts seq[pos + 1]; the mirrored half starts at k + 1.
                let scored = pos + 1 > self.k && pos >= scored_from;
                targets.push(if scored { seq[pos + 1] } else { IGNORE });
            }
        }
        Batch { ids, batch: seqs.len(), seq_len: end, prefix_len, targets, sequences, images: None }
    }

    /// Fixed held-out batches from their own seed (never the training stream). With fewer
    /// latents than `k + 1`, each group of sequences is scored in as many passes as it takes
    /// (windows ending at `n`, `n − latents`, …), every mirrored position exactly once.
    pub fn held_out(&self, batches: usize, batch: usize, latents: usize, seed: u64) -> Vec<Batch> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = self.seq_len();
        let latents = latents.clamp(1, n);
        if latents >= self.min_latents() {
            return (0..batches).map(|_| self.batch(batch, latents, &mut rng)).collect();
        }
        let mut out = Vec::new();
        for group in 0..batches {
            let seqs: Vec<Vec<usize>> = (0..batch).map(|_| self.sequence(&mut rng)).collect();
            let ids: Vec<usize> = (group * batch..(group + 1) * batch).collect();
            let mut end = n;
            while end > self.k {
                let from = end.saturating_sub(latents);
                out.push(self.window(&seqs, end, latents, from, Some(ids.clone())));
                end = from;
            }
        }
        out
    }
}
