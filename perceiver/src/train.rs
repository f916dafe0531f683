//! The training loop: sample a batch, run the model on a recording tape, take the
//! cross-entropy of the scored latents, backpropagate, clip, and let AdamW update the weights;
//! evaluate on held-out data now and then, log metrics as JSON lines, and checkpoint.
//!
//! A run is fully described by [`TrainConfig`] and its [`RunState`] (step and random streams),
//! so a checkpoint resumes to exactly the parameters an uninterrupted run would reach.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autograd::Tape;
use nn::loss::{cross_entropy, CrossEntropy};
use nn::optim::{clip_grad_norm, AdamW, AdamWConfig, Schedule};
use nn::Ctx;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tensor::Tensor;

use crate::checkpoint::{self, RunState};
use crate::config::PerceiverArConfig;
use crate::data::copy::CopyTask;
use crate::data::text::TextData;
use crate::data::{Batch, IGNORE};
use crate::distributed::{share, sum_over_ranks, Alone, Collective};
use crate::error::{Error, Result};
use crate::model::PerceiverAr;
use crate::run_dir::RunDir;

/// What the model learns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskConfig {
    /// The copy task with `k` random bytes.
    Copy { k: usize },
    /// Bytes of a file, the last `valid_fraction` held out; crops are `min_len..=max_seq_len`.
    Text { path: PathBuf, valid_fraction: f32, min_len: usize },
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
            TaskConfig::Copy { .. } => len - len.min(model.max_latents),
            TaskConfig::Text { .. } => len - len.min(model.max_latents),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub task: TaskConfig,
    pub model: PerceiverArConfig,
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
        if let TaskConfig::Text { valid_fraction, .. } = self.task {
            if !(valid_fraction > 0.0 && valid_fraction < 1.0) {
                return bad(format!("the held-out fraction must be in (0, 1), got {valid_fraction}"));
            }
        }
        Ok(())
    }

    /// A lower bound on the bytes one training step holds at its peak: each parameter with its
    /// gradient and two AdamW moments, the attention probabilities every layer saves for the
    /// backward pass (`[batch, heads, latents, keys]`), and the logits. Only tensors that
    /// must exist are counted, so a config over this bound cannot run at all.
    pub fn step_memory_lower_bound(&self) -> u128 {
        let m = &self.model;
        let (b, h) = (self.batch_size as u128, m.heads as u128);
        let (n, l) = (m.max_seq_len as u128, m.max_latents as u128);
        let scores = b * h * l * (n + m.self_attention_layers as u128 * l);
        let logits = b * l * m.vocab_size as u128;
        4 * (4 * m.parameter_count() + scores + logits)
    }
}

/// Held-out results.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvalResult {
    pub loss: f32,
    /// Fraction of scored tokens predicted right (argmax).
    pub accuracy: f32,
    /// Copy task: fraction of sequences with every mirrored token right.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sequence_accuracy: Option<f32>,
    /// Text: loss in bits per byte.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bits_per_byte: Option<f32>,
    pub tokens: usize,
    pub latents: usize,
}

/// The data source of a task.
pub enum Task {
    Copy(CopyTask),
    Text(TextData),
}

/// Checkpoints kept in a run directory: the newest two, so the one before the last survives
/// anything that happens to the last.
pub const KEEP_CHECKPOINTS: usize = 2;

/// Training steps between metrics lines (plus the first step).
pub const LOG_EVERY: u64 = 10;

/// Seed offset of the held-out copy sequences: a stream training never draws from.
const HELD_OUT_SEED: u64 = 0x005e_ed0f_4e1d_0075;

impl Task {
    pub fn load(config: &TaskConfig, model: &PerceiverArConfig) -> Result<Task> {
        match config {
            TaskConfig::Copy { k } => {
                let task = CopyTask { k: *k };
                if *k == 0 || task.seq_len() > model.max_seq_len {
                    return Err(Error::Config(format!(
                        "the copy task with k = {k} needs k >= 1 and max_seq_len >= {}",
                        task.seq_len()
                    )));
                }
                Ok(Task::Copy(task))
            }
            TaskConfig::Text { path, valid_fraction, min_len } => {
                if *min_len == 0 || *min_len > model.max_seq_len {
                    return Err(Error::Config(format!(
                        "min crop length {min_len} must be in 1..={}",
                        model.max_seq_len
                    )));
                }
                Ok(Task::Text(TextData::load(path, *valid_fraction, model.max_seq_len)?))
            }
        }
    }

