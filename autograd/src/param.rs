//! Stable identities for parameters.

use std::sync::atomic::{AtomicU64, Ordering};

/// Identifies one parameter tensor for its whole life, across steps and tapes: gradients come
/// back keyed by it and optimizers keep their state under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(u64);

impl ParamId {
    /// A fresh id, different from every other id made in this process.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        ParamId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for ParamId {
    fn default() -> Self {
        Self::new()
    }
}
