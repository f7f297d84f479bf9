//! The capacity bench's decisions, pure: whether a step ran in real time
//! (counter deltas in, a verdict out) and which task count to try next
//! (doubling until something breaks, then bisecting).

use serde::Serialize;

/// Counters read from the daemon's `/metrics` (and the publisher) at one
/// instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Seconds on a monotonic clock.
    pub at: f64,
    pub recorded_frames: f64,
    pub ingest_frames: f64,
    /// Ingest drops, timeline overflows, mixed input frames dropped and
    /// output ticks skipped.
    pub drops: f64,
    /// Segments stored, and those stored later than the latency bound.
    pub segments: f64,
    pub segments_late: f64,
    pub daemon_cpu: f64,
    pub daemon_rss: f64,
    pub publisher_cpu: f64,
    /// The worst recorder lag now (seconds).
    pub behind: f64,
    /// API requests the daemon answered, and those within 10 ms (its own
    /// latency histogram).
    pub api_requests: f64,
    pub api_within_10ms: f64,
}

/// What one step asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Expectation {
    pub tasks: u32,
    /// Frames per second all publishers send (video + audio).
    pub frames_per_second: f64,
    /// Real time is about the media: the API's latency is reported beside
    /// each window (above this bound: `api_slow`), not judged — under load
    /// Describe waits behind state-store commits (docs/performance.md).
    pub api_p99_bound_ms: f64,
    pub behind_bound_s: f64,
    /// The share of expected frames that must be recorded (the rest is
    /// start-up and edge effects of the window).
    pub frame_ratio: f64,
}

/// Why a step was not real time (the first that broke, in this order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Limit {
    /// The load generator could not send its frames (it is the bottleneck).
    Publisher,
    Drops,
    Frames,
    Latency,
}

impl Limit {
    pub fn label(self) -> &'static str {
        match self {
            Limit::Publisher => "publisher",
            Limit::Drops => "drops",
            Limit::Frames => "frames",
            Limit::Latency => "latency",
        }
    }
}

/// A step's figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StepResult {
    pub tasks: u32,
    pub recorded_fps: f64,
    pub expected_fps: f64,
    pub ingest_fps: f64,
    pub drops: f64,
    pub segments: f64,
    pub segments_late: f64,
    pub behind_s: f64,
    pub api_p99_ms: f64,
    /// Share of API requests the daemon answered within 10 ms.
    pub api_within_10ms: f64,
    /// The API missed its bounds in this window (reported, not judged).
    pub api_slow: bool,
    pub daemon_cores: f64,
    pub daemon_rss: f64,
    pub publisher_cores: f64,
    pub broke: Option<Limit>,
}

/// Judges a window between two samples.
pub fn judge(a: &Sample, b: &Sample, e: &Expectation, api_p99_ms: f64) -> StepResult {
    let dt = (b.at - a.at).max(1e-6);
    let recorded_fps = (b.recorded_frames - a.recorded_frames) / dt;
    let ingest_fps = (b.ingest_frames - a.ingest_frames) / dt;
    let drops = b.drops - a.drops;
    let segments = b.segments - a.segments;
    let late = b.segments_late - a.segments_late;
    let publisher_cores = (b.publisher_cpu - a.publisher_cpu) / dt;
    let want = e.frames_per_second * e.frame_ratio;
    let api_requests = b.api_requests - a.api_requests;
    let api_within_10ms = if api_requests > 0.0 {
        (b.api_within_10ms - a.api_within_10ms) / api_requests
    } else {
        1.0
    };
    let broke = if ingest_fps < want && publisher_cores > 0.9 {
        // One publisher thread at a full core: the generator, not the box.
        Some(Limit::Publisher)
    } else if drops > 0.0 {
        Some(Limit::Drops)
    } else if recorded_fps < want {
        Some(Limit::Frames)
    } else if late > 0.0 || b.behind > e.behind_bound_s {
        Some(Limit::Latency)
    } else {
        None
    };
    StepResult {
        tasks: e.tasks,
        recorded_fps,
        expected_fps: e.frames_per_second,
        ingest_fps,
        drops,
        segments,
        segments_late: late,
        behind_s: b.behind,
        api_p99_ms,
        api_within_10ms,
        api_slow: api_within_10ms < 0.99 || api_p99_ms > e.api_p99_bound_ms,
        daemon_cores: (b.daemon_cpu - a.daemon_cpu) / dt,
        daemon_rss: b.daemon_rss,
        publisher_cores,
        broke,
    }
}

/// Doubling, then bisection, over task counts.
#[derive(Debug, Clone)]
pub struct Ramp {
    ceiling: u32,
    /// Stop bisecting once the gap is at most this share of the good count.
    precision: f64,
    good: Option<u32>,
    bad: Option<(u32, Limit)>,
    next: Option<u32>,
}

