//! A small cache of large freed blocks in front of the system allocator, for the static (musl)
//! build.
//!
//! musl's allocator gives every block of 128 KiB or more its own mapping and unmaps it on
//! free. The basebackup stream of pageserver mode arrives as CopyData messages (64 KiB from
//! Neon's pageserver and the stand-in), and the `postgres` crate's read buffer is reallocated
//! for nearly every one: each time a fresh mapping, 32 page faults to fill it, and an munmap
//! that interrupts every other CPU running one of our threads. Measured with `perf stat` over a
//! pageserver-mode start of a 39 MiB basebackup: about 1,700 munmaps and 26,000 page faults
//! more than the glibc build. Here a freed block of 64 KiB to 1 MiB (rounded up to 64 KiB) is
//! kept, at most [`SLOTS`] of them (so at most 4 MiB), and handed out again for the next
//! allocation of the same rounded size. Everything else goes to the system allocator as is.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

/// The global allocator of the static build (see the module documentation).
pub struct LargeBlockCache;

/// Blocks this large and larger (up to [`MAX_CACHED`]) are rounded up to a multiple of
/// [`GRAIN`] and cached on free.
const MIN_CACHED: usize = 64 * 1024;
const MAX_CACHED: usize = 1024 * 1024;
const GRAIN: usize = 64 * 1024;
/// At most this many blocks are kept.
pub const SLOTS: usize = 4;

struct Cache {
    lock: AtomicBool,
    /// (rounded size, block); size 0 is an empty slot.
    blocks: UnsafeCell<[(usize, *mut u8); SLOTS]>,
}

// SAFETY: `blocks` is only touched while `lock` is held (see `with`).
unsafe impl Sync for Cache {}

static CACHE: Cache =
    Cache { lock: AtomicBool::new(false), blocks: UnsafeCell::new([(0, std::ptr::null_mut()); SLOTS]) };

impl Cache {
    /// Runs `f` on the slots under the lock (a spin lock: it is held for a few instructions,
    /// and a blocking lock could allocate).
    fn with<T>(&self, f: impl FnOnce(&mut [(usize, *mut u8); SLOTS]) -> T) -> T {
        while self.lock.compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            std::hint::spin_loop();
        }
        // SAFETY: we hold the lock, so this is the only reference to the slots.
        let result = f(unsafe { &mut *self.blocks.get() });
        self.lock.store(false, Ordering::Release);
        result
    }

    fn take(&self, size: usize) -> Option<*mut u8> {
        self.with(|slots| {
            let slot = slots.iter_mut().find(|(s, _)| *s == size)?;
            let block = slot.1;
            *slot = (0, std::ptr::null_mut());
            Some(block)
        })
    }

    /// Keeps `block` if a slot is free; false when the caller must free it.
    fn put(&self, block: *mut u8, size: usize) -> bool {
        self.with(|slots| match slots.iter_mut().find(|(s, _)| *s == 0) {
            Some(slot) => {
                *slot = (size, block);
                true
            }
            None => false,
        })
    }
}

/// The layout a cached-size request is served with (its size rounded up to [`GRAIN`]); None
/// for everything the system allocator serves as asked.
fn cached_layout(layout: Layout) -> Option<Layout> {
    if layout.size() < MIN_CACHED || layout.size() > MAX_CACHED || layout.align() > 16 {
        return None;
    }
    Layout::from_size_align(layout.size().div_ceil(GRAIN) * GRAIN, layout.align()).ok()
}

