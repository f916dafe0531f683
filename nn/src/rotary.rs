//! Rotary position encoding (Su et al., 2021), interleaved pairs, over the first `dims`
//! channels of each head.
//!
//! Channel pair `(2i, 2i+1)` of a query or key at absolute position `p` is rotated by the angle
//! `p·θ_i`, `θ_i = base^(-2i/dims)`:
//! `(x₀, x₁) ↦ (x₀ cos − x₁ sin, x₁ cos + x₀ sin)`, written as `x ⊙ cos + rotate_half(x) ⊙ sin`
//! with `rotate_half(x₀, x₁, x₂, x₃, …) = (−x₁, x₀, −x₃, x₂, …)`. The dot product of a rotated
//! query and key then depends only on their distance. Channels past `dims` pass unchanged (the
//! perceiver-io model rotates half of each head when it also has absolute embeddings; the paper
//! rotates a fraction).
//!
//! Positions are right-aligned as in Perceiver AR: a tensor of `L` queries (the latents) uses the
//! last `L` positions of the table, so the same table serves keys (prefix + latents) and queries.
//! Backward: rotation is linear and orthogonal, so the gradient is rotated by the opposite
//! angle: `Var::rotate_pairs` records one node that keeps only the tables.

use autograd::Var;
use tensor::Tensor;

use crate::error::{Error, Result};

/// The frequencies of a rotary encoding.
#[derive(Clone, Debug)]
pub struct Rotary {
    /// Rotated channels per head (even).
    pub dims: usize,
    /// `θ_i` for `i < dims/2`.
    pub inv_freq: Vec<f32>,
}

/// cos and sin of every position's angles, shape `[rows, 1, n, dims]` (rows: 1 or batch).
#[derive(Clone, Debug)]
pub struct RotaryTables {
    cos: Tensor,
    sin: Tensor,
    dims: usize,
}

impl Rotary {
    /// `θ_i = 1 / base^(2i/dims)`, computed in f32 as PyTorch does.
    pub fn new(dims: usize, base: f32) -> Result<Self> {
        if !dims.is_multiple_of(2) {
            return Err(Error::Config(format!("rotary dims must be even, got {dims}")));
        }
        let inv_freq = (0..dims / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / dims as f32)).collect();
        Ok(Rotary { dims, inv_freq })
    }

    /// Tables for `rows` rows of `n` positions each (`positions` is row-major `[rows, n]`).
    pub fn tables(&self, positions: &[f32], rows: usize, n: usize) -> Result<RotaryTables> {
        let mut cos = Vec::with_capacity(rows * n * self.dims);
        let mut sin = Vec::with_capacity(cos.capacity());
        for &p in positions {
            for &f in &self.inv_freq {
                // The angle is rounded to f32 as in the reference; cos/sin are then exact.
                let angle = (p * f) as f64;
                let (s, c) = angle.sin_cos();
                cos.extend([c as f32, c as f32]);
                sin.extend([s as f32, s as f32]);
            }
        }
        let shape = [rows, 1, n, self.dims];
        Ok(RotaryTables {
            cos: Tensor::from_vec(cos, &shape)?,
            sin: Tensor::from_vec(sin, &shape)?,
            dims: self.dims,
        })
    }
}

impl RotaryTables {
    /// Number of positions in the table.
    pub fn len(&self) -> usize {
        self.cos.shape()[2]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rotates `x` `[B, H, L, D]` by the last `L` positions of the table.
    /// Taken by value: where nothing else holds `x`, the rotation is written over it.
    pub fn apply(&self, x: Var) -> Result<Var> {
        let (l, d) = (x.shape()[2], x.shape()[3]);
        let n = self.len();
        if l > n || self.dims > d {
            return Err(Error::Config(format!(
                "rotary table of {n} positions x {} dims cannot rotate {:?}",
                self.dims,
                x.shape()
            )));
        }
        let device = x.value().device();
        let cos = self.cos.narrow(2, n - l, l)?.to_device(&device)?;
        let sin = self.sin.narrow(2, n - l, l)?.to_device(&device)?;
        Ok(x.rotate_pairs_owned(&cos, &sin)?)
    }
}