    fn train_batch(&self, config: &TrainConfig, rng: &mut ChaCha8Rng) -> Batch {
        let m = &config.model;
        match (self, &config.task) {
            (Task::Copy(t), _) => t.batch(config.batch_size, m.max_latents, rng),
            (Task::Text(t), TaskConfig::Text { min_len, .. }) => {
                t.batch(config.batch_size, *min_len, m.max_seq_len, m.max_latents, rng)
            }
            (Task::Text(_), _) => unreachable!("task built from its config"),
        }
    }

    /// Held-out batches with `latents` latents; text windows step by `stride` (at most
    /// `latents`; `None`: `latents`, each window scoring all its latents).
    pub fn eval_batches(
        &self,
        config: &TrainConfig,
        latents: usize,
        stride: Option<usize>,
    ) -> Result<Vec<Batch>> {
        let m = &config.model;
        if latents == 0 || latents > m.max_seq_len {
            return Err(Error::Input(format!("latents must be in 1..={}, got {latents}", m.max_seq_len)));
        }
        let stride = stride.unwrap_or(latents);
        if stride == 0 || stride > latents {
            return Err(Error::Input(format!("stride must be in 1..={latents} (the latents), got {stride}")));
        }
        if stride != latents && !self.is_text() {
            return Err(Error::Input("a stride applies to text evaluation only".into()));
        }
        match self {
            Task::Copy(t) => {
                Ok(t.held_out(config.eval_batches, config.batch_size, latents, config.seed ^ HELD_OUT_SEED))
            }
            Task::Text(t) => {
                let windows = TextData::eval_windows(
                    &t.valid,
                    m.max_seq_len,
                    latents,
                    stride,
                    config.eval_batches.saturating_mul(config.batch_size),
                );
                // Stack windows into batches of `batch_size` rows.
                Ok(windows
                    .chunks(config.batch_size)
                    .map(|group| Batch {
                        ids: group.iter().flat_map(|b| b.ids.iter().copied()).collect(),
                        batch: group.len(),
                        seq_len: group[0].seq_len,
                        prefix_len: group[0].prefix_len,
                        targets: group.iter().flat_map(|b| b.targets.iter().copied()).collect(),
                        sequences: None,
                    })
                    .collect())
            }
        }
    }

    pub fn is_text(&self) -> bool {
        matches!(self, Task::Text(_))
    }
}

/// Loss (summed over scored targets), correct predictions and per-row all-correct flags.
fn score(logits: &Tensor, batch: &Batch) -> Result<(f64, usize, Vec<bool>)> {
    let vocab = *logits.shape().last().unwrap();
    let values = logits.to_vec()?;
    let latents = batch.latents();
    let mut loss = 0.0f64;
    let mut correct = 0;
    let mut rows_ok = vec![true; batch.batch];
    for (i, &t) in batch.targets.iter().enumerate() {
        if t == IGNORE {
            continue;
        }
        let row = &values[i * vocab..(i + 1) * vocab];
        let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let lse = m as f64 + row.iter().map(|&v| ((v - m) as f64).exp()).sum::<f64>().ln();
        loss += lse - row[t] as f64;
        let argmax = row.iter().enumerate().fold(0, |best, (j, &v)| if v > row[best] { j } else { best });
        if argmax == t {
            correct += 1;
        } else {
            rows_ok[i / latents] = false;
        }
    }
    Ok((loss, correct, rows_ok))
}

/// Evaluates `model` on held-out batches.
pub fn evaluate(model: &PerceiverAr, task: &Task, batches: &[Batch]) -> Result<EvalResult> {
    evaluate_scored(model, task.is_text(), batches)
}

/// [`evaluate`] given whether the tokens are text (reported in bits per token, which for this
/// project's byte-level text is bits per byte) or copy-task sequences (exact-sequence accuracy).
pub fn evaluate_scored(model: &PerceiverAr, text: bool, batches: &[Batch]) -> Result<EvalResult> {
    let (mut loss, mut correct, mut tokens) = (0.0f64, 0, 0);
    // Whether every scored token of each sequence was right (a sequence may span batches).
    let mut exact: std::collections::BTreeMap<usize, bool> = Default::default();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for batch in batches {
        let tape = Tape::inference();
        let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
        let logits = model.forward(&ctx, &batch.input())?;
        let (l, c, ok) = score(logits.value(), batch)?;
        loss += l;
        correct += c;
        tokens += batch.scored();
        let next = exact.len();
        for (row, ok) in ok.into_iter().enumerate() {
            let id = batch.sequences.as_ref().map_or(next + row, |ids| ids[row]);
            *exact.entry(id).or_insert(true) &= ok;
        }
    }
    let (rows, rows_ok) = (exact.len(), exact.values().filter(|&&o| o).count());
    if tokens == 0 {
        return Err(Error::Input("no held-out tokens to evaluate".into()));
    }
    let mean = (loss / tokens as f64) as f32;
    Ok(EvalResult {
        loss: mean,
        accuracy: correct as f32 / tokens as f32,
        sequence_accuracy: (!text).then(|| rows_ok as f32 / rows as f32),
        bits_per_byte: text.then(|| mean / std::f32::consts::LN_2),
        tokens,
        latents: batches.first().map_or(0, |b| b.latents()),
    })
}