// SAFETY: every block handed out comes from `System` with the layout `dealloc` and `realloc`
// later give back to it: a cached-size request always gets (and returns) its rounded layout,
// which depends only on the request, and a cached block is handed out only for a request of
// the same rounded size (alignments up to 16 are all malloc's own).
unsafe impl GlobalAlloc for LargeBlockCache {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match cached_layout(layout) {
            // SAFETY: forwarded with a non-zero-size layout (the rounded one, or the caller's).
            Some(l) => CACHE.take(l.size()).unwrap_or_else(|| unsafe { System.alloc(l) }),
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match cached_layout(layout) {
            Some(l) => match CACHE.take(l.size()) {
                Some(block) => {
                    // SAFETY: the block holds at least `l.size()` >= `layout.size()` bytes.
                    unsafe { std::ptr::write_bytes(block, 0, layout.size()) };
                    block
                }
                // SAFETY: as in `alloc`.
                None => unsafe { System.alloc_zeroed(l) },
            },
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        match cached_layout(layout) {
            Some(l) => {
                if !CACHE.put(ptr, l.size()) {
                    // SAFETY: `ptr` came from `System` with layout `l` (see the impl's comment).
                    unsafe { System.dealloc(ptr, l) }
                }
            }
            // SAFETY: `ptr` came from `System` with this very layout.
            None => unsafe { System.dealloc(ptr, layout) },
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size` is valid with `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (cached_layout(layout), cached_layout(new_layout)) {
            // SAFETY: `ptr` came from `System` with `layout`.
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            (Some(old), Some(new)) if old.size() == new.size() => ptr,
            _ => {
                // Another rounded size, or from one kind to the other: a new block, the bytes
                // copied, the old freed.
                // SAFETY: `new_layout` has a non-zero size (cached or as valid as the caller's).
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks hold at least the smaller size and do not overlap.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                moved
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large block freed and asked for again (same rounded size) is the same block, with its
    /// content intact until the new owner writes; realloc within the rounded size keeps it; a
    /// zeroed request gets zeros; odd sizes, small and huge blocks pass through.
    #[test]
    fn large_blocks_are_reused_and_everything_else_passes_through() {
        let a = LargeBlockCache;
        let l = Layout::from_size_align(100_000, 8).unwrap();
        // SAFETY: the blocks are used within their layouts and freed with them.
        unsafe {
            let p = a.alloc(l);
            assert!(!p.is_null());
            p.write_bytes(7, l.size());
            let p2 = a.realloc(p, l, 120_000); // 100,000 and 120,000 both round to 128 KiB
            assert_eq!(p2, p);
            let l2 = Layout::from_size_align(120_000, 8).unwrap();
            a.dealloc(p2, l2);
            let z = a.alloc_zeroed(Layout::from_size_align(110_000, 8).unwrap());
            assert!(std::slice::from_raw_parts(z, 110_000).iter().all(|b| *b == 0), "zeroed block has data");
            let big = a.realloc(z, Layout::from_size_align(110_000, 8).unwrap(), 4 << 20);
            assert!(std::slice::from_raw_parts(big, 110_000).iter().all(|b| *b == 0), "realloc lost the bytes");
            a.dealloc(big, Layout::from_size_align(4 << 20, 8).unwrap());
            let small = Layout::from_size_align(100, 8).unwrap();
            let s = a.alloc(small);
            *s = 1;
            let s = a.realloc(s, small, 70_000);
            assert_eq!(*s, 1);
            a.dealloc(s, Layout::from_size_align(70_000, 8).unwrap());
        }
    }

    /// The slots hold at most [`SLOTS`] blocks and give back only one of the size asked for
    /// (a cache of its own here: the global one is shared with every test thread).
    #[test]
    fn a_full_cache_refuses_and_a_block_comes_back_only_for_its_size() {
        let cache = Cache { lock: AtomicBool::new(false), blocks: UnsafeCell::new([(0, std::ptr::null_mut()); SLOTS]) };
        // Stand-ins for blocks: the cache never touches what they point to.
        let fake = |i: usize| (0x1000 * (i + 1)) as *mut u8;
        for i in 0..SLOTS {
            assert!(cache.put(fake(i), GRAIN * (i + 1)), "slot {i} refused");
        }
        assert!(!cache.put(fake(SLOTS), GRAIN), "a full cache took one more block");
        assert_eq!(cache.take(GRAIN * 3), Some(fake(2)));
        assert_eq!(cache.take(GRAIN * 3), None, "a block was handed out twice");
        assert_eq!(cache.take(GRAIN * 7), None, "a block of another size was handed out");
        assert!(cache.put(fake(9), GRAIN), "the freed slot was not reused");
        assert_eq!(cache.take(GRAIN), Some(fake(0)));
        assert_eq!(cache.take(GRAIN), Some(fake(9)));
    }
}
