//! A cache of freed CPU buffers, so big outputs do not cost page faults and zeroing.
//!
//! A fresh allocation of tens of megabytes comes from the OS as untouched pages: the first write
//! to each 4 KiB page traps into the kernel, and that costs as much as the arithmetic of a
//! bandwidth-bound op like `add`. Training allocates the same shapes every step, so buffers of
//! [`POOLED_MIN`] elements or more are kept when their tensor is dropped and handed to the next
//! request of exactly the same length (like the caching allocators of GPU frameworks).
//!
//! `uninit` buffers hold old values: only kernels that overwrite every element use them.
//! Kernels that accumulate use `zeroed`. The cache keeps at most [`POOL_MAX_BYTES`];
//! [`release_cached_memory`] empties it.

use std::collections::HashMap;
use std::sync::Mutex;

/// Buffers shorter than this many f32 (256 KiB) go straight to the system allocator.
pub const POOLED_MIN: usize = 1 << 16;
/// The most memory the cache holds on to.
pub const POOL_MAX_BYTES: usize = 2 << 30;

struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(|| Pool { free: HashMap::new(), bytes: 0 }))
}

fn take(len: usize) -> Option<Vec<f32>> {
    if len < POOLED_MIN {
        return None;
    }
    with_pool(|p| {
        let v = p.free.get_mut(&len)?.pop()?;
        p.bytes -= len * 4;
        Some(v)
    })
}

/// A buffer of `len` elements with unspecified (old) contents; the caller overwrites all of it.
pub(crate) fn uninit(len: usize) -> Vec<f32> {
    take(len).unwrap_or_else(|| vec![0.0; len])
}

/// A buffer of `len` zeros.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    match take(len) {
        Some(mut v) => {
            v.fill(0.0);
            v
        }
        None => vec![0.0; len],
    }
}

/// Gives a buffer back for reuse (or frees it when small or when the cache is full).
pub(crate) fn recycle(v: Vec<f32>) {
    let len = v.len();
    if len < POOLED_MIN || v.capacity() != len {
        return;
    }
    with_pool(|p| {
        if p.bytes + len * 4 <= POOL_MAX_BYTES {
            p.bytes += len * 4;
            p.free.entry(len).or_default().push(v);
        }
    });
}

/// Bytes currently held by the cache.
pub fn cached_bytes() -> usize {
    with_pool(|p| p.bytes)
}

/// Frees every cached buffer.
pub fn release_cached_memory() {
    with_pool(|p| {
        p.free.clear();
        p.bytes = 0;
    });
}
