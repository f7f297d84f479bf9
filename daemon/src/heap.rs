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
//! The trim alone still let an hour's RSS creep up about 28 MiB/h under a
//! flat live heap: glibc gives threads up to eight arenas per core, and the
//! pages each arena keeps partly used add up across them. The daemon
//! therefore caps the arenas at one per core ([`limit_arenas`]) before it
//! starts any thread; side by side over 16 minutes at 32 tasks that held
//! the malloc'd memory 8–14 MiB lower and flatter, with no segment late
//! (docs/performance.md, "Soak").
//!
//! `malloc_trim` and `mallopt` have no safe wrapper in the crates the
//! daemon uses, so this module holds two FFI calls.
#![allow(unsafe_code)]

use std::time::Duration;

/// How often the daemon trims: often enough that an hour's RSS follows the
/// live heap, rarely enough that the arena locks it takes never show.
pub const TRIM_EVERY: Duration = Duration::from_secs(30);

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

/// The arenas glibc may create for `cores` cores: one per core, at least
/// two, where glibc's default is eight per core.
pub fn arena_limit(cores: usize) -> usize {
    cores.max(2)
}

/// Whether the operator chose the arena count through the environment
/// (`MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in `GLIBC_TUNABLES`):
/// their choice stands.
pub fn arenas_chosen_by_operator(
    malloc_arena_max: Option<&str>,
    glibc_tunables: Option<&str>,
) -> bool {
    malloc_arena_max.is_some()
        || glibc_tunables.is_some_and(|t| {
            t.split(':')
                .any(|kv| kv.trim_start().starts_with("glibc.malloc.arena_max="))
        })
}

/// Caps glibc's malloc arenas at [`arena_limit`] for this machine unless
/// the operator chose otherwise. Call it first thing in `main`, before any
/// thread starts: threads pick their arena at their first allocation.
/// Returns the limit set, or `None` where nothing was set.
pub fn limit_arenas() -> Option<usize> {
    if arenas_chosen_by_operator(
        std::env::var("MALLOC_ARENA_MAX").ok().as_deref(),
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
    ) {
        return None;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let limit = arena_limit(cores);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let value = libc::c_int::try_from(limit).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes plain integers and its own lock.
        let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, value) } == 1;
        set.then_some(limit)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = limit;
        None
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn one_arena_per_core_and_never_fewer_than_two() {
        assert_eq!(arena_limit(1), 2);
        assert_eq!(arena_limit(2), 2);
        assert_eq!(arena_limit(16), 16);
    }

    #[test]
    fn an_operators_arena_choice_in_the_environment_stands() {
        assert!(!arenas_chosen_by_operator(None, None));
        assert!(arenas_chosen_by_operator(Some("4"), None));
        assert!(arenas_chosen_by_operator(
            None,
            Some("glibc.malloc.tcache_count=0:glibc.malloc.arena_max=3")
        ));
        assert!(!arenas_chosen_by_operator(
            None,
            Some("glibc.malloc.mmap_threshold=131072")
        ));
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

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

    #[test]
    fn pages_freed_between_live_allocations_go_back_to_the_kernel() {
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
            let more: Vec<Vec<u8>> = (0..1024).map(|_| vec![2u8; 16 * 1024]).collect();
            let after = usage().expect("glibc");
            assert!(
                after.in_use.saturating_sub(before.in_use) >= 16 * MIB,
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
