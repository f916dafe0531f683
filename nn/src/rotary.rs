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

use std::sync::{Arc, Mutex};

use autograd::Var;
use rayon::prelude::*;
use tensor::Tensor;

use crate::error::{Error, Result};

/// The frequencies of a rotary encoding.
#[derive(Clone, Debug)]
pub struct Rotary {
    /// Rotated channels per head (even).
    pub dims: usize,
    /// `θ_i` for `i < dims/2`.
    pub inv_freq: Vec<f32>,
    /// The last tables made, for the next call with the same positions.
    last: LastTables,
}

/// The positions and tables of the last [`Rotary::tables`] call. A
/// training step at a fixed length asks for the same positions every step, and at 131k
/// positions their two million sines and cosines took 50 ms, 3 % of a `long-131k` step. The
/// tables are tensors sharing their storage, so keeping them costs nothing while a step uses
/// them.
#[derive(Clone, Default)]
struct LastTables(Arc<Mutex<Option<KeptTables>>>);

struct KeptTables {
    positions: Vec<f32>,
    tables: RotaryTables,
}

impl std::fmt::Debug for LastTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LastTables")
    }
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
        Ok(Rotary { dims, inv_freq, last: LastTables::default() })
    }

    /// Tables for `rows` rows of `n` positions each (`positions` is row-major `[rows, n]`).
    pub fn tables(&self, positions: &[f32], rows: usize, n: usize) -> Result<RotaryTables> {
        let mut last = self.last.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = last.as_ref() {
            // The tables' shape is `[rows, 1, n, dims]`.
            if kept.positions == positions && kept.tables.cos.shape()[..3] == [rows, 1, n] {
                return Ok(kept.tables.clone());
            }
        }
        let tables = self.compute(positions, rows, n)?;
        *last = Some(KeptTables { positions: positions.to_vec(), tables: tables.clone() });
        Ok(tables)
    }

    /// [`Rotary::tables`] computed, the positions shared among the threads.
    fn compute(&self, positions: &[f32], rows: usize, n: usize) -> Result<RotaryTables> {
        let width = self.dims;
        let mut cos = vec![0.0; positions.len() * width];
        let mut sin = vec![0.0; cos.len()];
        const POSITIONS_PER_TASK: usize = 1024;
        let chunk = POSITIONS_PER_TASK * width.max(1);
        cos.par_chunks_mut(chunk)
            .zip(sin.par_chunks_mut(chunk))
            .zip(positions.par_chunks(POSITIONS_PER_TASK))
            .for_each(|((cos, sin), positions)| {
                let angles = positions.iter().flat_map(|&p| self.inv_freq.iter().map(move |&f| p * f));
                for ((c, s), angle) in cos.chunks_exact_mut(2).zip(sin.chunks_exact_mut(2)).zip(angles) {
                    // The angle is rounded to f32 as in the reference; cos/sin are then exact.
                    let (sin_a, cos_a) = (angle as f64).sin_cos();
                    c.fill(cos_a as f32);
                    s.fill(sin_a as f32);
                }
            });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The tables kept from the last call serve only the same positions: other positions, row
    /// counts or lengths get tables of their own, equal to those of a fresh encoding.
    #[test]
    fn kept_tables_serve_only_the_same_positions() {
        let rotary = Rotary::new(8, 10000.0).unwrap();
        let bits = |t: &RotaryTables| {
            let (c, s) = (t.cos.to_vec().unwrap(), t.sin.to_vec().unwrap());
            c.iter().chain(&s).map(|x| x.to_bits()).collect::<Vec<_>>()
        };
        let fresh = |positions: &[f32], rows, n| {
            bits(&Rotary::new(8, 10000.0).unwrap().tables(positions, rows, n).unwrap())
        };
        let long: Vec<f32> = (0..3000).map(|p| p as f32).collect();
        let shifted: Vec<f32> = (1..3001).map(|p| p as f32).collect();
        let two_rows: Vec<f32> = (0..1500).chain(0..1500).map(|p| p as f32).collect();
        for (positions, rows, n) in
            [(&long, 1, 3000), (&long, 1, 3000), (&shifted, 1, 3000), (&two_rows, 2, 1500), (&long, 1, 3000)]
        {
            assert_eq!(bits(&rotary.tables(positions, rows, n).unwrap()), fresh(positions, rows, n));
        }
        // A position's angles are computed in f64 from the f32 angle, then rounded.
        let t = rotary.tables(&[3.0], 1, 1).unwrap();
        let angle = 3.0f32 * rotary.inv_freq[1];
        assert_eq!(t.cos.to_vec().unwrap()[2], (angle as f64).cos() as f32);
        assert_eq!(t.sin.to_vec().unwrap()[3], (angle as f64).sin() as f32);
    }
}
