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

    /// A batch with `latents` latents (at least `k + 1`); latents before the mirrored half are
    /// not scored.
    pub fn batch(&self, batch: usize, latents: usize, rng: &mut impl Rng) -> Batch {
        let n = self.seq_len();
        let latents = latents.clamp(self.min_latents(), n);
        let prefix_len = n - latents;
        let mut ids = Vec::with_capacity(batch * n);
        let mut targets = Vec::with_capacity(batch * latents);
        for _ in 0..batch {
            let seq = self.sequence(rng);
            ids.extend(&seq[..n]);
            for pos in prefix_len..n {
                // Position pos predicts seq[pos + 1]; the mirrored half starts at k + 1.
                targets.push(if pos + 1 > self.k { seq[pos + 1] } else { IGNORE });
            }
        }
        Batch { ids, batch, seq_len: n, prefix_len, targets }
    }

    /// Fixed held-out batches from their own seed (never the training stream).
    pub fn held_out(&self, batches: usize, batch: usize, latents: usize, seed: u64) -> Vec<Batch> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..batches).map(|_| self.batch(batch, latents, &mut rng)).collect()
    }
}
