//! Gives the heap's free pages back to the kernel.
//!
//! With glibc's malloc, a box's 90+ threads (a recorder per task, ingest,
//! uploads) free segment-sized buffers between long-lived small allocations,
//! and glibc returns memory to the kernel only from the top of each arena:
//! pages freed in the middle stay resident. Over an hour's soak the RSS rose
//! 15 % and kept rising while heaptrack showed the live heap flat (75.7 →
//! 78.0 MiB while RSS went 185.8 → 203.0 MiB in a 9-minute run). Nothing
//! leaked; the pages were simply never handed back.
//!
//! `malloc_trim(0)` walks every arena and releases the whole pages inside
//! free chunks. Run every [`TRIM_EVERY`] it takes a few milliseconds on a
//! blocking thread. mimalloc was tried instead and held 5× the RSS (a heap
//! per thread, 90+ threads), so the allocator stays glibc's.
//!
//! Capping the arenas at one per core (`M_ARENA_MAX`) was tried and not
//! kept: it lowered an hour's RSS by about 20 MiB without changing its
//! slope, and on two cores it made the API's tail and the ingest worse
//! (threads at different priorities queue on fewer arena locks; see
//! docs/performance.md, "Soak").
//!
//! What the trim could not return was the pages pinned by small long-lived
//! allocations made between segment buffers. glibc serves a block of at
//! least `M_MMAP_THRESHOLD` with its own `mmap`, which `free` unmaps at
//! once; but the threshold is dynamic, raised to the size of every mapped
//! block freed, so after the first segment every segment buffer (256 KiB
//! and up) came from the arenas and fragmented them. [`map_large_blocks`]
//! fixes the threshold at [`MMAP_THRESHOLD`] at start-up: segment buffers
//! stay out of the arenas, and their pages go back the moment they are
//! freed (see docs/performance.md, "Soak").
//!
//! `malloc_trim`, `mallopt` and `mallinfo2` have no safe wrapper in the
//! crates the daemon uses, so this module holds three FFI calls.
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the daemon trims: often enough that an hour's RSS follows the
/// live heap, rarely enough that the arena locks it takes never show.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Blocks from this size up get their own mapping: a segment buffer starts
/// at 256 KiB (hls/stream.rs), media frames and packets stay far below.
pub const MMAP_THRESHOLD: usize = 256 * 1024;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] (which also stops
/// glibc from raising it). Call once at start, before the worker threads.
/// Returns whether it took; always false where the C library is not glibc.
pub fn map_large_blocks() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Ok(threshold) = libc::c_int::try_from(MMAP_THRESHOLD) else {
            return false;
        };
        // SAFETY: no pointers cross; glibc takes its own lock.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Releases the free pages of every malloc arena. Returns whether any
/// memory went back to the kernel; always false where the C library is not
/// glibc (its allocator then decides alone).
pub fn release_free_pages() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: no pointers cross; glibc takes each arena's lock itself.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// What malloc holds, summed over its arenas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapUsage {
    /// Bytes handed out and not yet freed: the live heap (mmapped blocks
    /// included).
    pub in_use: u64,
    /// Bytes free inside the arenas, whether still resident or already
    /// handed back by a trim.
    pub free: u64,
}

