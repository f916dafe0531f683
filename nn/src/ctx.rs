//! The context of one forward pass: which tape records it, where the parameters are, whether
//! it is training (dropout on) and the random stream dropout draws from.

use std::cell::RefCell;

use autograd::{ParamId, Tape, Var};
use rand_chacha::ChaCha8Rng;

use crate::params::ParamStore;

pub struct Ctx<'a> {
    pub tape: &'a Tape,
    pub params: &'a ParamStore,
    /// Dropout and cross-attend dropout are active only when training.
    pub train: bool,
    pub rng: RefCell<&'a mut ChaCha8Rng>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        tape: &'a Tape,
        params: &'a ParamStore,
        train: bool,
        rng: &'a mut ChaCha8Rng,
    ) -> Self {
        Ctx {
            tape,
            params,
            train,
            rng: RefCell::new(rng),
        }
    }

    /// The parameter's current value, lifted onto the tape (a constant on an inference tape).
    pub fn param(&self, id: ParamId) -> Var {
        self.tape.param(id, self.params.value(id))
    }
}