/// One training step's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct StepStats {
    pub step: u64,
    pub loss: f32,
    pub accuracy: f32,
    pub lr: f32,
    pub grad_norm: f32,
    pub tokens: usize,
}

/// A run in progress: the model, the optimizer, the data and the random streams.
pub struct Trainer {
    pub config: TrainConfig,
    pub model: PerceiverAr,
    pub optimizer: AdamW,
    pub task: Task,
    pub state: RunState,
    held_out: Vec<Batch>,
    /// The other ranks of a data-parallel run ([`Alone`] for one process).
    collective: Box<dyn Collective>,
}

impl Trainer {
    /// A fresh run.
    pub fn new(config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let (m, task) = (&config.model, &config.task);
        crate::memory::ensure_fits(config.step_memory_lower_bound(), || {
            let what = match task {
                TaskConfig::Copy { k } => format!("the copy task with k = {k}: "),
                TaskConfig::Text { .. } => String::new(),
            };
            format!(
                "one training step ({what}batch {}, context {}, latents {}, channels {}, heads {}, layers {})",
                config.batch_size, m.max_seq_len, m.max_latents, m.channels, m.heads, m.self_attention_layers
            )
        })?;
        let model = PerceiverAr::new(config.model.clone(), config.seed)?;
        let task = Task::load(&config.task, &config.model)?;
        let held_out = task.eval_batches(&config, config.model.max_latents, None)?;
        let state = RunState {
            step: 0,
            data_rng: ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(1)),
            dropout_rng: ChaCha8Rng::seed_from_u64(config.seed.wrapping_add(2)),
            elapsed_secs: 0.0,
        };
        Ok(Trainer {
            optimizer: AdamW::new(config.adamw),
            config,
            model,
            task,
            state,
            held_out,
            collective: Box::new(Alone),
        })
    }

    /// Continues the run saved at `path` (a checkpoint or a run directory).
    pub fn resume(path: &Path) -> Result<Self> {
        let ck = checkpoint::load(path)?;
        let mut trainer = Trainer::new(ck.config)?;
        load_params(&mut trainer.model, &ck.params, &ck.dir)?;
        trainer.optimizer.load_state(&trainer.model.params, &ck.optimizer, ck.state.step)?;
        trainer.state = ck.state;
        Ok(trainer)
    }

    /// Moves the model and the optimizer state to `device` (a run's device is a runtime choice,
    /// not part of its config: a checkpoint resumes on any device).
    pub fn to_device(&mut self, device: &tensor::Device) -> Result<()> {
        self.model.to_device(device)?;
        Ok(self.optimizer.to_device(device)?)
    }

    /// Makes this one rank of a data-parallel run (see [`crate::distributed`]).
    pub fn join(&mut self, collective: Box<dyn Collective>) -> Result<()> {
        if collective.size() > self.config.batch_size {
            return Err(Error::Config(format!(
                "a batch of {} cannot be shared by {} ranks: each needs at least one row",
                self.config.batch_size,
                collective.size()
            )));
        }
        self.collective = collective;
        Ok(())
    }

    /// This process's rank and the number of ranks.
    pub fn rank(&self) -> (usize, usize) {
        (self.collective.rank(), self.collective.size())
    }

    /// Rank 0's decision, on every rank.
    pub fn root_decides(&self, decision: bool) -> Result<bool> {
        self.collective.root_decides(decision)
    }

    /// One step on one global batch (this rank's share of it, when there are several).
    pub fn step(&mut self) -> Result<StepStats> {
        let (rank, size) = self.rank();
        let global = self.task.train_batch(&self.config, &mut self.state.data_rng);
        let global_tokens = global.batch * global.seq_len;
        let batch = if size > 1 { global.rows(share(rank, size, global.batch)) } else { global };
        let tape = Tape::new();
        // Several ranks draw dropout from streams of rank and step; one keeps the run's stream.
        let mut rank_rng;
        let dropout_rng = if size > 1 {
            rank_rng = self.state.dropout_rng.clone();
            rank_rng.set_stream(rank as u64 + 1);
            rank_rng.set_word_pos(u128::from(self.state.step) << 40);
            &mut rank_rng
        } else {
            &mut self.state.dropout_rng
        };
        let ctx = Ctx::new(&tape, &self.model.params, true, dropout_rng);
        let logits = self.model.forward(&ctx, &batch.input())?;
        let opts = CrossEntropy { ignore_index: Some(IGNORE), z_loss: self.config.z_loss };
        let loss = cross_entropy(&logits, &batch.targets, opts)?;
        let (_, mut correct, _) = score(logits.value(), &batch)?;
        let mut loss_value = loss.value().to_scalar()?;
        drop(ctx);
        let mut grads = tape.backward(&loss)?;
        let mut scored = batch.scored();
        if size > 1 {
            let summed = sum_over_ranks(
                &*self.collective,
                &self.model.params,
                &mut grads,
                loss_value,
                correct,
                scored,
            )?;
            (loss_value, correct, scored) = summed;
        }
        if !loss_value.is_finite() {
            return Err(Error::Input(format!("the loss became {loss_value} at step {}", self.state.step)));
        }
        let ids: Vec<_> = self.model.params.iter().map(|p| p.id).collect();
        let grad_norm = match self.config.clip {
            Some(max) => clip_grad_norm(&mut grads, &ids, max)?,
            None => clip_grad_norm(&mut grads, &ids, f32::INFINITY)?,
        };
        if !grad_norm.is_finite() {
            return Err(Error::Input(format!(
                "the gradient norm became {grad_norm} at step {}",
                self.state.step
            )));
        }
        let lr = self.config.schedule.lr(self.state.step);
        self.optimizer.update(&mut self.model.params, &grads, lr)?;
        self.state.step += 1;
        Ok(StepStats {
            step: self.state.step,
            loss: loss_value,
            accuracy: correct as f32 / scored.max(1) as f32,
            lr,
            grad_norm,
            tokens: global_tokens,
        })
    }

    /// Held-out evaluation with the training latents.
    pub fn evaluate(&self) -> Result<EvalResult> {
        evaluate(&self.model, &self.task, &self.held_out)
    }

    /// Writes a checkpoint into the run `run`.
    pub fn save(&self, run: &RunDir) -> Result<PathBuf> {
        let params: Vec<(String, Tensor)> =
            self.model.params.iter().map(|p| (p.name.clone(), p.value.clone())).collect();
        checkpoint::save(
            run,
            &self.config,
            &self.state,
            &params,
            &self.optimizer.state(&self.model.params),
            KEEP_CHECKPOINTS,
        )
    }
}

