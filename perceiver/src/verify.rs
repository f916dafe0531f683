//! `perceiver verify`: load a perceiver-io reference dump into this project's model and measure
//! how far the two disagree on logits, loss, every parameter's gradient and a greedy
//! continuation.
//!
//! A dump is a directory with `config.json` (`config`: the library's model config, `case`: the
//! batch sizes), `model.safetensors` (the library's state dict) and `case.safetensors`
//! (`input_ids`, `labels`, `logits`, `loss`, `grad.<name>` for every parameter, `greedy`).

use std::fmt;
use std::path::Path;

use autograd::Tape;
use nn::checkpoint::read_safetensors;
use nn::loss::{cross_entropy, CrossEntropy};
use nn::Ctx;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::generate::{generate, Sampling};
use crate::import::{config_from_library, library_to_project_name, load_library_weights};
use crate::model::{Input, PerceiverAr};

/// Tolerances of the comparison.
pub const LOGITS_TOL: f32 = 1e-4;
pub const LOSS_TOL: f32 = 1e-4;
/// Per gradient tensor, relative to that tensor's largest magnitude.
pub const GRAD_TOL: f32 = 1e-4;

pub struct GradError {
    pub name: String,
    pub max_abs_error: f32,
    pub reference_max: f32,
}

impl GradError {
    pub fn relative(&self) -> f32 {
        self.max_abs_error / self.reference_max.max(f32::MIN_POSITIVE)
    }
}

pub struct VerifyReport {
    pub logits_max_error: f32,
    pub loss: f32,
    pub reference_loss: f32,
    pub grads: Vec<GradError>,
    pub greedy: Vec<usize>,
    pub reference_greedy: Vec<usize>,
}

impl VerifyReport {
    pub fn loss_error(&self) -> f32 {
        (self.loss - self.reference_loss).abs()
    }

    pub fn passed(&self) -> bool {
        self.logits_max_error <= LOGITS_TOL
            && self.loss_error() <= LOSS_TOL
            && self.grads.iter().all(|g| g.relative() <= GRAD_TOL)
            && self.greedy == self.reference_greedy
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
        writeln!(
            f,
            "{} logits: max |error| {:.3e} (tolerance {LOGITS_TOL:.0e})",
            mark(self.logits_max_error <= LOGITS_TOL),
            self.logits_max_error
        )?;
        writeln!(
            f,
            "{} loss: {:.7} vs reference {:.7}, |error| {:.3e} (tolerance {LOSS_TOL:.0e})",
            mark(self.loss_error() <= LOSS_TOL),
            self.loss,
            self.reference_loss,
            self.loss_error()
        )?;
        for g in &self.grads {
            writeln!(
                f,
                "{} grad {:<56} max |error| {:.3e} = {:.2e} of its largest magnitude {:.3e}",
                mark(g.relative() <= GRAD_TOL),
                g.name,
                g.max_abs_error,
                g.relative(),
                g.reference_max
            )?;
        }
        let same = self.greedy == self.reference_greedy;
        let diff = self.greedy.iter().zip(&self.reference_greedy).position(|(a, b)| a != b);
        write!(f, "{} greedy continuation: {} tokens", mark(same), self.greedy.len())?;
        match diff {
            Some(i) if !same => write!(f, ", first difference at token {i}"),
            None if !same => {
                write!(f, ", lengths differ ({} vs {})", self.greedy.len(), self.reference_greedy.len())
            }
            _ => write!(f, ", identical"),
        }
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })
}

fn ids(values: &[i64], what: &str) -> Result<Vec<usize>> {
    values
        .iter()
        .map(|&v| usize::try_from(v).map_err(|_| Error::Input(format!("{what}: negative token id {v}"))))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// Runs every comparison of a dump in `dir`.
pub fn verify_dump(dir: &Path) -> Result<VerifyReport> {
    let meta = read_json(&dir.join("config.json"))?;
    let lib = meta.get("config").ok_or_else(|| {
        Error::Config(format!("{}: no \"config\" object", dir.join("config.json").display()))
    })?;
    let config = config_from_library(lib)?;
    let mut model = PerceiverAr::new(config.clone(), 0)?;
    load_library_weights(&mut model, &read_safetensors(&dir.join("model.safetensors"))?)?;
    let case = read_safetensors(&dir.join("case.safetensors"))?;
    let case_meta = meta.get("case");
    let size = |k: &str| -> Result<usize> {
        case_meta
            .and_then(|c| c.get(k))
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .or_else(|| case.metadata.get(k).and_then(|v| v.parse().ok()))
            .ok_or_else(|| Error::Config(format!("{}: case size {k} not given", dir.display())))
    };

    // Logits and loss of the case batch, and every gradient of that loss.
    let (input_ids, shape) = case.int("input_ids")?;
    let (batch, seq_len) = (shape[0], shape[1]);
    let tokens = ids(input_ids, "input_ids")?;
    let prefix_len = size("prefix_len")?;
    let input = Input { ids: &tokens, batch, seq_len, prefix_len };
    let tape = Tape::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let logits = model.forward(&ctx, &input)?;
    let logits_max_error = max_abs_diff(&logits.value().to_vec()?, &case.float("logits")?.to_vec()?);
    let labels = ids(&case.int("labels")?.0, "labels")?;
    let loss = cross_entropy(&logits, &labels, CrossEntropy::default())?;
    let loss_value = loss.value().to_scalar()?;
    let grads = tape.backward(&loss)?;
    let mut grad_errors = Vec::new();
    let mut names: Vec<&String> = case.floats.keys().filter(|k| k.starts_with("grad.")).collect();
    names.sort();
    for key in names {
        let lib_name = &key["grad.".len()..];
        let ours = library_to_project_name(lib_name)
            .ok_or_else(|| Error::Config(format!("{key}: unknown parameter")))?;
        let param = model
            .params
            .by_name(&ours)
            .ok_or_else(|| Error::Config(format!("{key}: no parameter {ours}")))?;
        let reference = case.floats[key].to_vec()?;
        let got = match grads.get(param.id) {
            Some(g) => g.to_vec()?,
            None => vec![0.0; reference.len()],
        };
        grad_errors.push(GradError {
            name: lib_name.to_string(),
            max_abs_error: max_abs_diff(&got, &reference),
            reference_max: reference.iter().fold(0.0f32, |m, v| m.max(v.abs())),
        });
    }

    // The greedy continuation of the first row's prompt.
    let prompt = &tokens[..size("gen_prompt")?];
    let split = |len: usize| crate::generate::default_prefix_len(len, &model);
    let greedy = generate(&model, prompt, size("gen_tokens")?, Sampling::GREEDY, 0, &split, |_| {})?;
    Ok(VerifyReport {
        logits_max_error,
        loss: loss_value,
        reference_loss: case.float("loss")?.to_vec()?[0],
        grads: grad_errors,
        greedy,
        reference_greedy: ids(&case.int("greedy")?.0, "greedy")?,
    })
}
