//! Training data: the copy task of the paper (section 5.1) and byte-level text; and, for the
//! encoder-decoder models, masked bytes ([`masked`]) and drawn shapes ([`shapes`]).
//!
//! All produce [`Batch`]es: token ids `[batch, seq_len]` (or images), and the targets. For
//! Perceiver AR the ids split into prefix and latents and each latent's target is the next
//! token; masked bytes have a target at every position (prefix 0), images one per image.
//! [`IGNORE`] marks a position that is not scored.

pub mod copy;
pub mod masked;
pub mod shapes;
pub mod text;

/// Target value of latents that are not scored.
pub const IGNORE: usize = usize::MAX;

/// Images `[batch, height, width, channels]`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    pub pixels: Vec<f32>,
    pub shape: [usize; 4],
}

impl Images {
    pub fn tensor(&self) -> tensor::Result<tensor::Tensor> {
        tensor::Tensor::from_vec(self.pixels.clone(), &self.shape)
    }

    /// Images `rows` of the batch.
    fn rows(&self, rows: std::ops::Range<usize>) -> Images {
        let per_image: usize = self.shape[1..].iter().product();
        let [_, h, w, c] = self.shape;
        Images {
            pixels: self.pixels[rows.start * per_image..rows.end * per_image].to_vec(),
            shape: [rows.len(), h, w, c],
        }
    }
}

/// One batch of training or evaluation data.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// Token ids `[batch, seq_len]` (empty for images).
    pub ids: Vec<usize>,
    pub batch: usize,
    pub seq_len: usize,
    pub prefix_len: usize,
    /// `[batch, seq_len - prefix_len]`: the token after each latent, or [`IGNORE`].
    pub targets: Vec<usize>,
    /// Which sequence each row belongs to, when one sequence is scored over several batches
    /// (the copy task with fewer latents than mirrored bytes); `None`: every row is its own.
    pub sequences: Option<Vec<usize>>,
    /// An image task's input (then `ids` is empty, `seq_len` 1 and `prefix_len` 0: one target
    /// per image).
    pub images: Option<Images>,
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

    /// Targets per row: the latents of Perceiver AR, every position of masked tokens.
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
            sequences: self.sequences.as_ref().map(|s| s[rows.clone()].to_vec()),
            images: self.images.as_ref().map(|i| i.rows(rows)),
        }
    }

    /// Number of scored targets.
    pub fn scored(&self) -> usize {
        self.targets.iter().filter(|&&t| t != IGNORE).count()
    }
}
