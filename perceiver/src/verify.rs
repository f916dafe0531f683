//! `perceiver verify`: load a perceiver-io reference dump into this project's model and measure
//! how far the two disagree on logits, loss, every parameter's gradient and a greedy
//! continuation.
//!
//! A dump is a directory with `config.json` (`config`: the library's model config, `case`: the
//! batch sizes), `model.safetensors` (the library's state dict) and `case.safetensors`
//! (`input_ids`, `labels`, `logits`, `loss`, `grad.<name>` for every parameter, `greedy`).
//! A config with `encoder` and `decoder` objects is a Perceiver IO or Perceiver model, checked
//! by [`crate::perceiver_io::library::verify_dump`].

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use autograd::Tape;
use nn::checkpoint::{read_safetensors, TensorFile};
use nn::loss::{cross_entropy, CrossEntropy};
use nn::Ctx;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tensor::Tensor;

use crate::error::{Error, Result};
use crate::generate::{generate, Prediction, Sampling};
use crate::import::{config_from_library, library_to_project_name, load_library_weights};
use crate::model::{Input, PerceiverAr};

/// Tolerances of the comparison.
pub const LOGITS_TOL: f32 = 1e-4;
pub const LOSS_TOL: f32 = 1e-4;
/// Per gradient tensor, relative to that tensor's largest magnitude.
pub const GRAD_TOL: f32 = 1e-4;
/// Absolute, for the gradients of key biases, which are zero in exact arithmetic.
pub const KEY_BIAS_GRAD_TOL: f32 = 1e-6;

/// One tensor of ours against the reference's: whole tensors of one shape, every element
/// finite, the largest difference within a tolerance. Anything else is a failure that says
/// why; nothing is compared partially.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub name: String,
    /// The largest `|ours − reference|` (NaN when there was nothing to measure).
    pub max_abs_error: f32,
    /// What the error is measured against: 1 for absolute tolerances, the reference's
    /// largest magnitude for relative ones.
    pub scale: f32,
    pub tolerance: f32,
    /// Why the two could not be compared (shapes, missing tensors, non-finite values).
    pub problem: Option<String>,
}

impl Comparison {
    /// Compares `ours` with `reference` (values and shapes); with `relative`, the tolerance is
    /// a fraction of the reference's largest magnitude.
    pub fn new(
        name: &str,
        (ours, our_shape): (&[f32], &[usize]),
        (reference, ref_shape): (&[f32], &[usize]),
        tolerance: f32,
        relative: bool,
    ) -> Self {
        let non_finite = |values: &[f32], whose: &str| {
            let i = values.iter().position(|v| !v.is_finite())?;
            Some(format!("element {i} is {} in {whose}", values[i]))
        };
        let problem = if our_shape != ref_shape {
            Some(format!("shape {our_shape:?}, reference {ref_shape:?}"))
        } else if ours.len() != reference.len() {
            Some(format!("{} values, reference {}", ours.len(), reference.len()))
        } else {
            non_finite(ours, "ours").or_else(|| non_finite(reference, "the reference"))
        };
        if problem.is_some() {
            return Comparison { name: name.into(), max_abs_error: f32::NAN, scale: 1.0, tolerance, problem };
        }
        let max_abs_error = ours.iter().zip(reference).fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let scale = if relative {
            reference.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE)
        } else {
            1.0
        };
        Comparison { name: name.into(), max_abs_error, scale, tolerance, problem: None }
    }

    /// A tensor that one side lacks.
    pub fn missing(name: &str, why: String, tolerance: f32) -> Self {
        Comparison { name: name.into(), max_abs_error: f32::NAN, scale: 1.0, tolerance, problem: Some(why) }
    }

    /// The error as a fraction of the scale.
    pub fn relative(&self) -> f32 {
        self.max_abs_error / self.scale
    }

    /// Compared, and within tolerance (a NaN error never passes).
    pub fn passed(&self) -> bool {
        self.problem.is_none() && self.relative() <= self.tolerance
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.passed() { "ok  " } else { "FAIL" };
        match &self.problem {
            Some(p) => write!(f, "{mark} {:<62} {p}", self.name),
            None if self.scale == 1.0 => write!(
                f,
                "{mark} {:<62} max |error| {:.3e} (tolerance {:.0e})",
                self.name, self.max_abs_error, self.tolerance
            ),
            None => write!(
                f,
                "{mark} {:<62} max |error| {:.3e} = {:.2e} of its largest magnitude {:.3e} (tolerance {:.0e})",
                self.name,
                self.max_abs_error,
                self.relative(),
                self.scale,
                self.tolerance
            ),
        }
    }
}