/// Copies saved parameters into `model`: every parameter must be there with its shape.
pub fn load_params(
    model: &mut PerceiverAr,
    params: &std::collections::HashMap<String, Tensor>,
    dir: &Path,
) -> Result<()> {
    let names: Vec<String> = model.params.iter().map(|p| p.name.clone()).collect();
    for name in &names {
        let value = params
            .get(name)
            .ok_or_else(|| Error::Input(format!("{}: the checkpoint has no tensor {name}", dir.display())))?;
        model
            .params
            .set_by_name(name, value.clone())
            .map_err(|e| Error::Input(format!("{}: {e}", dir.display())))?;
    }
    if let Some(extra) = params.keys().find(|k| !names.contains(k)) {
        return Err(Error::Input(format!("{}: unexpected tensor {extra} for this model", dir.display())));
    }
    Ok(())
}

/// Loads a model (config and weights) from a checkpoint, for eval and generate.
pub fn load_model(path: &Path) -> Result<(PerceiverAr, TrainConfig)> {
    let ck = checkpoint::load(path)?;
    let mut model = PerceiverAr::new(ck.config.model.clone(), 0)?;
    load_params(&mut model, &ck.params, &ck.dir)?;
    Ok((model, ck.config))
}

/// Appends JSON lines to `OUT/metrics.jsonl`.
pub struct MetricsLog {
    file: std::fs::File,
    pub path: PathBuf,
}

