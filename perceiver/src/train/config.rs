//! What a run is: the task, the model, the optimiser and the bookkeeping, all of it saved in
//! every checkpoint so that a run resumes exactly.

use std::path::PathBuf;

use nn::optim::{AdamWConfig, Schedule};
use serde::{Deserialize, Serialize};

use crate::config::PerceiverArConfig;
use crate::error::{Error, Result};
use crate::models::ModelConfig;
use crate::perceiver_io::{InputConfig, OutputConfig};

/// What the model learns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskConfig {
    /// The copy task with `k` random bytes (Perceiver AR).
    Copy { k: usize },
    /// Bytes of a file, the last `valid_fraction` held out; crops are `min_len..=max_seq_len`
    /// (Perceiver AR).
    Text { path: PathBuf, valid_fraction: f32, min_len: usize },
    /// Masked bytes of a file (BERT), the last `valid_fraction` held out: crops of the model's
    /// input length with each position chosen with probability `rate` (Perceiver IO).
    MaskedText { path: PathBuf, valid_fraction: f32, rate: f32 },
    /// Which of the drawn shapes an image of `size`×`size` pixels with Gaussian noise of
    /// standard deviation `noise` shows (Perceiver).
    Shapes { size: usize, noise: f32 },
}

impl TaskConfig {
    /// How a window of `len` tokens splits into prefix and latents at generation time, the way
    /// training split it: the copy task's prefix is the `k` bytes to mirror (so each position is
    /// computed exactly as in training); text used `min(len, max_latents)` latents.
    pub fn prefix_len(&self, len: usize, model: &PerceiverArConfig) -> usize {
        match self {
            // Whole sequences in training: the prefix is the k bytes to mirror.
            TaskConfig::Copy { k } if model.max_latents > *k => (*k).min(len.saturating_sub(1)),
            // Fewer latents: windows ended anywhere, their last max_latents positions latents.
            _ => len - len.min(model.max_latents),
        }
    }