pub struct VerifyReport {
    pub logits: Comparison,
    pub loss: Comparison,
    /// One per parameter of the model, and one failure per reference gradient the model
    /// has no parameter for.
    pub grads: Vec<Comparison>,
    /// Empty when the reference's continuation has the wrong length (nothing was generated).
    pub greedy: Vec<usize>,
    pub reference_greedy: Vec<usize>,
    /// Why the continuation was not generated, if it was not.
    pub greedy_problem: Option<String>,
}

impl VerifyReport {
    pub fn greedy_passed(&self) -> bool {
        self.greedy_problem.is_none() && self.greedy == self.reference_greedy
    }

    pub fn passed(&self) -> bool {
        self.logits.passed()
            && self.loss.passed()
            && !self.grads.is_empty()
            && self.grads.iter().all(Comparison::passed)
            && self.greedy_passed()
    }

    /// The comparisons that failed.
    pub fn failures(&self) -> Vec<&Comparison> {
        [&self.logits, &self.loss].into_iter().chain(&self.grads).filter(|c| !c.passed()).collect()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.logits)?;
        writeln!(f, "{}", self.loss)?;
        for g in &self.grads {
            writeln!(f, "{g}")?;
        }
        if self.greedy.is_empty() && self.reference_greedy.is_empty() && self.greedy_problem.is_none() {
            return Ok(()); // a dump without a continuation (encoder-decoder models)
        }
        let mark = if self.greedy_passed() { "ok  " } else { "FAIL" };
        write!(f, "{mark} greedy continuation: ")?;
        if let Some(p) = &self.greedy_problem {
            return write!(f, "{p}");
        }
        write!(f, "{} tokens", self.greedy.len())?;
        match self.greedy.iter().zip(&self.reference_greedy).position(|(a, b)| a != b) {
            Some(i) => write!(f, ", first difference at token {i}"),
            None if self.greedy.len() != self.reference_greedy.len() => {
                write!(f, ", lengths differ ({} vs {})", self.greedy.len(), self.reference_greedy.len())
            }
            None => write!(f, ", identical"),
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

/// A loss compared with the case's `loss` (the library stores it as a one-element tensor), and
/// every parameter's gradient of it with the case's `grad.<library name>` (see
/// [`compare_gradients`]).
pub(crate) fn check_loss_and_gradients(
    loss: f32,
    grads: &autograd::Gradients,
    (case, params): (&TensorFile, &nn::ParamStore),
    library_to_project_name: &dyn Fn(&str) -> Option<String>,
) -> Result<(Comparison, Vec<Comparison>)> {
    let reference_loss = case.float("loss")?;
    let loss_check = Comparison::new(
        "loss",
        (&[loss], &[1]),
        (&reference_loss.to_vec()?, reference_loss.shape()),
        LOSS_TOL,
        false,
    );
    Ok((loss_check, compare_gradients(params, grads, case, library_to_project_name)?))
}

/// The reference gradients of `case` against the model's, keyed by this project's names:
/// every parameter must have one, and every reference gradient must belong to a parameter.
pub(crate) fn compare_gradients(
    params: &nn::ParamStore,
    grads: &autograd::Gradients,
    case: &TensorFile,
    library_to_project_name: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<Comparison>> {
    let mut reference: HashMap<String, (&str, &Tensor)> = HashMap::new();
    let mut out = Vec::new();
    let mut keys: Vec<&String> = case.floats.keys().filter(|k| k.starts_with("grad.")).collect();
    keys.sort();
    for key in keys {
        let lib_name = &key["grad.".len()..];
        match library_to_project_name(lib_name).filter(|ours| params.by_name(ours).is_some()) {
            Some(ours) => {
                if let Some((other, _)) = reference.insert(ours.clone(), (lib_name, &case.floats[key])) {
                    out.push(Comparison::missing(
                        key,
                        format!("names the same parameter ({ours}) as grad.{other}"),
                        GRAD_TOL,
                    ));
                }
            }
            None => out.push(Comparison::missing(key, "the model has no such parameter".into(), GRAD_TOL)),
        }
    }
    for param in params.iter() {
        let Some((lib_name, want)) = reference.get(&param.name) else {
            out.push(Comparison::missing(
                &param.name,
                "the reference has no gradient for this parameter".into(),
                GRAD_TOL,
            ));
            continue;
        };
        // A parameter the loss does not reach has a zero gradient.
        let got = match grads.get(param.id) {
            Some(g) => g.clone(),
            None => Tensor::zeros(param.value.shape()),
        };
        // A key bias adds the same amount to every score of a query, which the softmax
        // ignores: its exact gradient is zero and both sides hold rounding noise, which has no
        // magnitude of its own to be relative to.
        let (tolerance, relative) =
            if lib_name.ends_with("k_proj.bias") { (KEY_BIAS_GRAD_TOL, false) } else { (GRAD_TOL, true) };
        out.push(Comparison::new(
            &format!("grad.{lib_name}"),
            (&got.to_vec()?, got.shape()),
            (&want.to_vec()?, want.shape()),
            tolerance,
            relative,
        ));
    }
    Ok(out)
}

/// Runs every comparison of a dump in `dir`. A dump that cannot be run at all (files
/// missing, inputs of the wrong rank, sizes that do not fit) is an `Err` naming what is wrong;
/// one that runs but disagrees is a report that does not pass.
pub fn verify_dump(dir: &Path) -> Result<VerifyReport> {
    let meta = read_json(&dir.join("config.json"))?;
    let lib = meta.get("config").ok_or_else(|| {
        Error::Config(format!("{}: no \"config\" object", dir.join("config.json").display()))
    })?;
    // Perceiver IO and Perceiver dumps have an encoder and a decoder.
    if crate::perceiver_io::library::is_encoder_decoder(lib) {
        return crate::perceiver_io::library::verify_dump(dir, lib);
    }
    let config = config_from_library(lib)?;
    let mut model = PerceiverAr::new(config.clone(), 0)?;
    load_library_weights(&mut model, &read_safetensors(&dir.join("model.safetensors"))?)?;
    let case = read_safetensors(&dir.join("case.safetensors"))?;
    let case_path = case.path.display().to_string();
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
    let &[batch, seq_len] = shape.as_slice() else {
        return Err(Error::Input(format!(
            "{case_path}: input_ids has shape {shape:?}, not [batch, seq_len]"
        )));
    };
    let tokens = ids(input_ids, "input_ids")?;
    let prefix_len = size("prefix_len")?;
    let input = Input { ids: &tokens, batch, seq_len, prefix_len };
    let tape = Tape::new();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let ctx = Ctx::new(&tape, &model.params, false, &mut rng);
    let logits = model.forward(&ctx, &input)?;
    let reference_logits = case.float("logits")?;
    let logits_check = Comparison::new(
        "logits",
        (&logits.value().to_vec()?, logits.shape()),
        (&reference_logits.to_vec()?, reference_logits.shape()),
        LOGITS_TOL,
        false,
    );
    let (label_ids, label_shape) = case.int("labels")?;
    let latents = seq_len - prefix_len;
    if label_shape.as_slice() != [batch, latents] {
        return Err(Error::Input(format!(
            "{case_path}: labels has shape {label_shape:?}, not [batch, latents] = [{batch}, {latents}]"
        )));
    }
    let labels = ids(label_ids, "labels")?;
    let loss = cross_entropy(&logits, &labels, CrossEntropy::default())?;
    drop(ctx);
    let grads = tape.backward(&loss)?;
    let (loss_check, grad_checks) = check_loss_and_gradients(
        loss.value().to_scalar()?,
        &grads,
        (&case, &model.params),
        &library_to_project_name,
    )?;

    // The greedy continuation of the first row's prompt, when the reference's has the length
    // the case says (which also bounds the work by the size of the file).
    let (gen_prompt, gen_tokens) = (size("gen_prompt")?, size("gen_tokens")?);
    if gen_prompt == 0 || gen_prompt > seq_len {
        return Err(Error::Input(format!(
            "{}: gen_prompt {gen_prompt} must be in 1..={seq_len} (the first row of input_ids)",
            dir.display()
        )));
    }
    let (reference_greedy, greedy_shape) = case.int("greedy")?;
    let reference_greedy = ids(reference_greedy, "greedy")?;
    let expected = gen_prompt.checked_add(gen_tokens);
    let (greedy, greedy_problem) = if greedy_shape.len() != 1 || Some(reference_greedy.len()) != expected {
        let problem = format!(
            "the reference has shape {greedy_shape:?}, not [gen_prompt + gen_tokens] = [{gen_prompt} + {gen_tokens}]"
        );
        (Vec::new(), Some(problem))
    } else {
        let split = |len: usize| crate::generate::default_prefix_len(len, &model);
        let prompt = &tokens[..gen_prompt];
        (
            generate(
                &model,
                prompt,
                gen_tokens,
                Sampling::GREEDY,
                0,
                Prediction::Full { prefix_len: &split },
                |_| {},
            )?,
            None,
        )
    };
    Ok(VerifyReport {
        logits: logits_check,
        loss: loss_check,
        grads: grad_checks,
        greedy,
        reference_greedy,
        greedy_problem,
    })
}
