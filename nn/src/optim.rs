//! AdamW (Loshchilov & Hutter, 2019), global-norm gradient clipping, and learning-rate schedules.
//!
//! AdamW step `t` for a parameter `x` with gradient `g`:
//! `x ← x − lr·λ·x` (decoupled weight decay, only for parameters marked `decay`),
//! `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `x ← x − lr · (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)`.

use std::collections::HashMap;

use autograd::{Gradients, ParamId};
use serde::{Deserialize, Serialize};
use tensor::{AdamWStep, Tensor};

use crate::error::{Error, Result};
use crate::params::ParamStore;

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// AdamW's moments for every parameter, and the step count.
pub struct AdamW {
    pub config: AdamWConfig,
    pub step: u64,
    moments: HashMap<ParamId, (Tensor, Tensor)>,
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        AdamW { config, step: 0, moments: HashMap::new() }
    }

    /// One update of every parameter that has a gradient, each in one fused pass
    /// ([`Tensor::adamw_step_in_place`]: no temporaries the size of the parameter).
    pub fn update(&mut self, params: &mut ParamStore, grads: &Gradients, lr: f32) -> Result<()> {
        self.step += 1;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.config;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for (id, decayed, x) in params.values_mut() {
            let Some(g) = grads.get(id) else { continue };
            let (mut m, mut v) = match self.moments.remove(&id) {
                Some(mv) => mv,
                None => (x.zeros_like()?, x.zeros_like()?),
            };
            let decay = if decayed && weight_decay > 0.0 { 1.0 - lr * weight_decay } else { 1.0 };
            let step = AdamWStep { lr, beta1, beta2, eps, decay, c1, c2 };
            // Over the old values where nothing else holds them (the tape has let go of them).
            x.adamw_step_in_place(g, &mut m, &mut v, &step)?;
            self.moments.insert(id, (m, v));
        }
        Ok(())
    }

    /// Moves the moments to `device`.
    pub fn to_device(&mut self, device: &tensor::Device) -> Result<()> {
        for (m, v) in self.moments.values_mut() {
            *m = m.to_device(device)?;
            *v = v.to_device(device)?;
        }
        Ok(())
    }

    /// The moments by parameter name (`m.<name>`, `v.<name>`), for checkpoints.
    pub fn state(&self, params: &ParamStore) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in params.iter() {
            if let Some((m, v)) = self.moments.get(&p.id) {
                out.push((format!("m.{}", p.name), m.clone()));
                out.push((format!("v.{}", p.name), v.clone()));
            }
        }
        out
    }

    /// Restores moments saved by [`AdamW::state`].
    pub fn load_state(
        &mut self,
        params: &ParamStore,
        tensors: &HashMap<String, Tensor>,
        step: u64,
    ) -> Result<()> {
        self.moments.clear();
        self.step = step;
        for p in params.iter() {
            match (tensors.get(&format!("m.{}", p.name)), tensors.get(&format!("v.{}", p.name))) {
                (Some(m), Some(v)) if m.shape() == p.value.shape() && v.shape() == p.value.shape() => {
                    self.moments.insert(p.id, (m.clone(), v.clone()));
                }
                (None, None) if step == 0 => {}
                _ => {
                    return Err(Error::Param(format!(
                        "optimizer state for {} is missing or does not match shape {:?}",
                        p.name,
                        p.value.shape()
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Scales all gradients so their joint L2 norm is at most `max_norm`; returns the norm before.
pub fn clip_grad_norm(grads: &mut Gradients, ids: &[ParamId], max_norm: f32) -> Result<f32> {
    let mut total = 0.0f64;
    for id in ids {
        if let Some(g) = grads.get(*id) {
            total += g.square()?.sum_all()?.to_scalar()? as f64;
        }
    }
    let norm = total.sqrt() as f32;
    if norm > max_norm && norm.is_finite() {
        let scale = max_norm / (norm + 1e-6);
        for id in ids {
            if let Some(g) = grads.remove(*id) {
                grads.insert(*id, g.mul_scalar(scale)?);
            }
        }
    }
    Ok(norm)
}

/// How the learning rate moves after warmup.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decay {
    Constant,
    Cosine,
}

/// Linear warmup from 0 to `peak` over `warmup` steps, then constant or a cosine down to
/// `min_ratio · peak` at `total` steps.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct Schedule {
    pub peak: f32,
    pub warmup: u64,
    pub total: u64,
    pub decay: Decay,
    pub min_ratio: f32,
}

impl Schedule {
    /// Learning rate for step `step` (0-based).
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.peak * (step + 1) as f32 / self.warmup as f32;
        }
        match self.decay {
            Decay::Constant => self.peak,
            Decay::Cosine => {
                let span = self.total.saturating_sub(self.warmup).max(1) as f32;
                let t = ((step - self.warmup) as f32 / span).min(1.0);
                let min = self.min_ratio * self.peak;
                min + 0.5 * (self.peak - min) * (1.0 + (std::f32::consts::PI * t).cos())
            }
        }
    }
}
