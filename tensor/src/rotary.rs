//! Rotation of interleaved channel pairs, the arithmetic of rotary position encodings (Su et
//! al., 2021): `(x₀, x₁) ↦ (x₀ cos − x₁ sin, x₁ cos + x₀ sin)` for each pair of the first
//! `dims` channels of the last axis, the rest passed through.
//!
//! Written as `x ⊙ cos + rotate_half(x) ⊙ sin` with `rotate_half(x₀, x₁, …) = (−x₁, x₀, …)`
//! and the tables holding each angle's cos and sin twice (once per channel of its pair). The
//! rotation is orthogonal, so its backward is the rotation by the opposite angle:
//! `g.rotate_pairs(cos, −sin)`, which needs no saved activations (see `autograd`). Devices do
//! it in one pass; [`Tensor::rotate_pairs_composed`] is the same from elementwise ops.

use crate::bail;
use crate::error::{fmt_shape, Result};
use crate::tensor::Tensor;

impl Tensor {
    /// Rotates the pairs of the first `cos.shape().last()` channels of the last axis by the
    /// angles whose cos and sin are `cos` and `sin` (both broadcastable to `self` with that
    /// many channels); the other channels pass through.
    pub fn rotate_pairs(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let op = "rotate_pairs";
        let (Some(&d), Some(&dims)) = (self.shape().last(), cos.shape().last()) else {
            bail!(op, "needs at least one axis");
        };
        if cos.shape() != sin.shape() || dims % 2 != 0 || dims > d {
            bail!(
                op,
                "tables {} and {} must be equal with an even number of channels, at most {d} of {}",
                fmt_shape(cos.shape()),
                fmt_shape(sin.shape()),
                fmt_shape(self.shape())
            );
        }
        for t in [cos, sin] {
            self.same_device(op, t)?;
        }
        // The tables broadcast to x's shape, keeping their own channel count last.
        let mut table_shape = self.shape().to_vec();
        *table_shape.last_mut().expect("rank checked") = dims;
        let (lc, ls) = (cos.layout.broadcast_to(&table_shape)?, sin.layout.broadcast_to(&table_shape)?);
        let s = self.kernels().rotate_pairs(self.operand()?, cos.operand_as(&lc)?, sin.operand_as(&ls)?)?;
        Ok(Tensor::from_output(s, self.shape()))
    }

    /// [`Tensor::rotate_pairs`] composed from elementwise ops, as the reference the one-pass
    /// kernels are tested against.
    pub fn rotate_pairs_composed(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (d, dims) = (self.shape()[self.rank() - 1], cos.shape()[cos.rank() - 1]);
        let axis = self.rank() - 1;
        let rot = self.narrow(axis, 0, dims)?;
        let rotated = rot.mul(cos)?.add(&rotate_half(&rot)?.mul(sin)?)?;
        if dims == d {
            return Ok(rotated);
        }
        Tensor::cat(&[&rotated, &self.narrow(axis, dims, d - dims)?], axis)
    }
}

/// `(x₀, x₁, x₂, x₃, …) ↦ (−x₁, x₀, −x₃, x₂, …)` along the last axis.
fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let shape = x.shape().to_vec();
    let r = shape.len();
    let mut pairs = shape.clone();
    pairs[r - 1] /= 2;
    pairs.push(2);
    let p = x.reshape(&pairs)?;
    let (even, odd) = (p.narrow(r, 0, 1)?, p.narrow(r, 1, 1)?);
    Tensor::cat(&[&odd.neg()?, &even], r)?.reshape(&shape)
}
