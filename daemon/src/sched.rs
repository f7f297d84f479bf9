//! How the daemon's threads ask the kernel to schedule them.
//!
//! A box runs one recorder thread per task (100+), each waking every few
//! tens of milliseconds to write what it took. Left as ordinary threads,
//! their wake-ups preempt whatever runs, and on a busy two-core box an API
//! request or the ingest thread waited behind a burst of them (client-side
//! Describe p99 17–45 ms at 100 tasks while the handler itself took under
//! 10 ms). Recorders are throughput work with seconds of queue in front of
//! them, so they run as `SCHED_BATCH` (a batch thread's wake-up does not
//! preempt the running thread), 10 nicer than the daemon
//! ([`RECORDER_NICE`]: a waking API or ingest thread preempts a running
//! recorder). The API's and
//! ingest's threads keep the normal policy and priority.
//!
//! `sched_setscheduler` and `setpriority` have no safe wrapper in the
//! crates the daemon uses (rustix has none for either on threads), so this
//! module holds one-line FFI calls.
#![allow(unsafe_code)]

/// How much nicer than the daemon recorder threads run. 10 weighs a
/// thread at about a tenth of a normal one, so a running recorder no longer holds off a
/// waking API or ingest thread for its whole slice; a hundred of them still
/// outweigh the few normal threads, so together they keep the CPU they
/// need. Side by side at 100 two-user tasks (docs/performance.md): client
/// Describe p99 21–33 ms with `SCHED_BATCH` alone, 8.4–9.0 ms with nice
/// 10, every media check passing; `SCHED_IDLE` starved the recorders
/// (1.8 s behind).
pub const RECORDER_NICE: i32 = 10;

/// The nice value a recorder thread asks for: [`RECORDER_NICE`] above the
/// calling thread's (an operator's systemd `Nice=` moves both), at most 19.
fn recorder_nice(current: i32) -> i32 {
    current.saturating_add(RECORDER_NICE).min(19)
}

/// Marks the calling thread as batch work (see the module docs). A kernel
/// that refuses leaves the thread as it was: scheduling is a preference,
/// never a reason to fail a recording.
pub fn mark_batch_work() -> bool {
    #[cfg(target_os = "linux")]
    {
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: `param` is a valid, initialised `sched_param` that lives
        // across the call; pid 0 is the calling thread.
        let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
        // Lowering one's own priority needs no privilege. On Linux the nice
        // value is per thread, and `who` 0 is the calling thread.
        // SAFETY: plain integer arguments.
        let niced =
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, recorder_nice(current_nice())) };
        rc == 0 && niced == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// The calling thread's scheduling policy (`libc::SCHED_*`), for tests.
#[cfg(all(test, target_os = "linux"))]
fn current_policy() -> i32 {
    // SAFETY: no arguments to uphold; pid 0 is the calling thread.
    unsafe { libc::sched_getscheduler(0) }
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
fn current_nice() -> i32 {
    // SAFETY: plain integer arguments; who 0 is the calling thread.
    unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_marked_as_batch_work_runs_as_sched_batch_and_others_do_not() {
        let here = current_nice();
        let marked = std::thread::spawn(|| (mark_batch_work(), current_policy(), current_nice()))
            .join()
            .expect("thread");
        assert_eq!(marked, (true, libc::SCHED_BATCH, recorder_nice(here)));
        // Only the thread that asked changed.
        assert_eq!(current_policy(), libc::SCHED_OTHER);
        assert_eq!(current_nice(), here);
    }

    #[test]
    fn recorders_run_ten_nicer_than_the_daemon_within_the_kernel_range() {
        assert_eq!(recorder_nice(0), 10);
        assert_eq!(recorder_nice(-5), 5);
        assert_eq!(recorder_nice(15), 19);
    }
}
