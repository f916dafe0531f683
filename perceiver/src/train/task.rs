//! The data of each task: training batches drawn from the run's data stream, and the fixed
//! held-out batches evaluation scores.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{TaskConfig, TrainConfig};
use super::evaluate::Metric;
use crate::data::copy::CopyTask;
use crate::data::text::TextData;
use crate::data::{masked, shapes, Batch};
use crate::error::{Error, Result};
use crate::models::ModelConfig;
use crate::perceiver_io::InputConfig;

/// The data source of a task.
pub enum Task {
    Copy(CopyTask),
    Text(TextData),
    /// Crops of `len` bytes, each position chosen with probability `rate`.
    MaskedText {
        data: TextData,
        len: usize,
        rate: f64,
    },
    Shapes {
        size: usize,
        noise: f32,
    },
}

/// Seed offset of the held-out copy sequences, masks and images: a stream training never
/// draws from.
const HELD_OUT_SEED: u64 = 0x005e_ed0f_4e1d_0075;

impl Task {
    /// The task of `config`, for `model` (checked to be one that can learn it).
    pub fn load(config: &TaskConfig, model: &ModelConfig) -> Result<Task> {
        config.check_model(model)?;
        let (max_seq_len, _) = model.sequence().unwrap_or((0, 0));
        match (config, model) {
            (TaskConfig::Copy { k }, _) => {
                let task = CopyTask { k: *k };
                if *k == 0 || task.seq_len() > max_seq_len {
                    return Err(Error::Config(format!(
                        "the copy task with k = {k} needs k >= 1 and max_seq_len >= {}",
                        task.seq_len()
                    )));
                }
                Ok(Task::Copy(task))
            }
            (TaskConfig::Text { path, valid_fraction, min_len }, _) => {
                if *min_len == 0 || *min_len > max_seq_len {
                    return Err(Error::Config(format!(
                        "min crop length {min_len} must be in 1..={max_seq_len}"
                    )));
                }
                Ok(Task::Text(TextData::load(path, *valid_fraction, max_seq_len)?))
            }
            (TaskConfig::MaskedText { path, valid_fraction, rate }, ModelConfig::PerceiverIo(model)) => {
                let InputConfig::Tokens { max_seq_len: len, .. } = model.input else {
                    unreachable!("checked by check_model")
                };
                let data = TextData::load(path, *valid_fraction, len)?;
                Ok(Task::MaskedText { data, len, rate: f64::from(*rate) })
            }
            (&TaskConfig::Shapes { size, noise }, _) => Ok(Task::Shapes { size, noise }),
            _ => unreachable!("check_model refuses other pairs"),
        }
    }

    /// How held-out results are summarised.
    pub fn metric(&self) -> Metric {
        match self {
            Task::Copy(_) => Metric::Sequences,
            Task::Text(_) => Metric::Bytes,
            Task::MaskedText { .. } => Metric::MaskedBytes,
            Task::Shapes { .. } => Metric::Classes,
        }
    }

    /// One global training batch from the run's data stream.
    pub(super) fn train_batch(&self, config: &TrainConfig, rng: &mut ChaCha8Rng) -> Result<Batch> {
        let b = config.batch_size;
        Ok(match (self, &config.task) {
            (Task::Copy(t), _) => t.batch(b, sequence(config)?.1, rng),
            (Task::Text(t), TaskConfig::Text { min_len, .. }) => {
                let (max_seq_len, max_latents) = sequence(config)?;
                t.batch(b, *min_len, max_seq_len, max_latents, rng)
            }
            (Task::MaskedText { data, len, rate }, _) => {
                let starts: Vec<usize> = (0..b).map(|_| rng.gen_range(0..=data.train.len() - len)).collect();
                masked::batch(&data.train, &starts, *len, *rate, rng)
            }
            (&Task::Shapes { size, noise }, _) => shapes::batch(b, size, noise, rng),
            (Task::Text(_), _) => unreachable!("task built from its config"),
        })
    }

    /// Held-out batches. Perceiver AR takes `latents` latents (`None`: the training latents),
    /// and text windows step by `stride` (at most `latents`; `None`: `latents`, each window
    /// scoring all its latents). Masked bytes are the held-out tail in consecutive crops, and
    /// shapes a fixed draw, both from a seed of their own, so every evaluation of a run scores
    /// the same masks and images.
    pub fn eval_batches(
        &self,
        config: &TrainConfig,
        latents: Option<usize>,
        stride: Option<usize>,
    ) -> Result<Vec<Batch>> {
        if !matches!(self, Task::Text(_)) && stride.is_some() {
            return Err(Error::Input("a stride applies to text evaluation only".into()));
        }
        if !matches!(self, Task::Copy(_) | Task::Text(_)) && latents.is_some() {
            return Err(Error::Input("latents apply to Perceiver AR only".into()));
        }
        let rows = config.eval_batches.saturating_mul(config.batch_size);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ HELD_OUT_SEED);
        let in_batches = |rows: Vec<Batch>| rows.chunks(config.batch_size).map(stack).collect();
        match self {
            Task::MaskedText { data, len, rate } => {
                let starts: Vec<usize> = (0..=data.valid.len() - len).step_by(*len).take(rows).collect();
                let windows = starts.iter().map(|&s| masked::batch(&data.valid, &[s], *len, *rate, &mut rng));
                Ok(in_batches(windows.collect()))
            }
            &Task::Shapes { size, noise } => Ok((0..config.eval_batches)
                .map(|_| shapes::batch(config.batch_size, size, noise, &mut rng))
                .collect()),
            Task::Copy(_) | Task::Text(_) => {
                let (max_seq_len, max_latents) = sequence(config)?;
                let latents = latents.unwrap_or(max_latents);
                if latents == 0 || latents > max_seq_len {
                    return Err(Error::Input(format!("latents must be in 1..={max_seq_len}, got {latents}")));
                }
                let stride = stride.unwrap_or(latents);
                if stride == 0 || stride > latents {
                    return Err(Error::Input(format!(
                        "stride must be in 1..={latents} (the latents), got {stride}"
                    )));
                }
                Ok(match self {
                    Task::Copy(t) => t.held_out(
                        config.eval_batches,
                        config.batch_size,
                        latents,
                        config.seed ^ HELD_OUT_SEED,
                    ),
                    Task::Text(t) => {
                        in_batches(TextData::eval_windows(&t.valid, max_seq_len, latents, stride, rows))
                    }
                    _ => unreachable!("matched above"),
                })
            }
        }
    }

    pub fn is_text(&self) -> bool {
        matches!(self, Task::Text(_))
    }
}

/// The longest window and the scored positions of an autoregressive run's model.
fn sequence(config: &TrainConfig) -> Result<(usize, usize)> {
    config.model.sequence().ok_or_else(|| Error::Config("this task needs an autoregressive model".into()))
}

/// One batch of the rows of `group` (token batches of one shape).
fn stack(group: &[Batch]) -> Batch {
    Batch {
        ids: group.iter().flat_map(|b| b.ids.iter().copied()).collect(),
        batch: group.iter().map(|b| b.batch).sum(),
        seq_len: group[0].seq_len,
        prefix_len: group[0].prefix_len,
        targets: group.iter().flat_map(|b| b.targets.iter().copied()).collect(),
        sequences: None,
        images: None,
    }
}
