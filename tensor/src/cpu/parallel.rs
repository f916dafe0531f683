//! When and how CPU kernels split work across `rayon` threads.
//!
//! Below a few tens of thousands of elements the cost of waking threads exceeds the work, so
//! kernels run serially there. Above it, the output is cut into a few chunks per thread; each
//! chunk is written by exactly one task, so no two threads ever touch the same output element.

use rayon::prelude::*;

/// Smallest amount of work (in elements) worth splitting across threads.
pub(crate) const PARALLEL_MIN: usize = 1 << 15;

/// Matrix products smaller than this many multiply-adds run on one thread.
pub(crate) const PARALLEL_MIN_FLOPS: usize = 1 << 18;

/// Calls `f(start, chunk)` on consecutive chunks of `out`, where `chunk` is
/// `out[start..start + chunk.len()]`: one call for small outputs, a few per thread otherwise.
/// `work_per_element` scales the threshold for kernels that do more than one read per output.
pub(crate) fn for_each_chunk(out: &mut [f32], work_per_element: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let n = out.len();
    let threads = rayon::current_num_threads();
    if threads <= 1 || n.saturating_mul(work_per_element.max(1)) < PARALLEL_MIN {
        f(0, out);
        return;
    }
    let chunk = n.div_ceil(threads * 4).max(64).next_multiple_of(64);
    out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i * chunk, c));
}

/// Like [`for_each_chunk`] but over rows of length `row`: chunks hold whole rows and `f`
/// receives the index of the first row in its chunk.
pub(crate) fn for_each_rows(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let n = out.len();
    let threads = rayon::current_num_threads();
    if row == 0 || threads <= 1 || n < PARALLEL_MIN {
        f(0, out);
        return;
    }
    let rows = n / row;
    let rows_per_chunk = rows.div_ceil(threads * 4).max(1);
    out.par_chunks_mut(rows_per_chunk * row).enumerate().for_each(|(i, c)| f(i * rows_per_chunk, c));
}

/// A raw pointer that may cross threads. Used only where each task writes a disjoint region,
/// which the code using it states at the point of use.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: the pointer is only dereferenced by tasks that write disjoint regions of one live
// allocation, which outlives the parallel section (see each use).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The pointer. A method (not field access) so closures capture the whole `SendPtr`.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
