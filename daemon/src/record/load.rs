//! What each running recorder costs and how far behind it is, published
//! by its worker thread through atomics and read by `capacity` (admission,
//! `/v1/capacity`, metrics) without touching the media path.
//!
//! - CPU: the worker thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`,
//!   read from the vDSO once per loop), cumulative over its restarts.
//! - Behind: single-stream, how long the frame just taken waited since it
//!   arrived at the box; mixed, how far the output clock trails its due
//!   time. Both are zero for a recorder that keeps up.
//! - Streams: the video and audio tracks it records now (a cost input).
//! - Output frames dropped: mixed ticks skipped to keep real time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One task's recorder load (shared by its worker and the board).
#[derive(Debug, Default)]
pub struct TaskLoad {
    cpu_ns: AtomicU64,
    /// CPU of earlier incarnations (a restarted recorder adds to it).
    cpu_base_ns: AtomicU64,
    behind_us: AtomicU64,
    video_streams: AtomicU32,
    audio_streams: AtomicU32,
    output_frames_dropped: AtomicU64,
    running: AtomicBool,
}

/// A copy of a [`TaskLoad`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadReading {
    pub cpu: Duration,
    pub behind: Duration,
    pub video_streams: u32,
    pub audio_streams: u32,
    pub output_frames_dropped: u64,
    pub running: bool,
}

impl TaskLoad {
    /// A worker starts (again): its thread's clock starts from zero.
    pub fn started(&self) {
        let so_far = self.cpu_ns.load(Ordering::Relaxed);
        self.cpu_base_ns.store(so_far, Ordering::Relaxed);
        self.running.store(true, Ordering::Relaxed);
    }

    /// The worker thread's own CPU time so far (its thread CPU clock).
    pub fn set_thread_cpu(&self, thread_cpu: Duration) {
        let base = self.cpu_base_ns.load(Ordering::Relaxed);
        let ns = u64::try_from(thread_cpu.as_nanos()).unwrap_or(u64::MAX);
        self.cpu_ns
            .store(base.saturating_add(ns), Ordering::Relaxed);
    }

    pub fn set_behind(&self, behind: Duration) {
        let us = u64::try_from(behind.as_micros()).unwrap_or(u64::MAX);
        self.behind_us.store(us, Ordering::Relaxed);
    }

    pub fn set_streams(&self, video: u32, audio: u32) {
        self.video_streams.store(video, Ordering::Relaxed);
        self.audio_streams.store(audio, Ordering::Relaxed);
    }

    pub fn set_output_frames_dropped(&self, n: u64) {
        self.output_frames_dropped.store(n, Ordering::Relaxed);
    }

    /// The worker ended (any way, a panic too).
    pub fn stopped(&self) {
        self.running.store(false, Ordering::Relaxed);
        self.behind_us.store(0, Ordering::Relaxed);
    }

    pub fn read(&self) -> LoadReading {
        LoadReading {
            cpu: Duration::from_nanos(self.cpu_ns.load(Ordering::Relaxed)),
            behind: Duration::from_micros(self.behind_us.load(Ordering::Relaxed)),
            video_streams: self.video_streams.load(Ordering::Relaxed),
            audio_streams: self.audio_streams.load(Ordering::Relaxed),
            output_frames_dropped: self.output_frames_dropped.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
        }
    }
}

/// The calling thread's CPU time (0 where the clock is unavailable).
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// This process's CPU time (every thread).
pub fn process_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Every task's [`TaskLoad`], by task id.
#[derive(Debug, Default)]
pub struct LoadBoard {
    tasks: Mutex<HashMap<String, Arc<TaskLoad>>>,
}

impl LoadBoard {
    /// The task's load (created on its first recorder, kept across restarts).
    pub fn task(&self, task_id: &str) -> Arc<TaskLoad> {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.entry(task_id.to_owned()).or_default().clone()
    }

    /// The task left this box.
    pub fn remove(&self, task_id: &str) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.remove(task_id);
    }

    pub fn read(&self, task_id: &str) -> Option<LoadReading> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.get(task_id).map(|l| l.read())
    }

    /// Every task's reading, sorted by task id.
    pub fn readings(&self) -> Vec<(String, LoadReading)> {
        let tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = tasks.iter().map(|(k, v)| (k.clone(), v.read())).collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_accumulates_across_restarts_and_a_stopped_recorder_is_not_behind() {
        let board = LoadBoard::default();
        let load = board.task("t1");
        load.started();
        load.set_thread_cpu(Duration::from_millis(300));
        load.set_behind(Duration::from_millis(40));
        load.stopped();
        // The restarted thread's clock starts at zero again.
        let again = board.task("t1");
        again.started();
        again.set_thread_cpu(Duration::from_millis(100));
        let r = board.read("t1").expect("registered");
        assert_eq!(r.cpu, Duration::from_millis(400));
        assert!(r.running);
        assert_eq!(r.behind, Duration::ZERO);
        board.remove("t1");
        assert!(board.readings().is_empty());
    }

    #[test]
    fn the_thread_clock_advances_with_work() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_time() > before);
        assert!(process_cpu_time() >= thread_cpu_time());
    }
}
