//! A cache of freed CPU buffers, so big outputs do not cost page faults and zeroing.
//!
//! A fresh allocation of tens of megabytes comes from the OS as untouched pages: the first write
//! to each 4 KiB page traps into the kernel, which zeroes it, and that costs as much as the
//! arithmetic of a bandwidth-bound op like `add`. So buffers of [`POOLED_MIN`] elements or more
//! are kept when their tensor is dropped and handed out again (like the caching allocators of
//! GPU frameworks). Requests are rounded up to a size class, eight per power of two (at most
//! 12.5 % slack), so training with a different sequence length every step still reuses memory.
//!
//! `uninit` buffers hold old values: only kernels that overwrite every element use them.
//! Kernels that accumulate use `zeroed`. The cache keeps at most [`POOL_MAX_BYTES`];
//! [`release_cached_memory`] empties it.
//!
//! What the process holds should be what its tensors need at their peak, so the cache is kept
//! from sitting beside that peak: taking a big buffer ([`TRIM_MIN`]), or a kernel taking
//! scratch, first frees cached buffers until live and cached bytes together are at most the
//! most that tensors have ever held ([`footprint_limit`]). At a long-context step's peak the
//! cache is then nearly empty; below it, it keeps what the step freed for the next one. And
//! glibc's allocator, which otherwise serves freed sizes from its heap and keeps that memory,
//! is told to map every pooled size on its own, so a buffer the pool frees goes back to the
//! system.
//!
//! Apart from the cache, the bytes held by live CPU tensors are counted ([`live_bytes`]), with
//! their high-water mark ([`peak_live_bytes`]): what a step needs at its peak, which the
//! process's resident memory exceeds by what the cache and the allocator keep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Buffers shorter than this many f32 (256 KiB) go straight to the system allocator.
pub const POOLED_MIN: usize = 1 << 16;
/// Taking a buffer of this many f32 (32 MiB) or more trims the cache to the footprint limit.
/// Such buffers are what bring a process to its peak; smaller ones come and go every layer,
/// and evicting for them would make each step fault its small buffers in again.
pub const TRIM_MIN: usize = 1 << 23;
/// The most memory the cache holds on to.
pub const POOL_MAX_BYTES: usize = 2 << 30;

struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    bytes: usize,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(|| {
        fix_malloc_thresholds();
        Pool { free: HashMap::new(), bytes: 0 }
    }))
}

/// Allocations of at least this many bytes (2 MiB) get a mapping of their own from glibc.
/// `sgemm`'s packing buffer (at most `kc · (mc + nc)` f32, 1.1 MB), allocated and freed by
/// every product, stays below it: from the heap it is reused at once, where as a mapping each
/// product would fault it in afresh and unmap it, stopping the other threads to flush their
/// TLBs (6 % of a `step-2k` step when the threshold was 256 KiB).
const MMAP_MIN_BYTES: usize = 2 << 20;

/// Free memory at the top of a glibc heap is given back to the system only beyond this many
/// bytes (32 MiB). At glibc's default (128 KiB once the mmap threshold is fixed) each freed
/// packing buffer at the top of a thread's heap was given back and faulted in again by the
/// next product: 24k page faults per `step-2k` step, against 4k now.
const TRIM_MIN_BYTES: usize = 32 << 20;

/// Fixes glibc's mmap threshold at [`MMAP_MIN_BYTES`] and its trim threshold at
/// [`TRIM_MIN_BYTES`]. By default glibc raises the mmap threshold each time it unmaps a buffer
/// (up to 32 MiB), after which large buffers come from its heap, whose freed holes stay
/// resident: at 131k positions that kept a tenth of the process's memory. Fixed, only buffers
/// below 2 MiB come from the heap.
fn fix_malloc_thresholds() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets allocator parameters; both thresholds take a byte count, and
    // setting them is allowed at any time (they apply to later allocations and frees).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_MIN_BYTES as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_MIN_BYTES as libc::c_int);
    }
}

/// `len` rounded up to its size class: a multiple of an eighth of its power of two.
fn class(len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let below = 1usize << (usize::BITS - 1 - len.leading_zeros());
    let granule = (below / 8).max(1);
    len.div_ceil(granule) * granule
}

/// A cached buffer of `len`'s class, resized to `len` (new elements are zero).
fn take(len: usize) -> Option<Vec<f32>> {
    if len < POOLED_MIN {
        return None;
    }
    let cap = class(len);
    let v = with_pool(|p| {
        let v = p.free.get_mut(&cap)?.pop()?;
        p.bytes -= cap * 4;
        Some(v)
    });
    // Big buffers bring a step to its peak: make the cache fit beside it first.
    if cap >= TRIM_MIN {
        drop(trim(cap * 4));
    }
    let mut v = v?;
    v.resize(len, 0.0);
    Some(v)
}

