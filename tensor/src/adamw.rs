//! One AdamW step for one parameter in one pass (Loshchilov & Hutter, 2019; the optimiser is
//! `nn::optim`): from the parameter `x`, its gradient `g` and the moments `m`, `v`,
//!
//! `m' = β₁m + (1−β₁)g`, `v' = β₂v + (1−β₂)g²`, `x' = d·x − lr · (m'/c₁) / (√(v'/c₂) + ε)`
//!
//! with `d = 1 − lr·λ` (decoupled weight decay) or 1, and the bias corrections `c₁ = 1 − β₁ᵗ`,
//! `c₂ = 1 − β₂ᵗ`. Composed from elementwise ops the step makes eight temporaries the size of
//! the parameter; for a 131k-row position table that was the peak of a whole training step.
//! Devices do it in one pass, in the order of [`Tensor::adamw_step_composed`] (the reference
//! it is tested against), so on the CPU the two agree to the last bit.

use crate::backend::Owned;
use crate::bail;
use crate::error::{fmt_shape, Result};
use crate::tensor::Tensor;

/// The scalars of one AdamW step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWStep {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// What `x` is multiplied by first: `1 − lr·λ` for a decayed parameter, else 1 (which
    /// leaves every value as it is).
    pub decay: f32,
    /// `1 − β₁ᵗ`.
    pub c1: f32,
    /// `1 − β₂ᵗ`.
    pub c2: f32,
}

impl AdamWStep {
    /// One parameter's new value from its moments, the arithmetic of every device.
    #[inline]
    pub fn apply(&self, x: f32, g: f32, m: f32, v: f32) -> [f32; 3] {
        let m = m * self.beta1 + g * (1.0 - self.beta1);
        let v = v * self.beta2 + g * g * (1.0 - self.beta2);
        let denom = (v / self.c2).sqrt() + self.eps;
        [x * self.decay - m / self.c1 / denom * self.lr, m, v]
    }
}

impl Tensor {
    /// One AdamW step of parameter `self` with gradient `g` and moments `m`, `v` (all of one
    /// shape, on one device): the new `[x, m, v]`.
    pub fn adamw_step(&self, g: &Tensor, m: &Tensor, v: &Tensor, step: &AdamWStep) -> Result<[Tensor; 3]> {
        self.check_adamw_operands(g, m, v)?;
        let [x, g, m, v] = [self, g, m, v].map(Tensor::contiguous);
        let (x, g, m, v) = (x?, g?, m?, v?);
        let outs =
            self.kernels().adamw_step([x.operand()?, g.operand()?, m.operand()?, v.operand()?], step)?;
        Ok(outs.map(|s| Tensor::from_output(s, self.shape())))
    }

    /// The gradient and moments are on the parameter's device, with its shape.
    fn check_adamw_operands(&self, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<()> {
        let op = "adamw_step";
        for (name, t) in [("gradient", g), ("m", m), ("v", v)] {
            self.same_device(op, t)?;
            if t.shape() != self.shape() {
                bail!(
                    op,
                    "{name} has shape {}, the parameter {}",
                    fmt_shape(t.shape()),
                    fmt_shape(self.shape())
                );
            }
        }
        Ok(())
    }

    /// [`Tensor::adamw_step`] written over `self`, `m` and `v` where no other tensor shares
    /// their storage (else they are replaced by new tensors): the same values, without
    /// allocating three outputs.
    pub fn adamw_step_in_place(
        &mut self,
        g: &Tensor,
        m: &mut Tensor,
        v: &mut Tensor,
        step: &AdamWStep,
    ) -> Result<()> {
        let contiguous = [&*self, &*m, &*v].iter().all(|t| t.is_contiguous());
        if contiguous {
            self.check_adamw_operands(g, m, v)?;
            let g = g.contiguous()?;
            if let (Some(x), Some(mo), Some(vo)) = (Owned::of(self), Owned::of(m), Owned::of(v)) {
                return g.kernels().adamw_step_in_place((x, g.operand()?), (mo, vo), step);
            }
        }
        let [x, m_new, v_new] = self.adamw_step(g, m, v, step)?;
        (*self, *m, *v) = (x, m_new, v_new);
        Ok(())
    }

    /// [`Tensor::adamw_step`] composed from elementwise ops, in the same order: the reference.
    pub fn adamw_step_composed(
        &self,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        step: &AdamWStep,
    ) -> Result<[Tensor; 3]> {
        let m = m.mul_scalar(step.beta1)?.add(&g.mul_scalar(1.0 - step.beta1)?)?;
        let v = v.mul_scalar(step.beta2)?.add(&g.square()?.mul_scalar(1.0 - step.beta2)?)?;
        let x = self.mul_scalar(step.decay)?;
        let denom = v.div_scalar(step.c2)?.sqrt()?.add_scalar(step.eps)?;
        let x = x.sub(&m.div_scalar(step.c1)?.div(&denom)?.mul_scalar(step.lr)?)?;
        Ok([x, m, v])
    }
}
