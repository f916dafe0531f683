//! The defaults of `perceiver train`, one preset per task, named in one place.
//!
//! The copy task's preset solves k = 16 in seconds (README: 200 steps, 12-13 s on two cores);
//! the text preset is the tinyshakespeare model of the README (2.33 bits per byte after 3000
//! steps, about 10 minutes); the masked-bytes (Perceiver IO) and shapes (Perceiver) presets
//! are the README's encoder-decoder runs. Every field can be overridden from the command line.

use std::path::PathBuf;

use nn::optim::{AdamWConfig, Decay, Schedule};

use crate::config::{CrossAttendDropout, PerceiverArConfig};
use crate::data::{copy, masked, shapes, text};
use crate::models::ModelConfig;
use crate::perceiver_io::{AttentionConfig, InputConfig, OutputConfig, PerceiverIoConfig};
use crate::sparse_transformer::{AttentionPattern, HeadLayout, SparseTransformerConfig};
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

/// Masked byte modelling with Perceiver IO: crops of `context` bytes, `latents` latents.
pub fn masked_text() -> Preset {
    Preset {
        vocab_size: masked::VOCAB,
        context: 256,
        latents: 64,
        channels: 128,
        heads: 4,
        self_attention_layers: 4,
        batch_size: 16,
        steps: 4000,
        minutes: Some(10.0),
        peak_lr: 1e-3,
        eval_every: 250,
        eval_batches: 8,
        valid_fraction: 0.1,
        out: "runs/masked",
        ..copy_task(1)
    }
}

/// Drawn shapes with the Perceiver: `context` is the image's side in pixels.
pub fn shapes() -> Preset {
    Preset {
        vocab_size: shapes::CLASSES.len(),
        context: 24,
        latents: 32,
        channels: 128,
        heads: 4,
        self_attention_layers: 2,
        batch_size: 32,
        steps: 2000,
        minutes: Some(8.0),
        peak_lr: 1e-3,
        eval_every: 100,
        eval_batches: 8,
        out: "runs/shapes",
        ..copy_task(1)
    }
}

/// Fourier bands per image axis of the shapes preset (half the side: up to the Nyquist
/// frequency of the pixel grid).
fn bands(size: usize) -> usize {
    (size / 2).max(1)
}

/// The weights' standard deviation for the encoder-decoder presets: `sqrt(2 / channels)`, so
/// a projection roughly keeps its input's scale. The library's 0.02 suits its wide models; at
/// these widths it leaves the attention uniform for hundreds of steps (a 64-channel Perceiver
/// on the shapes stayed at chance for 300 steps with it, and reached 40-55 % with 0.12-0.2).
fn encoder_init_scale(channels: usize) -> f32 {
    (2.0 / channels as f32).sqrt()
}

impl Preset {
    /// Masked bytes of `data` with Perceiver IO, `rate` of positions chosen: a token input
    /// with learned positions, the latents' encoder, and one output query per position
    /// decoding through the tied embedding (the library's masked language model).
    pub fn masked_text_config(&self, data: PathBuf, rate: f32, seed: u64) -> TrainConfig {
        let attention = AttentionConfig { heads: self.heads, qk: None, v: None, widening: 4 };
        let model = PerceiverIoConfig {
            input: InputConfig::Tokens {
                vocab_size: masked::VOCAB,
                max_seq_len: self.context,
                channels: self.channels,
            },
            latents: self.latents,
            latent_channels: self.channels,
            cross: AttentionConfig { heads: 1, ..attention },
            cross_layers: 1,
            first_cross_shared: true,
            self_attention: attention,
            self_layers_per_block: self.self_attention_layers,
            self_blocks: 1,
            first_block_shared: true,
            decoder: AttentionConfig { heads: 1, ..attention },
            decoder_residual: false,
            output_queries: self.context,
            output_query_channels: self.channels,
            output: OutputConfig::TiedTokens,
            dropout: 0.0,
            init_scale: encoder_init_scale(self.channels),
        };
        let task = TaskConfig::MaskedText { path: data, valid_fraction: self.valid_fraction, rate };
        self.run_config(task, ModelConfig::PerceiverIo(model), seed)
    }

    /// The drawn shapes with the Perceiver: images of `context`×`context` pixels with Fourier
    /// features, a single-head cross-attention into the latents (repeated, with shared weights,
    /// before the second block: the iterative cross-attend), self-attention blocks sharing
    /// their weights, and one output query decoding the class.
    pub fn shapes_config(&self, noise: f32, seed: u64) -> TrainConfig {
        let size = self.context;
        let attention = AttentionConfig { heads: self.heads, qk: None, v: None, widening: 4 };
        let model = PerceiverIoConfig {
            input: InputConfig::Image { shape: [size, size, 1], bands: bands(size) },
            latents: self.latents,
            latent_channels: self.channels,
            cross: AttentionConfig { heads: 1, ..attention },
            cross_layers: 2,
            first_cross_shared: true,
            self_attention: attention,
            self_layers_per_block: self.self_attention_layers,
            self_blocks: 2,
            first_block_shared: true,
            decoder: AttentionConfig { heads: 1, ..attention },
            decoder_residual: false,
            output_queries: 1,
            output_query_channels: self.channels,
            output: OutputConfig::Classes { classes: shapes::CLASSES.len() },
            dropout: 0.0,
            init_scale: encoder_init_scale(self.channels),
        };
        self.run_config(TaskConfig::Shapes { size, noise }, ModelConfig::PerceiverIo(model), seed)
    }

    /// A decoder-only transformer on the copy task or text (`data`): the Sparse Transformer
    /// with `pattern` spread over heads by `layout`, or the dense decoder. It has one layer
    /// more than the preset's self-attention layers, so that its parameters match Perceiver
    /// AR's (whose cross-attention layer is one more layer), and it scores the same last
    /// positions of each window.
    pub fn decoder_config(
        &self,
        pattern: AttentionPattern,
        head_layout: HeadLayout,
        data: Option<PathBuf>,
        copy_bytes: usize,
        seed: u64,
    ) -> TrainConfig {
        let model = SparseTransformerConfig {
            vocab_size: self.vocab_size,
            max_seq_len: self.context,
            max_latents: self.latents,
            channels: self.channels,
            heads: self.heads,
            layers: self.self_attention_layers + 1,
            widening: 4,
            pattern,
            head_layout,
            dropout: 0.0,
            init_scale: 0.02,
        };
        self.run_config(self.sequence_task(data, copy_bytes), ModelConfig::SparseTransformer(model), seed)
    }

    /// The copy task, or text from `data` with crops of at least a `min_crop_divisor`-th of the
    /// context.
    fn sequence_task(&self, data: Option<PathBuf>, copy_bytes: usize) -> TaskConfig {
        match data {
            Some(path) => TaskConfig::Text {
                path,
                valid_fraction: self.valid_fraction,
                min_len: (self.context / self.min_crop_divisor.max(1)).max(1),
            },
            None => TaskConfig::Copy { k: copy_bytes },
        }
    }

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
        self.run_config(self.sequence_task(data, copy_bytes), ModelConfig::PerceiverAr(model), seed)
    }

    /// The optimiser, schedule and bookkeeping of this preset around `task` and `model`.
    fn run_config(&self, task: TaskConfig, model: ModelConfig, seed: u64) -> TrainConfig {
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
