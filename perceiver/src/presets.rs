//! The defaults of `perceiver train`, one preset per task, named in one place.
//!
//! The copy task's preset solves k = 16 in seconds (README: 200 steps, 12-13 s on two cores);
//! the text preset is the tinyshakespeare model of the README (2.33 bits per byte after 3000
//! steps, about 10 minutes). Every field can be overridden from the command line.

use std::path::PathBuf;

use nn::optim::{AdamWConfig, Decay, Schedule};

use crate::config::{CrossAttendDropout, PerceiverArConfig};
use crate::data::{copy, text};
use crate::train::{TaskConfig, TrainConfig};

/// Bytes the default copy task mirrors (the paper's copy task, section 5.1, at a size solved
/// in seconds).
pub const DEFAULT_COPY_BYTES: usize = 16;

/// The largest copy task `--copy-bytes` accepts: far beyond any memory (the memory check
/// refuses much less), but small enough that its sequence length is a number.
pub const MAX_COPY_BYTES: usize = 1 << 40;

/// Which published variant a preset's model follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The perceiver-io library's model (GELU, tied output, learned positions).
    PerceiverIo,
    /// The paper's model (squared ReLU, biases, sinusoidal positions, untied output).
    Paper,
}

/// Everything `perceiver train` fills in that the command line did not say.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    pub vocab_size: usize,
    /// Longest input (prefix + latents).
    pub context: usize,
    pub latents: usize,
    pub channels: usize,
    pub heads: usize,
    pub self_attention_layers: usize,
    pub batch_size: usize,
    pub steps: u64,
    pub minutes: Option<f64>,
    pub peak_lr: f32,
    pub warmup: u64,
    /// The schedule decays to this fraction of the peak.
    pub min_lr_ratio: f32,
    pub weight_decay: f32,
    pub clip: f32,
    pub z_loss: f32,
    /// The keep-count form of cross-attend dropout (the perceiver-io variant's default).
    pub cross_attend_dropout: f32,
    pub eval_every: u64,
    pub eval_batches: usize,
    pub checkpoint_every: u64,
    /// Text: the held-out tail of the file, and the shortest training crop as a fraction of
    /// the context.
    pub valid_fraction: f32,
    pub min_crop_divisor: usize,
    pub out: &'static str,
}

/// The copy task with `k` bytes to mirror: the whole sequence is the context, and the
/// mirrored half plus the end marker are the latents.
pub fn copy_task(k: usize) -> Preset {
    let task = copy::CopyTask { k };
    Preset {
        vocab_size: copy::VOCAB,
        context: task.seq_len(),
        latents: task.min_latents(),
        channels: 128,
        heads: 4,
        self_attention_layers: 2,
        batch_size: 32,
        steps: 3000,
        minutes: None,
        peak_lr: 1e-3,
        warmup: 100,
        min_lr_ratio: 0.1,
        weight_decay: 0.01,
        clip: 1.0,
        z_loss: 1e-4,
        cross_attend_dropout: 0.0,
        eval_every: 100,
        eval_batches: 4,
        checkpoint_every: 500,
        valid_fraction: 0.0,
        min_crop_divisor: 1,
        out: "runs/copy",
    }
}

/// Byte-level language modelling of a text file.
pub fn text() -> Preset {
    Preset {
        vocab_size: text::VOCAB,
        context: 256,
        latents: 64,
        channels: 192,
        heads: 6,
        self_attention_layers: 3,
        batch_size: 16,
        minutes: Some(14.0),
        peak_lr: 2e-3,
        cross_attend_dropout: 0.1,
        eval_every: 250,
        eval_batches: 8,
        valid_fraction: 0.1,
        min_crop_divisor: 4,
        out: "runs/text",
        ..copy_task(1)
    }
}

impl Preset {
    /// The run this preset describes, for `task` (a text file or the copy task).
    pub fn train_config(
        &self,
        variant: Variant,
        data: Option<PathBuf>,
        copy_bytes: usize,
        seed: u64,
    ) -> TrainConfig {
        let (n, l, c, h, layers) =
            (self.context, self.latents, self.channels, self.heads, self.self_attention_layers);
        let mut model = match variant {
            Variant::PerceiverIo => PerceiverArConfig::perceiver_io(self.vocab_size, n, l, c, h, layers),
            Variant::Paper => PerceiverArConfig::paper(self.vocab_size, n, l, c, h, layers),
        };
        // The presets' dropout rate is tuned for the keep-count form; the Bernoulli form
        // (the paper variant) trains without it unless asked.
        model.cross_attend_dropout = match model.cross_attend_dropout_kind {
            CrossAttendDropout::KeepCount => self.cross_attend_dropout,
            CrossAttendDropout::Bernoulli => 0.0,
        };
        let task = match data {
            Some(path) => TaskConfig::Text {
                path,
                valid_fraction: self.valid_fraction,
                min_len: (n / self.min_crop_divisor.max(1)).max(1),
            },
            None => TaskConfig::Copy { k: copy_bytes },
        };
        TrainConfig {
            stop_when_solved: matches!(task, TaskConfig::Copy { .. }),
            task,
            model,
            batch_size: self.batch_size,
            steps: self.steps,
            time_budget_secs: self.minutes.map(|m| m * 60.0),
            schedule: Schedule {
                peak: self.peak_lr,
                warmup: self.warmup,
                total: self.steps,
                decay: Decay::Cosine,
                min_ratio: self.min_lr_ratio,
            },
            adamw: AdamWConfig { weight_decay: self.weight_decay, ..Default::default() },
            clip: Some(self.clip),
            z_loss: self.z_loss,
            eval_every: self.eval_every,
            eval_batches: self.eval_batches,
            checkpoint_every: self.checkpoint_every,
            seed,
        }
    }
}
