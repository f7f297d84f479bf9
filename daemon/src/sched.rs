//! How the daemon's threads ask the kernel to schedule them.
//!
//! A box runs one recorder thread per task (100+), each waking every few
//! tens of milliseconds to write what it took. Left as ordinary threads,
//! their wake-ups preempt whatever runs, and on a busy two-core box an API
//! request or the ingest thread waited behind a burst of them (client-side
//! Describe p99 17–45 ms at 100 tasks while the handler itself took under
//! 10 ms). Recorders are throughput work with seconds of queue in front of
//! them, so they run as `SCHED_BATCH`: the same share of CPU time, but a
//! batch thread's wake-up does not preempt the running thread, and the
//! kernel treats it as CPU-bound. The API's and ingest's threads keep the
//! normal policy.
//!
//! `sched_setscheduler` has no safe wrapper in the crates the daemon
//! uses (rustix has none), so this module holds two one-line FFI calls.
#![allow(unsafe_code)]

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
        rc == 0
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_thread_marked_as_batch_work_runs_as_sched_batch_and_others_do_not() {
        let marked = std::thread::spawn(|| (mark_batch_work(), current_policy()))
            .join()
            .expect("thread");
        assert_eq!(marked, (true, libc::SCHED_BATCH));
        // Only the thread that asked changed.
        assert_eq!(current_policy(), libc::SCHED_OTHER);
    }
}
