//! The context of one forward pass: which tape records it, where the parameters are, whether
//! it is training (dropout on) and the random stream dropout draws from.

use std::cell::RefCell;
use std::collections::HashMap;

use autograd::{ParamId, Tape, Var};
use rand_chacha::ChaCha8Rng;

use crate::params::ParamStore;

pub struct Ctx<'a> {
    pub tape: &'a Tape,
    pub params: &'a ParamStore,
    /// Dropout and cross-attend dropout are active only when training.
    pub train: bool,
    pub rng: RefCell<&'a mut ChaCha8Rng>,
    /// Values to use instead of the store's, for parameters bound with [`Ctx::bind`]
    /// (a gradient checker feeds its own leaves through here).
    bindings: HashMap<ParamId, Var>,
}

impl<'a> Ctx<'a> {
    pub fn new(tape: &'a Tape, params: &'a ParamStore, train: bool, rng: &'a mut ChaCha8Rng) -> Self {
        Ctx { tape, params, train, rng: RefCell::new(rng), bindings: HashMap::new() }
    }

    /// Uses `value` for parameter `id` in this pass instead of lifting the stored value.
    pub fn bind(&mut self, id: ParamId, value: Var) {
        self.bindings.insert(id, value);
    }

    /// The parameter's current value, lifted onto the tape (a constant on an inference tape).
    pub fn param(&self, id: ParamId) -> Var {
        match self.bindings.get(&id) {
            Some(v) => v.clone(),
            None => self.tape.param(id, self.params.value(id)),
        }
    }
}