impl Ramp {
    pub fn new(start: u32, ceiling: u32, precision: f64) -> Self {
        let ceiling = ceiling.max(1);
        Self {
            ceiling,
            precision,
            good: None,
            bad: None,
            next: Some(start.clamp(1, ceiling)),
        }
    }

    /// The task count to run next; `None` when the ramp is done.
    pub fn next(&self) -> Option<u32> {
        self.next
    }

    /// Records the outcome of running [`Self::next`] tasks.
    pub fn record(&mut self, tasks: u32, broke: Option<Limit>) {
        match broke {
            None => self.good = Some(self.good.map_or(tasks, |g| g.max(tasks))),
            Some(limit) => {
                if self.bad.is_none_or(|(b, _)| tasks < b) {
                    self.bad = Some((tasks, limit));
                }
            }
        }
        self.next = match (self.good, self.bad) {
            // Still rising: double, up to the ceiling.
            (Some(g), None) if g >= self.ceiling => None,
            (Some(g), None) => Some(g.saturating_mul(2).min(self.ceiling)),
            // Broke at the first step: halve until something holds.
            (None, Some((b, _))) if b <= 1 => None,
            (None, Some((b, _))) => Some(b / 2),
            (Some(g), Some((b, _))) => {
                let gap = b.saturating_sub(g);
                let fine_enough = f64::from(gap) <= (f64::from(g) * self.precision).max(1.0);
                if fine_enough {
                    None
                } else {
                    Some(g + gap / 2)
                }
            }
            (None, None) => self.next,
        };
    }

    /// The most tasks that held, and what broke one step above.
    pub fn outcome(&self) -> (u32, Option<Limit>) {
        (self.good.unwrap_or(0), self.bad.map(|(_, l)| l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(capacity: u32, start: u32, ceiling: u32) -> (u32, Vec<u32>) {
        let mut ramp = Ramp::new(start, ceiling, 0.1);
        let mut tried = Vec::new();
        while let Some(n) = ramp.next() {
            tried.push(n);
            assert!(tried.len() < 40, "the ramp does not end: {tried:?}");
            ramp.record(n, (n > capacity).then_some(Limit::Frames));
        }
        (ramp.outcome().0, tried)
    }

    #[test]
    fn the_ramp_doubles_then_bisects_to_within_a_tenth() {
        let (held, tried) = run(137, 16, 1000);
        assert_eq!(&tried[..5], &[16, 32, 64, 128, 256]);
        assert!((124..=137).contains(&held), "{held} from {tried:?}");
        // Stops at the ceiling when nothing breaks.
        let (held, tried) = run(10_000, 16, 100);
        assert_eq!(held, 100);
        assert_eq!(tried.last(), Some(&100));
        // A box that cannot hold even one task.
        assert_eq!(run(0, 4, 100).0, 0);
        // One that holds exactly one.
        assert_eq!(run(1, 4, 100).0, 1);
    }

    fn expect() -> Expectation {
        Expectation {
            tasks: 10,
            frames_per_second: 1300.0,
            api_p99_bound_ms: 10.0,
            behind_bound_s: 1.0,
            frame_ratio: 0.97,
        }
    }

    fn sample(at: f64, frames: f64) -> Sample {
        Sample {
            at,
            recorded_frames: frames,
            ingest_frames: frames,
            segments: at,
            daemon_cpu: at * 0.5,
            publisher_cpu: at * 0.1,
            api_requests: at * 10.0,
            api_within_10ms: at * 10.0,
            ..Sample::default()
        }
    }

    #[test]
    fn a_window_is_real_time_only_with_every_frame_no_drop_and_in_time() {
        let a = sample(0.0, 0.0);
        let b = sample(10.0, 13_000.0);
        let ok = judge(&a, &b, &expect(), 3.0);
        assert_eq!(ok.broke, None);
        assert!((ok.daemon_cores - 0.5).abs() < 1e-9);
        let slow = Sample {
            recorded_frames: 11_000.0,
            ..b
        };
        assert_eq!(judge(&a, &slow, &expect(), 3.0).broke, Some(Limit::Frames));
        let dropped = Sample { drops: 1.0, ..b };
        assert_eq!(
            judge(&a, &dropped, &expect(), 3.0).broke,
            Some(Limit::Drops)
        );
        let late = Sample {
            segments_late: 1.0,
            ..b
        };
        assert_eq!(judge(&a, &late, &expect(), 3.0).broke, Some(Limit::Latency));
        // The API is reported, not judged.
        let slow_api = Sample {
            api_within_10ms: 98.0,
            ..b
        };
        let r = judge(&a, &slow_api, &expect(), 25.0);
        assert_eq!(r.broke, None);
        assert!(r.api_slow && (r.api_within_10ms - 0.98).abs() < 1e-9);
        let starved = Sample {
            ingest_frames: 9_000.0,
            recorded_frames: 9_000.0,
            publisher_cpu: 9.8,
            ..b
        };
        assert_eq!(
            judge(&a, &starved, &expect(), 3.0).broke,
            Some(Limit::Publisher)
        );
    }
}
