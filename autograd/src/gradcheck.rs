//! A finite-difference gradient checker.
//!
//! For a function `f` of some input tensors, take a fixed random tensor `r` of `f`'s output
//! shape and the scalar loss `L = Σ f(x) ⊙ r` (a random `r` exercises every output element
//! with a different weight, so a rule that mixes up elements cannot pass by symmetry). The
//! analytic gradient comes from one backward pass. The numeric one perturbs each input
//! element in turn: `∂L/∂x_j ≈ (L(x + ε e_j) - L(x - ε e_j)) / 2ε`, with the sums taken in f64.
//! Central differences have error `O(ε²)`; in f32 the rounding of `f` adds `O(u/ε)`, so ε
//! around 1e-2 balances the two for values of order one.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tensor::{bail, Result, Tensor};

use crate::tape::Tape;
use crate::var::Var;

/// Settings of a gradient check. Element `j` passes when
/// `|analytic - numeric| <= atol + rtol * max(|analytic|, |numeric|)`.
#[derive(Clone, Debug)]
pub struct GradCheck {
    /// Finite-difference step.
    pub eps: f32,
    pub atol: f32,
    pub rtol: f32,
    /// Seed of the random output weights `r`.
    pub seed: u64,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck { eps: 1e-2, atol: 1e-3, rtol: 1e-2, seed: 0 }
    }
}

/// What a passing check measured.
#[derive(Clone, Debug, Default)]
pub struct GradCheckReport {
    /// Largest `|analytic - numeric|` over all checked elements.
    pub max_abs_error: f32,
    /// Number of input elements checked.
    pub checked: usize,
}

/// `Σ f(x) ⊙ r` in f64, evaluated without recording.
fn weighted_sum(f: &impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor], r: &[f32]) -> Result<f64> {
    let vars: Vec<Var> = inputs.iter().cloned().map(Var::constant).collect();
    let out = f(&vars)?.value().to_vec()?;
    Ok(out.iter().zip(r).map(|(&y, &w)| y as f64 * w as f64).sum())
}

/// Checks the backward rules used by `f` at `inputs` against central differences. Returns an
/// error naming the first input element whose gradients disagree.
pub fn check_gradients(
    f: impl Fn(&[Var]) -> Result<Var>,
    inputs: &[Tensor],
    config: &GradCheck,
) -> Result<GradCheckReport> {
    let inputs: Vec<Tensor> = inputs.iter().map(|t| t.contiguous()).collect::<Result<_>>()?;
    // Analytic: one backward pass of L = Σ f(x) ⊙ r.
    let tape = Tape::new();
    let leaves: Vec<Var> = inputs.iter().map(|t| tape.leaf(t)).collect();
    let out = f(&leaves)?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let r = Tensor::randn(out.shape(), 1.0, &mut rng);
    let r_host = r.to_vec()?;
    let loss = out.mul(&Var::constant(r))?.sum_all()?;
    if !loss.is_tracked() {
        bail!("gradcheck", "the output does not depend on any input");
    }
    let grads = tape.backward(&loss)?;

    let mut report = GradCheckReport::default();
    for (i, (x, leaf)) in inputs.iter().zip(&leaves).enumerate() {
        let analytic = match grads.wrt(leaf) {
            Some(g) => g.to_vec()?,
            None => vec![0.0; x.numel()],
        };
        if analytic.len() != x.numel() {
            bail!(
                "gradcheck",
                "input {i}: gradient has {} elements, input has {}",
                analytic.len(),
                x.numel()
            );
        }
        let base = x.to_vec()?;
        for j in 0..base.len() {
            let eval = |delta: f32| -> Result<f64> {
                let mut data = base.clone();
                data[j] += delta;
                let mut perturbed = inputs.clone();
                perturbed[i] = Tensor::from_vec(data, x.shape())?;
                weighted_sum(&f, &perturbed, &r_host)
            };
            let numeric = ((eval(config.eps)? - eval(-config.eps)?) / (2.0 * config.eps as f64)) as f32;
            let a = analytic[j];
            let err = (a - numeric).abs();
            let ok = approx::relative_eq!(a, numeric, epsilon = config.atol, max_relative = config.rtol);
            if !ok || !a.is_finite() {
                bail!(
                    "gradcheck",
                    "input {i} (shape {:?}) element {j}: analytic {a} vs numeric {numeric} (|diff| {err}, atol {}, rtol {})",
                    x.shape(),
                    config.atol,
                    config.rtol
                );
            }
            report.max_abs_error = report.max_abs_error.max(err);
            report.checked += 1;
        }
    }
    Ok(report)
}
