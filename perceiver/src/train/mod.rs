//! The training loop: sample a batch, run the model on a recording tape, take the
//! cross-entropy of the scored targets, backpropagate, clip, and let AdamW update the weights;
//! evaluate on held-out data now and then, log metrics as JSON lines, and checkpoint.
//!
//! A run is fully described by [`TrainConfig`] and its [`RunState`] (step and random streams),
//! so a checkpoint resumes to exactly the parameters an uninterrupted run would reach.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use autograd::Tape;
use nn::loss::{cross_entropy, CrossEntropy};
use nn::optim::{clip_grad_norm, AdamW};
use nn::{Ctx, ParamStore};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tensor::Tensor;

use crate::checkpoint::{self, RunState};
use crate::data::{Batch, IGNORE};
use crate::distributed::{share, sum_over_ranks, Alone, Collective};
use crate::error::{Error, Result};
use crate::models::Model;
use crate::run_dir::RunDir;

mod config;
mod evaluate;
mod task;

pub use config::{TaskConfig, TrainConfig};
use evaluate::score;
pub use evaluate::{evaluate, EvalResult, Metric};
pub use task::Task;
/// Checkpoints kept in a run directory: the newest two, so the one before the last survives
/// anything that happens to the last.
pub const KEEP_CHECKPOINTS: usize = 2;

/// Training steps between metrics lines (plus the first step).
pub const LOG_EVERY: u64 = 10;

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
    pub model: Model,
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
        crate::memory::ensure_fits(config.step_memory_lower_bound(), || {
            let what = match config.task {
                TaskConfig::Copy { k } => format!("the copy task with k = {k}: "),
                _ => String::new(),
            };
            format!("one training step ({what}batch {}, {})", config.batch_size, config.model.shape())
        })?;
        let model = Model::new(&config.model, config.seed)?;
        let task = Task::load(&config.task, &config.model)?;
        let held_out = task.eval_batches(&config, None, None)?;
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
        load_params(trainer.model.params_mut(), &ck.params, &ck.dir)?;
        trainer.optimizer.load_state(trainer.model.params(), &ck.optimizer, ck.state.step)?;
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
        let global = self.task.train_batch(&self.config, &mut self.state.data_rng)?;
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
        let ctx = Ctx::new(&tape, self.model.params(), true, dropout_rng);
        let logits = self.model.logits(&ctx, &batch)?;
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
                self.model.params(),
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
        let ids: Vec<_> = self.model.params().iter().map(|p| p.id).collect();
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
        self.optimizer.update(self.model.params_mut(), &grads, lr)?;
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
        evaluate(&self.model, self.task.metric(), &self.held_out)
    }

    /// Writes a checkpoint into the run `run`.
    pub fn save(&self, run: &RunDir) -> Result<PathBuf> {
        let params: Vec<(String, Tensor)> =
            self.model.params().iter().map(|p| (p.name.clone(), p.value.clone())).collect();
        checkpoint::save(
            run,
            &self.config,
            &self.state,
            &params,
            &self.optimizer.state(self.model.params()),
            KEEP_CHECKPOINTS,
        )
    }
}

/// Copies saved parameters into a model's `params`: every parameter must be there with its
/// shape, and nothing else may be.
pub fn load_params(
    params_of_model: &mut ParamStore,
    params: &std::collections::HashMap<String, Tensor>,
    dir: &Path,
) -> Result<()> {
    let names: Vec<String> = params_of_model.iter().map(|p| p.name.clone()).collect();
    for name in &names {
        let value = params
            .get(name)
            .ok_or_else(|| Error::Input(format!("{}: the checkpoint has no tensor {name}", dir.display())))?;
        params_of_model
            .set_by_name(name, value.clone())
            .map_err(|e| Error::Input(format!("{}: {e}", dir.display())))?;
    }
    if let Some(extra) = params.keys().find(|k| !names.contains(k)) {
        return Err(Error::Input(format!("{}: unexpected tensor {extra} for this model", dir.display())));
    }
    Ok(())
}

/// Loads a model (config and weights) from a checkpoint, for eval and generate.
pub fn load_model(path: &Path) -> Result<(Model, TrainConfig)> {
    let ck = checkpoint::load(path)?;
    let mut model = Model::new(&ck.config.model, 0)?;
    load_params(model.params_mut(), &ck.params, &ck.dir)?;
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