/// A fresh buffer with room for `len`'s class (its pages are only touched when written).
fn fresh(len: usize) -> Vec<f32> {
    if len < POOLED_MIN {
        return vec![0.0; len];
    }
    // Zeroed by the system: a fresh mapping's pages are zero until written, so nothing is
    // written here, and each page is faulted in by the kernel thread that first writes it
    // (in parallel) rather than by a memset on this thread.
    let cap = class(len);
    let layout = std::alloc::Layout::array::<f32>(cap).expect("a buffer class fits in memory");
    // SAFETY: `layout` has non-zero size (cap >= POOLED_MIN). `alloc_zeroed` returns memory
    // for `cap` f32 that is all zero bits, which is a valid 0.0 for each element, so the first
    // `len <= cap` elements are initialised. The pointer comes from the global allocator with
    // the layout of `cap` f32, which is what `Vec` frees with, so `from_raw_parts` owns it.
    unsafe {
        let ptr = std::alloc::alloc_zeroed(layout) as *mut f32;
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        Vec::from_raw_parts(ptr, len, cap)
    }
}

/// A buffer of `len` elements with unspecified (old) contents; the caller overwrites all of it.
pub(crate) fn uninit(len: usize) -> Vec<f32> {
    take(len).unwrap_or_else(|| fresh(len))
}

/// A buffer of `len` zeros.
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    match take(len) {
        Some(mut v) => {
            // A big cached buffer is zeroed by all threads: on the calling thread alone, the
            // attention backward's gradient buffers left the pool idle for 1 % of a step.
            super::parallel::for_each_chunk(&mut v, 1, |_, chunk| chunk.fill(0.0));
            v
        }
        None => fresh(len),
    }
}

/// The most bytes tensors have held at once in this process: what live and cached buffers
/// together may hold.
pub fn footprint_limit() -> usize {
    HIGH.load(Ordering::Relaxed)
}

/// Frees cached buffers until `bytes` more fit beside the live tensors within the footprint
/// limit: for a kernel about to take scratch at a step's peak (where the cache would otherwise
/// sit beside it), whatever the scratch's size.
pub(crate) fn make_room(bytes: usize) {
    drop(trim(bytes));
}

/// Takes cached buffers out of the cache, smallest classes first (freeing no more than it
/// must), until it fits beside the live tensors and `taking` bytes about to become live
/// within [`footprint_limit`]; the caller frees them outside the lock.
fn trim(taking: usize) -> Vec<Vec<f32>> {
    let live = LIVE.load(Ordering::Relaxed) + taking;
    let room = footprint_limit().max(live);
    with_pool(|p| {
        let mut out = Vec::new();
        while live + p.bytes > room {
            let Some((&cap, list)) = p.free.iter_mut().filter(|(_, l)| !l.is_empty()).min_by_key(|(&c, _)| c)
            else {
                break;
            };
            out.push(list.pop().expect("non-empty"));
            p.bytes -= cap * 4;
        }
        out
    })
}

/// Gives a buffer back for reuse (or frees it when small, of no class, or the cache is full).
pub(crate) fn recycle(v: Vec<f32>) {
    let cap = v.capacity();
    if cap < POOLED_MIN || class(cap) != cap {
        return;
    }
    with_pool(|p| {
        if p.bytes + cap * 4 <= POOL_MAX_BYTES {
            p.bytes += cap * 4;
            p.free.entry(cap).or_default().push(v);
        }
    });
}

/// Bytes of the buffers of live CPU tensors, and their high-water mark.
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The high-water mark of `LIVE` over the whole process (never reset).
static HIGH: AtomicUsize = AtomicUsize::new(0);

/// Counts a buffer of `bytes` taken by a tensor.
pub(crate) fn count_live(bytes: usize) {
    let now = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
    HIGH.fetch_max(now, Ordering::Relaxed);
}

/// Counts a tensor's buffer of `bytes` given back.
pub(crate) fn count_freed(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

/// Bytes held by live CPU tensors now.
pub fn live_bytes() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// The most bytes live CPU tensors have held at once since the last [`reset_peak_live_bytes`].
pub fn peak_live_bytes() -> usize {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new high-water mark from what is live now.
pub fn reset_peak_live_bytes() {
    PEAK.store(live_bytes(), Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_bound_the_slack() {
        for len in [1, 7, 8, 9, 1000, 65536, 65537, 100_000, 1 << 24, (1 << 24) + 1] {
            let c = class(len);
            assert!(c >= len && c - len <= len / 7 + 1, "{len} -> {c}");
            assert_eq!(class(c), c, "a class is its own class");
        }
    }

    #[test]
    fn buffers_of_one_class_are_reused_at_any_length_in_it() {
        let a = uninit(100_000);
        let ptr = a.as_ptr();
        assert_eq!(a.len(), 100_000);
        recycle(a);
        let b = zeroed(99_000); // same class as 100_000
        assert_eq!(b.len(), 99_000);
        assert!(b.iter().all(|&x| x == 0.0));
        // Another thread may have taken it in a parallel test run; reuse is the usual case.
        if b.as_ptr() == ptr {
            assert!(cached_bytes() < POOL_MAX_BYTES);
        }
    }
}
