//! Dropout: in training, zero each element with probability `p` and scale the survivors by
//! `1/(1-p)` so the expected value is unchanged; the identity otherwise. The mask is a constant,
//! so the backward is `dx = dy ⊙ mask / (1-p)`.

use autograd::Var;
use rand::Rng;
use tensor::Tensor;

use crate::ctx::Ctx;
use crate::error::Result;

pub fn dropout(ctx: &Ctx, x: &Var, p: f32) -> Result<Var> {
    if !ctx.train || p == 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let n = x.value().numel();
    let mut rng = ctx.rng.borrow_mut();
    let mask: Vec<f32> = (0..n).map(|_| if rng.gen::<f32>() < keep { 1.0 / keep } else { 0.0 }).collect();
    let mask = Tensor::from_vec(mask, x.shape())?.to_device(&x.value().device())?;
    Ok(x.mul(&Var::constant(mask))?)
}
