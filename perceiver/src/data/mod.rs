//! Training data: the copy task of the paper (section 5.1) and byte-level text; and, for the
//! encoder-decoder models, masked bytes ([`masked`]) and drawn shapes ([`shapes`]).
//!
//! Both produce [`Batch`]es: token ids `[batch, seq_len]`, the split into prefix and latents,
//! and one target per latent (the next token), with [`IGNORE`] where a latent is not scored.

pub mod copy;
pub mod masked;
pub mod shapes;
pub mod text;

/// Target value of latents that are not scored.
pub const IGNORE: usize = usize::MAX;

/// One batch of training or evaluation data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub ids: Vec<usize>,
    pub batch: usize,
    pub seq_len: usize,
    pub prefix_len: usize,
    /// `[batch, seq_len - prefix_len]`: the token after each latent, or [`IGNORE`].
    pub targets: Vec<usize>,
    /// Which sequence each row belongs to, when one sequence is scored over several batches
    /// (the copy task with fewer latents than mirrored bytes); `None`: every row is its own.
    pub sequences: Option<Vec<usize>>,
}

impl Batch {
    pub fn input(&self) -> crate::model::Input<'_> {
        crate::model::Input {
            ids: &self.ids,
            batch: self.batch,
            seq_len: self.seq_len,
            prefix_len: self.prefix_len,
        }
    }

    pub fn latents(&self) -> usize {
        self.seq_len - self.prefix_len
    }

    /// Rows `rows` of the batch (a rank's share of it).
    pub fn rows(&self, rows: std::ops::Range<usize>) -> Batch {
        let (n, l) = (self.seq_len, self.latents());
        Batch {
            ids: self.ids[rows.start * n..rows.end * n].to_vec(),
            batch: rows.len(),
            seq_len: self.seq_len,
            prefix_len: self.prefix_len,
            targets: self.targets[rows.start * l..rows.end * l].to_vec(),
            sequences: self.sequences.as_ref().map(|s| s[rows].to_vec()),
        }
    }

    /// Number of scored targets.
    pub fn scored(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}