impl MetricsLog {
    pub fn open(out: &Path) -> Result<Self> {
        std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
        let path = out.join("metrics.jsonl");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { file, path })
    }

    pub fn write(
        &mut self,
        kind: &str,
        value: &impl Serialize,
        extra: &[(&str, serde_json::Value)],
    ) -> Result<()> {
        let mut v =
            serde_json::to_value(value).map_err(|e| Error::Json { path: self.path.clone(), source: e })?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("kind".into(), kind.into());
            for (k, x) in extra {
                obj.insert((*k).into(), x.clone());
            }
        }
        writeln!(self.file, "{v}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Evaluates on held-out data, logs the result and reports it.
fn evaluate_and_log(
    trainer: &Trainer,
    log: &mut MetricsLog,
    on_event: &mut impl FnMut(Event),
) -> Result<EvalResult> {
    let result = trainer.evaluate()?;
    let extra = [("step", trainer.state.step.into()), ("elapsed_secs", trainer.state.elapsed_secs.into())];
    log.write("eval", &result, &extra)?;
    on_event(Event::Eval { step: trainer.state.step, result: &result });
    Ok(result)
}

/// Runs `trainer` until its step count or time budget, writing into `run` and reporting
/// through `on_event`. In a data-parallel run only rank 0 has a `run` (it logs, evaluates and
/// writes checkpoints); the others pass `None` and follow rank 0's decisions to stop.
pub fn run(
    trainer: &mut Trainer,
    run: Option<&RunDir>,
    mut on_event: impl FnMut(Event),
) -> Result<Option<EvalResult>> {
    let mut log = run.map(|r| MetricsLog::open(r.path())).transpose()?;
    let started = Instant::now();
    let base_elapsed = trainer.state.elapsed_secs;
    let mut last = Instant::now();
    let mut tokens_since = 0usize;
    let mut last_eval = None;
    let out_of_time = |t: &Trainer| t.config.time_budget_secs.is_some_and(|b| t.state.elapsed_secs >= b);
    while trainer.state.step < trainer.config.steps {
        if trainer.root_decides(out_of_time(trainer))? {
            on_event(Event::OutOfTime);
            break;
        }
        let stats = trainer.step()?;
        trainer.state.elapsed_secs = base_elapsed + started.elapsed().as_secs_f64();
        tokens_since += stats.tokens;
        let dt = last.elapsed().as_secs_f64();
        let tokens_per_sec = tokens_since as f64 / dt.max(1e-9);
        if let Some(log) = log.as_mut().filter(|_| stats.step.is_multiple_of(LOG_EVERY) || stats.step == 1) {
            log.write(
                "train",
                &stats,
                &[
                    ("tokens_per_sec", tokens_per_sec.into()),
                    ("elapsed_secs", trainer.state.elapsed_secs.into()),
                ],
            )?;
            last = Instant::now();
            tokens_since = 0;
        }
        on_event(Event::Step { stats: &stats, tokens_per_sec });
        let done = trainer.state.step >= trainer.config.steps;
        if trainer.state.step.is_multiple_of(trainer.config.eval_every) || done {
            let mut solved = false;
            if let Some(log) = log.as_mut() {
                let result = evaluate_and_log(trainer, log, &mut on_event)?;
                solved = trainer.config.stop_when_solved && result.sequence_accuracy == Some(1.0);
                last_eval = Some(result);
            }
            if trainer.root_decides(solved)? {
                if let Some(run) = run {
                    trainer.save(run)?;
                }
                on_event(Event::Solved);
                break;
            }
        }
        if trainer.state.step.is_multiple_of(trainer.config.checkpoint_every) || done {
            if let Some(run) = run {
                let dir = trainer.save(run)?;
                on_event(Event::Checkpoint { step: trainer.state.step, dir: &dir });
            }
        }
    }
    if trainer.root_decides(out_of_time(trainer))? {
        // Leave a checkpoint of where the budget ran out.
        if let (Some(run), Some(log)) = (run, log.as_mut()) {
            let result = evaluate_and_log(trainer, log, &mut on_event)?;
            last_eval = Some(result);
            let dir = trainer.save(run)?;
            on_event(Event::Checkpoint { step: trainer.state.step, dir: &dir });
        }
    }
    Ok(last_eval)
}

/// What the loop reports as it goes.
pub enum Event<'a> {
    Step { stats: &'a StepStats, tokens_per_sec: f64 },
    Eval { step: u64, result: &'a EvalResult },
    Checkpoint { step: u64, dir: &'a Path },
    Solved,
    OutOfTime,
}