/// The allocator's own account of the heap. It takes each arena's lock
/// while it walks the free lists, so call it off the async runtime. `None`
/// where the C library is not glibc.
pub fn usage() -> Option<HeapUsage> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: no pointers cross; glibc takes each arena's lock itself.
        let m = unsafe { libc::mallinfo2() };
        let bytes = |n: libc::size_t| u64::try_from(n).unwrap_or(u64::MAX);
        Some(HeapUsage {
            in_use: bytes(m.uordblks).saturating_add(bytes(m.hblkhd)),
            free: bytes(m.fordblks),
        })
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;
    use std::process::Command;

    /// Set in the child process that runs one heap test alone.
    const ALONE: &str = "KIROKU_HEAP_TEST_ALONE";

    /// Runs `body` in a child process of this test binary that runs only the
    /// test `name`. The heap tests read process-wide counters (RSS,
    /// mallinfo) which every other test's threads move too: a lock between
    /// the two heap tests was not enough (CI saw another test's unmaps take
    /// 4 MiB off the mapped bytes while 8 MiB were being mapped).
    fn in_own_process(name: &str, body: fn()) {
        if std::env::var_os(ALONE).is_some() {
            body();
            return;
        }
        let exe = std::env::current_exe().expect("test binary");
        let output = Command::new(exe)
            .args([
                "--exact",
                &format!("heap::tests::{name}"),
                "--test-threads=1",
            ])
            .env(ALONE, "1")
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 passed"),
            "{name} alone: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn resident_bytes() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
        let pages: u64 = statm
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .expect("resident pages");
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        pages * u64::try_from(page).expect("page size")
    }

    /// Without the fixed threshold, freeing a mapped 4 MiB block raises
    /// glibc's threshold to 4 MiB and the next 1 MiB buffers come from an
    /// arena; with it they are mapped, and unmapped when freed.
    #[test]
    fn segment_sized_blocks_stay_mapped_after_a_larger_one_is_freed() {
        in_own_process(
            "segment_sized_blocks_stay_mapped_after_a_larger_one_is_freed",
            segment_sized_blocks_stay_mapped,
        );
    }

    fn segment_sized_blocks_stay_mapped() {
        const MIB: u64 = 1 << 20;
        std::thread::spawn(|| {
            assert!(map_large_blocks());
            drop(vec![3u8; 4 << 20]);
            let mapped = || {
                // SAFETY: as in `usage`.
                let m = unsafe { libc::mallinfo2() };
                u64::try_from(m.hblkhd).expect("fits")
            };
            let before = mapped();
            let buffers: Vec<Vec<u8>> = (0..8).map(|_| vec![4u8; 1 << 20]).collect();
            let held = mapped();
            assert!(
                held.saturating_sub(before) >= 8 * MIB,
                "mapped {before} -> {held} bytes"
            );
            assert!(buffers.iter().all(|b| b[(1 << 20) - 1] == 4));
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn pages_freed_between_live_allocations_go_back_to_the_kernel() {
        in_own_process(
            "pages_freed_between_live_allocations_go_back_to_the_kernel",
            pages_freed_between_live_allocations,
        );
    }

    fn pages_freed_between_live_allocations() {
        const MIB: u64 = 1 << 20;
        std::thread::spawn(|| {
            // 128 MiB in 4 KiB blocks with every 16th kept: what free()
            // leaves behind is holes glibc cannot trim from an arena's top.
            let mut blocks: Vec<Vec<u8>> = (0..32 * 1024).map(|_| vec![1u8; 4096]).collect();
            let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(16).map(std::mem::take).collect();
            drop(blocks);
            let before = resident_bytes();
            assert!(release_free_pages(), "malloc_trim released nothing");
            let after = resident_bytes();
            assert!(
                before.saturating_sub(after) >= 64 * MIB,
                "RSS {} MiB -> {} MiB",
                before / MIB,
                after / MIB
            );
            assert!(kept.iter().all(|b| b.len() == 4096 && b[4095] == 1));
            let before = usage().expect("glibc");
            // 64 MiB allocated in 16 KiB blocks: each counts in full, with
            // a little slack for the chunk headers' rounding.
            let more: Vec<Vec<u8>> = (0..4096).map(|_| vec![2u8; 16 * 1024]).collect();
            let after = usage().expect("glibc");
            assert!(
                after.in_use.saturating_sub(before.in_use) >= 56 * MIB,
                "in use {} -> {} bytes",
                before.in_use,
                after.in_use
            );
            drop(more);
            assert!(usage().expect("glibc").in_use < after.in_use);
        })
        .join()
        .expect("thread");
    }
}
