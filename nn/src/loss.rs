//! Cross-entropy over a vocabulary, with an ignore index and z-loss.
//!
//! For logits `z` and target `y`: `log Z = log Σ_v exp(z_v)`, `nll = log Z − z_y`. The loss is
//! the mean of `nll` over positions whose target is not the ignore index, plus
//! `z_loss · mean((log Z)²)`, which keeps the normaliser near 1 (PaLM's z-loss). Backward (from
//! the log-sum-exp and gather rules): `dz = softmax(z) − onehot(y)` per counted position, plus
//! `2 z_loss log Z · softmax(z)`, divided by the count.

use autograd::Var;
use tensor::Tensor;

use crate::error::{Error, Result};

/// Options of [`cross_entropy`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CrossEntropy {
    /// Targets equal to this are not counted.
    pub ignore_index: Option<usize>,
    /// Weight of the `(log Z)²` term.
    pub z_loss: f32,
}

/// Mean loss of `logits` `[..., V]` against `targets` (one per position, row-major).
pub fn cross_entropy(logits: &Var, targets: &[usize], opts: CrossEntropy) -> Result<Var> {
    let shape = logits.shape().to_vec();
    let vocab =
        *shape.last().ok_or_else(|| Error::Config("cross_entropy: logits need a vocabulary axis".into()))?;
    let rows: usize = shape[..shape.len() - 1].iter().product();
    if targets.len() != rows {
        return Err(Error::Config(format!(
            "cross_entropy: {} targets for logits of shape {shape:?}",
            targets.len()
        )));
    }
    let counted: Vec<bool> = targets.iter().map(|&t| Some(t) != opts.ignore_index).collect();
    if let Some((i, &t)) = targets.iter().enumerate().find(|(i, &t)| counted[*i] && t >= vocab) {
        return Err(Error::Config(format!(
            "cross_entropy: target {t} at position {i} is outside the vocabulary of {vocab}"
        )));
    }
    let count = counted.iter().filter(|&&c| c).count();
    if count == 0 {
        return Err(Error::Config("cross_entropy: every target is ignored".into()));
    }
    let flat = logits.reshape(&[rows, vocab])?;
    let picks: Vec<usize> = targets.iter().zip(&counted).map(|(&t, &c)| if c { t } else { 0 }).collect();
    let log_z = flat.log_sum_exp_keepdim(1)?; // [rows, 1]
    let picked = flat.gather(1, &picks, &[rows, 1])?;
    let weights: Vec<f32> = counted.iter().map(|&c| c as u8 as f32).collect();
    let weights = Var::constant(Tensor::from_vec(weights, &[rows, 1])?.to_device(&logits.value().device())?);
    let nll = log_z.sub(&picked)?.mul(&weights)?.sum_all()?.div_scalar(count as f32)?;
    if opts.z_loss == 0.0 {
        return Ok(nll);
    }
    let z = log_z.square()?.mul(&weights)?.sum_all()?.div_scalar(count as f32)?.mul_scalar(opts.z_loss)?;
    Ok(nll.add(&z)?)
}
