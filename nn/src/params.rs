//! Parameters as a named tree.
//!
//! Every trainable tensor lives in one [`ParamStore`] under a dotted path such as
//! `self_attention.0.attention.q_proj.weight`, with a stable [`ParamId`]. Layers keep only the
//! ids; a forward pass lifts the current values onto the tape through [`crate::Ctx`], and the
//! optimizer, the gradient clipper and checkpoints walk the store by name. The path is built
//! while the model is constructed: [`Builder::sub`] descends one level.

use std::collections::HashMap;

use autograd::ParamId;
use rand::{Rng, SeedableRng};
use tensor::Tensor;

use crate::error::{Error, Result};

/// One trainable tensor.
#[derive(Clone, Debug)]
pub struct Param {
    pub id: ParamId,
    /// Dotted path in the model's tree.
    pub name: String,
    pub value: Tensor,
    /// Whether AdamW's weight decay applies (matrices yes; norms, biases, embeddings no).
    pub decay: bool,
}

/// All parameters of a model, in creation order.
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    by_id: HashMap<ParamId, usize>,
    by_name: HashMap<String, usize>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a parameter; names are unique.
    pub fn add(&mut self, name: String, value: Tensor, decay: bool) -> Result<ParamId> {
        if self.by_name.contains_key(&name) {
            return Err(Error::Param(format!("parameter {name} registered twice")));
        }
        let id = ParamId::new();
        self.by_id.insert(id, self.params.len());
        self.by_name.insert(name.clone(), self.params.len());
        self.params.push(Param { id, name, value, decay });
        Ok(id)
    }

    pub fn get(&self, id: ParamId) -> &Param {
        &self.params[self.by_id[&id]]
    }

    pub fn value(&self, id: ParamId) -> &Tensor {
        &self.get(id).value
    }

    pub fn by_name(&self, name: &str) -> Option<&Param> {
        self.by_name.get(name).map(|&i| &self.params[i])
    }

    /// Replaces a parameter's value, which must keep its shape.
    pub fn set(&mut self, id: ParamId, value: Tensor) -> Result<()> {
        let p = &mut self.params[self.by_id[&id]];
        if p.value.shape() != value.shape() {
            return Err(Error::Param(format!(
                "{}: new value has shape {:?}, parameter has {:?}",
                p.name,
                value.shape(),
                p.value.shape()
            )));
        }
        p.value = value;
        Ok(())
    }

    /// Replaces the value of the parameter called `name`.
    pub fn set_by_name(&mut self, name: &str, value: Tensor) -> Result<()> {
        let id = self.by_name(name).ok_or_else(|| Error::Param(format!("no parameter named {name}")))?.id;
        self.set(id, value)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }

    /// Each parameter's id, weight-decay flag and value, for an update in place (which keeps
    /// the value's shape; [`ParamStore::set`] checks a replacement's).
    pub fn values_mut(&mut self) -> impl Iterator<Item = (ParamId, bool, &mut Tensor)> {
        self.params.iter_mut().map(|p| (p.id, p.decay, &mut p.value))
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Moves every parameter to `device` (a no-op for those already there).
    pub fn to_device(&mut self, device: &tensor::Device) -> Result<()> {
        for p in &mut self.params {
            p.value = p.value.to_device(device)?;
        }
        Ok(())
    }

    /// Total number of scalars.
    pub fn numel(&self) -> usize {
        self.params.iter().map(|p| p.value.numel()).sum()
    }
}

/// Creates parameters under a path, with initial values drawn from its random generator.
pub struct Builder<'a> {
    store: &'a mut ParamStore,
    rng: &'a mut dyn rand::RngCore,
    path: String,
}

impl<'a> Builder<'a> {
    pub fn new(store: &'a mut ParamStore, rng: &'a mut dyn rand::RngCore) -> Self {
        Builder { store, rng, path: String::new() }
    }

    /// A builder one level down: parameters get names `path.name.…`.
    pub fn sub(&mut self, name: impl std::fmt::Display) -> Builder<'_> {
        let path = if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) };
        Builder { store: self.store, rng: self.rng, path }
    }

    fn add(&mut self, name: &str, value: Tensor, decay: bool) -> Result<ParamId> {
        let full = if self.path.is_empty() { name.to_string() } else { format!("{}.{name}", self.path) };
        self.store.add(full, value, decay)
    }

    /// Normal(0, std) initial values.
    pub fn normal(&mut self, name: &str, shape: &[usize], std: f32, decay: bool) -> Result<ParamId> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(self.rng.gen());
        let value = Tensor::randn(shape, std, &mut rng);
        self.add(name, value, decay)
    }

    /// A constant initial value (ones for norm weights, zeros for biases).
    pub fn constant(&mut self, name: &str, shape: &[usize], value: f32) -> Result<ParamId> {
        self.add(name, Tensor::full(value, shape), false)
    }
}
