//! Data-parallel training: the same run on several processes ("ranks"), each computing the
//! gradient of its share of every global batch, the shares' gradients summed so that every rank
//! applies the same update.
//!
//! What the ranks need of each other is small, and is all in [`Collective`]: a sum of one
//! buffer per step (every gradient, flattened into one buffer, plus the step's loss and counts:
//! one call, not one per parameter) and rank 0's decisions (stop now: out of time, solved).
//! [`Alone`] is the one-process case; with the `mpi` feature, `mpi_world::MpiWorld` is
//! Open MPI's `MPI_Allreduce` and `MPI_Bcast` through the `mpi` crate (`mpirun -np N perceiver
//! train ...`).
//!
//! How a step splits (see `Trainer::step`):
//! * Every rank draws the whole global batch from the run's data stream (the same on every
//!   rank, so a checkpoint's stream resumes on any number of ranks) and keeps rows
//!   [`share`]`(rank)`: batches are exactly those of one process with the same seed.
//! * Rank `r` scores `n_r` tokens with mean loss `L_r`; the global mean is
//!   `Σ n_r L_r / Σ n_r`, so each rank contributes `n_r ∇L_r` and everyone divides the sum by
//!   `Σ n_r`. Clipping and AdamW then run on identical gradients on every rank.
//! * Dropout draws come from a stream of rank and step (the run's dropout stream with the
//!   rank as ChaCha's stream number, positioned by the step), so a resumed run continues
//!   exactly; one process keeps drawing from the run's stream as before.
//!
//! The result equals one process's to float rounding: the per-rank means and the cross-rank
//! sum add in another order than one big mean (the equivalence test allows 1e-5 relative).

use std::ops::Range;

use autograd::Gradients;
use nn::ParamStore;
use tensor::Tensor;

use crate::error::Result;

/// What the ranks of a data-parallel run do together.
pub trait Collective {
    /// This process's index, `0..size`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Replaces `values` by its elementwise sum over all ranks (the same on every rank).
    fn sum(&self, values: &mut [f32]) -> Result<()>;
    /// Rank 0's `decision`, on every rank.
    fn root_decides(&self, decision: bool) -> Result<bool>;
}

/// One process: rank 0 of 1.
pub struct Alone;

impl Collective for Alone {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum(&self, _values: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn root_decides(&self, decision: bool) -> Result<bool> {
        Ok(decision)
    }
}

/// The rows of a batch of `batch` that rank `rank` of `size` computes: contiguous, the first
/// `batch % size` ranks one row more.
pub fn share(rank: usize, size: usize, batch: usize) -> Range<usize> {
    let (base, extra) = (batch / size, batch % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The global batch's mean-loss gradient from each rank's: every rank contributes `n_r ∇L_r`
/// (its scored tokens times the gradient of its mean), one sum over the ranks of one buffer
/// holding every gradient and the step's counts, then a division by `Σ n_r`. Replaces `grads`
/// by the result (the same on every rank) and returns the global mean loss, correct
/// predictions and scored tokens.
pub fn sum_over_ranks(
    collective: &dyn Collective,
    params: &ParamStore,
    grads: &mut Gradients,
    loss: f32,
    correct: usize,
    scored: usize,
) -> Result<(f32, usize, usize)> {
    let n = scored as f32;
    let mut buffer = Vec::new();
    for p in params.iter() {
        match grads.get(p.id) {
            Some(g) => buffer.extend(g.to_vec()?.iter().map(|x| x * n)),
            None => buffer.extend(std::iter::repeat_n(0.0, p.value.numel())),
        }
    }
    buffer.extend([loss * n, correct as f32, n]);
    collective.sum(&mut buffer)?;
    let total = buffer[buffer.len() - 1];
    let mut at = 0;
    for p in params.iter() {
        let len = p.value.numel();
        let mean: Vec<f32> = buffer[at..at + len].iter().map(|x| x / total).collect();
        grads.insert(p.id, Tensor::from_vec(mean, p.value.shape())?.to_device(&p.value.device())?);
        at += len;
    }
    Ok((buffer[at] / total, buffer[at + 1] as usize, total as usize))
}

#[cfg(feature = "mpi")]
pub mod mpi_world {
    //! [`Collective`] over MPI.

    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::environment::Universe;
    use mpi::topology::{Communicator, SimpleCommunicator};

    use super::Collective;
    use crate::error::{Error, Result};

    /// `MPI_COMM_WORLD`. MPI is finalised when this is dropped.
    pub struct MpiWorld {
        world: SimpleCommunicator,
        _universe: Universe,
    }

    impl MpiWorld {
        /// Initialises MPI (once per process). A process started without `mpirun` is a world
        /// of one.
        pub fn init() -> Result<Self> {
            let universe =
                mpi::initialize().ok_or_else(|| Error::Input("MPI was already initialised".into()))?;
            Ok(MpiWorld { world: universe.world(), _universe: universe })
        }
    }

    impl Collective for MpiWorld {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn sum(&self, values: &mut [f32]) -> Result<()> {
            let mine = values.to_vec();
            // A rank that died makes this fail, and MPI's default error handler then stops
            // every rank of the job.
            self.world.all_reduce_into(&mine[..], values, SystemOperation::sum());
            Ok(())
        }
        fn root_decides(&self, decision: bool) -> Result<bool> {
            let mut flag = u8::from(decision);
            self.world.process_at_rank(0).broadcast_into(&mut flag);
            Ok(flag != 0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_cover_the_batch_once() {
        for size in 1..6 {
            for batch in size..20 {
                let mut next = 0;
                for rank in 0..size {
                    let s = share(rank, size, batch);
                    assert_eq!(s.start, next);
                    assert!(!s.is_empty());
                    next = s.end;
                }
                assert_eq!(next, batch);
            }
        }
    }
}
