//! A global allocator that keeps a few recently freed large blocks for reuse ([`CachingAlloc`]).
//!
//! Why: glibc's malloc serves every block above its mmap threshold (at most 32 MiB; a training step's
//! activations are 16–64 MiB) with a fresh `mmap` and gives it back to the kernel on free. The next tensor of the
//! same size then page-faults in, and the kernel zero-fills, every 4 KiB page again, in every training and sampler
//! step (perf shows it as `exc_page_fault` and `clear_page_erms`; docs/history.md has the numbers). A step
//! allocates the same sizes in the same order every time, so an exact-size cache of freed blocks serves nearly all
//! of them.
//!
//! The cache holds at most [`MAX_CACHED_BYTES`], which bounds how much it can add to the peak memory; when it is
//! full the oldest blocks go back to the system first.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::Mutex;

/// Blocks smaller than this go straight to the system allocator, which recycles them itself.
const MIN_CACHED: usize = 1 << 20;
/// The most bytes the cache holds.
pub const MAX_CACHED_BYTES: usize = 256 << 20;
/// The most blocks the cache holds.
const SLOTS: usize = 32;

/// Freed blocks, oldest first: `(layout, pointer)`.
struct Cache {
    blocks: [(Layout, *mut u8); SLOTS],
    len: usize,
    bytes: usize,
}

// SAFETY: the pointers are owned, unaliased blocks; the cache is only touched under its mutex.
unsafe impl Send for Cache {}

static CACHE: Mutex<Cache> =
    Mutex::new(Cache { blocks: [(Layout::new::<u8>(), ptr::null_mut()); SLOTS], len: 0, bytes: 0 });

/// The system allocator with a cache of freed blocks of at least 1 MiB, reused for requests of exactly the same
/// size and alignment. Install it with `#[global_allocator] static A: CachingAlloc = CachingAlloc;`.
pub struct CachingAlloc;

impl CachingAlloc {
    /// Takes a cached block of layout `l`, if there is one.
    fn take(l: Layout) -> Option<*mut u8> {
        if l.size() < MIN_CACHED {
            return None;
        }
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        let i = c.blocks[..c.len].iter().position(|&(bl, _)| bl == l)?;
        let (p, len) = (c.blocks[i].1, c.len);
        c.blocks.copy_within(i + 1..len, i);
        c.len -= 1;
        c.bytes -= l.size();
        Some(p)
    }

    /// Caches block `p` of layout `l` (if large enough), handing the oldest blocks back to the system to make
    /// room. Returns whether `p` was kept.
    ///
    /// # Safety
    /// `p` must be a live block of layout `l` from [`System`].
    unsafe fn put(p: *mut u8, l: Layout) -> bool {
        if l.size() < MIN_CACHED || l.size() > MAX_CACHED_BYTES {
            return false;
        }
        let mut c = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        while c.len == SLOTS || c.bytes + l.size() > MAX_CACHED_BYTES {
            let (old_l, old_p) = c.blocks[0];
            let len = c.len;
            c.blocks.copy_within(1..len, 0);
            c.len -= 1;
            c.bytes -= old_l.size();
            System.dealloc(old_p, old_l);
        }
        let n = c.len;
        c.blocks[n] = (l, p);
        c.len += 1;
        c.bytes += l.size();
        true
    }
}

// SAFETY: every block comes from `System` with the requested layout, either directly or from the cache, where
// only freed blocks of exactly that layout are kept; a cached block is owned by the cache alone.
unsafe impl GlobalAlloc for CachingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        Self::take(l).unwrap_or_else(|| System.alloc(l))
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        match Self::take(l) {
            Some(p) => {
                ptr::write_bytes(p, 0, l.size());
                p
            }
            None => System.alloc_zeroed(l),
        }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if !Self::put(p, l) {
            System.dealloc(p, l);
        }
    }
}