    /// The task's data file, if it reads one.
    pub fn data_path_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            TaskConfig::Text { path, .. } | TaskConfig::MaskedText { path, .. } => Some(path),
            TaskConfig::Copy { .. } | TaskConfig::Shapes { .. } => None,
        }
    }

    /// What the task is, in a few words.
    pub fn describe(&self) -> String {
        match self {
            TaskConfig::Copy { k } => format!("copy task (k = {k})"),
            TaskConfig::Text { path, .. } => format!("text {}", path.display()),
            TaskConfig::MaskedText { path, rate, .. } => {
                format!("masked bytes of {} ({:.0} % chosen)", path.display(), 100.0 * rate)
            }
            TaskConfig::Shapes { size, noise } => format!("drawn shapes ({size}x{size}, noise {noise})"),
        }
    }

    /// Checks that `model` can learn this task, naming what does not fit.
    pub fn check_model(&self, model: &ModelConfig) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        match (self, model) {
            (
                TaskConfig::Copy { .. } | TaskConfig::Text { .. },
                ModelConfig::PerceiverAr(_) | ModelConfig::SparseTransformer(_),
            ) => Ok(()),
            (TaskConfig::MaskedText { .. }, ModelConfig::PerceiverIo(c)) => {
                use crate::data::masked::VOCAB;
                let InputConfig::Tokens { vocab_size, max_seq_len, .. } = c.input else {
                    return bad("masked bytes need a Perceiver IO model with a token input".into());
                };
                let output_vocab = match c.output {
                    OutputConfig::TiedTokens => vocab_size,
                    OutputConfig::Tokens { vocab_size } => vocab_size,
                    OutputConfig::Classes { .. } => 0,
                };
                if vocab_size != VOCAB || output_vocab != VOCAB {
                    return bad(format!(
                        "masked bytes need a vocabulary of {VOCAB} (256 bytes and the mask) in and out, got {vocab_size} and {output_vocab}"
                    ));
                }
                if c.output_queries < max_seq_len {
                    return bad(format!(
                        "masked bytes need an output query per input position: {} queries for {max_seq_len} positions",
                        c.output_queries
                    ));
                }
                Ok(())
            }
            (TaskConfig::Shapes { size, .. }, ModelConfig::PerceiverIo(c)) => {
                let classes = crate::data::shapes::CLASSES.len();
                if !matches!(c.input, InputConfig::Image { shape, .. } if shape == [*size, *size, 1]) {
                    return bad(format!(
                        "the shapes task needs a model reading images of [{size}, {size}, 1]"
                    ));
                }
                if c.output != (OutputConfig::Classes { classes }) || c.output_queries != 1 {
                    return bad(format!("the shapes task needs one output query and {classes} classes"));
                }
                Ok(())
            }
            (task, model) => {
                bad(format!("the {} cannot be learned by a {} model", task.describe(), model.family()))
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub task: TaskConfig,
    pub model: ModelConfig,
    pub batch_size: usize,
    pub steps: u64,
    /// Stop after this many seconds of training, whatever the step.
    pub time_budget_secs: Option<f64>,
    pub schedule: Schedule,
    pub adamw: AdamWConfig,
    /// Global gradient-norm limit.
    pub clip: Option<f32>,
    pub z_loss: f32,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub checkpoint_every: u64,
    /// Stop once held-out copy accuracy reaches 100 %.
    pub stop_when_solved: bool,
    pub seed: u64,
}

impl TrainConfig {
    /// Checks every field, naming the one that is out of range: a config written by hand, or
    /// read back from a damaged checkpoint, fails here rather than deep inside a step.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.task.check_model(&self.model)?;
        let bad = |m: String| Err(Error::Config(m));
        for (name, value) in [
            ("batch_size", self.batch_size as u64),
            ("eval_every", self.eval_every),
            ("eval_batches", self.eval_batches as u64),
            ("checkpoint_every", self.checkpoint_every),
        ] {
            if value == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        let positive = [
            ("schedule.peak (the learning rate)", self.schedule.peak),
            ("adamw.eps", self.adamw.eps),
            ("clip", self.clip.unwrap_or(1.0)),
        ];
        for (name, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return bad(format!("{name} must be a finite number above 0, got {v}"));
            }
        }
        let unit = [
            ("adamw.beta1", self.adamw.beta1),
            ("adamw.beta2", self.adamw.beta2),
            ("schedule.min_ratio", self.schedule.min_ratio),
        ];
        for (name, v) in unit {
            if !(0.0..=1.0).contains(&v) {
                return bad(format!("{name} must be in [0, 1], got {v}"));
            }
        }
        for (name, v) in [("adamw.weight_decay", self.adamw.weight_decay), ("z_loss", self.z_loss)] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("{name} must be a finite number of at least 0, got {v}"));
            }
        }
        if let Some(t) = self.time_budget_secs {
            if !(t.is_finite() && t > 0.0) {
                return bad(format!("time_budget_secs must be a finite number above 0, got {t}"));
            }
        }
        match self.task {
            TaskConfig::Text { valid_fraction, .. } | TaskConfig::MaskedText { valid_fraction, .. }
                if !(valid_fraction > 0.0 && valid_fraction < 1.0) =>
            {
                bad(format!("the held-out fraction must be in (0, 1), got {valid_fraction}"))
            }
            TaskConfig::MaskedText { rate, .. } if !(rate > 0.0 && rate < 1.0) => {
                bad(format!("the masking rate must be in (0, 1), got {rate}"))
            }
            TaskConfig::Shapes { size, noise } if size < 8 || !(noise.is_finite() && noise >= 0.0) => bad(
                format!("shapes need a size of at least 8 pixels and a finite noise of at least 0, got {size} and {noise}"),
            ),
            _ => Ok(()),
        }
    }

    /// A lower bound on the bytes one training step holds at its peak: the attention
    /// probabilities every layer saves for the backward pass (`[batch, heads, queries, keys]`),
    /// the logits, and for Perceiver AR each parameter with its gradient and two AdamW moments.
    /// Only tensors that must exist are counted, so a config over this bound cannot run at all.
    pub fn step_memory_lower_bound(&self) -> u128 {
        let b = self.batch_size as u128;
        match &self.model {
            ModelConfig::PerceiverAr(m) => {
                let h = m.heads as u128;
                let (n, l) = (m.max_seq_len as u128, m.max_latents as u128);
                let scores = b * h * l * (n + m.self_attention_layers as u128 * l);
                let logits = b * l * m.vocab_size as u128;
                4 * (4 * m.parameter_count() + scores + logits)
            }
            // The fused attention saves no scores: the logits of the scored positions.
            ModelConfig::SparseTransformer(m) => 4 * b * m.max_latents as u128 * m.vocab_size as u128,
            ModelConfig::PerceiverIo(c) => {
                let inputs = match c.input {
                    InputConfig::Tokens { max_seq_len, .. } => max_seq_len,
                    InputConfig::Image { shape, .. } => shape[0] * shape[1],
                } as u128;
                let (n, o) = (c.latents as u128, c.output_queries as u128);
                let self_layers = (c.self_layers_per_block * c.self_blocks) as u128;
                let scores = b
                    * (c.cross.heads as u128 * n * inputs * c.cross_layers as u128
                        + c.self_attention.heads as u128 * n * n * self_layers
                        + c.decoder.heads as u128 * o * n);
                let vocab = match (&c.output, &c.input) {
                    (OutputConfig::Classes { classes }, _) => *classes,
                    (OutputConfig::Tokens { vocab_size }, _) => *vocab_size,
                    (OutputConfig::TiedTokens, InputConfig::Tokens { vocab_size, .. }) => *vocab_size,
                    (OutputConfig::TiedTokens, _) => 0,
                };
                4 * (scores + b * o * vocab as u128)
            }
        }
    }
}
