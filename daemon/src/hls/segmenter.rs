//! Where HLS segments start and end.
//!
//! Rules:
//! - A segment starts only where a decoder can start: a video key frame
//!   (any frame of an audio-only stream). Frames before the first key
//!   frame are dropped.
//! - Once the open segment has reached `target`, the next key frame cuts.
//! - If it reaches `target + keyframe_grace` with no key frame in sight,
//!   [`Segmenter::wants_keyframe`] says so, and the recorder asks the
//!   publisher for one (PLI); the segment runs long until it arrives —
//!   but not past `max_keyframe_wait` more: a publisher that ignores
//!   PLIs would grow the open segment (held in memory) for ever, so it is
//!   ended there ([`Decision::End`]) and the stream resumes at the next key
//!   frame after a discontinuity.
//! - A closed segment's duration is the distance from its first frame to
//!   the first frame of the next; the last segment's is its span plus one
//!   frame interval (the last frame's own duration).
//!
//! Sans-IO: timestamps are 90 kHz ticks on the recording's timeline, wall
//! times are inputs.

use std::time::{Duration, SystemTime};

/// The default of [`SegmenterConfig::max_keyframe_wait`].
pub const MAX_KEYFRAME_WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy)]
pub struct SegmenterConfig {
    pub target: Duration,
    pub keyframe_grace: Duration,
    /// How long past `target + keyframe_grace` a segment waits for a key
    /// frame before it is ended without one (`recording.max_keyframe_wait_seconds`).
    pub max_keyframe_wait: Duration,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            target: Duration::from_secs(10),
            keyframe_grace: Duration::from_secs(2),
            max_keyframe_wait: MAX_KEYFRAME_WAIT,
        }
    }
}

/// What to do with a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not recordable yet (waiting for the first key frame).
    Drop,
    /// Append to the open segment.
    Append,
    /// Open the first segment (started at `start_wall`), then append.
    Open { start_wall: SystemTime },
    /// Close the open segment (`closed_seconds` long), open a new one
    /// starting at `start_wall`, then append.
    Cut {
        closed_seconds: f64,
        start_wall: SystemTime,
    },
    /// Close the open segment (`closed_seconds` long) and drop this frame:
    /// no key frame came for too long; the next segment starts at the next
    /// key frame, after a discontinuity.
    End { closed_seconds: f64 },
}

#[derive(Debug, Clone)]
struct Open {
    start_pts: u64,
    last_pts: u64,
    frames: u64,
}

#[derive(Debug, Clone)]
pub struct Segmenter {
    cfg: SegmenterConfig,
    open: Option<Open>,
    /// A typical frame interval, for the last segment's duration.
    frame_interval: u64,
}

fn ticks(d: Duration) -> u64 {
    (d.as_micros() * 9 / 100) as u64
}

impl Segmenter {
    pub fn new(cfg: SegmenterConfig) -> Self {
        Self {
            cfg,
            open: None,
            frame_interval: 0,
        }
    }

    /// Decides for a frame at `pts` (90 kHz) that arrived at `wall`.
    pub fn on_frame(&mut self, pts: u64, wall: SystemTime, can_start: bool) -> Decision {
        let Some(open) = self.open.as_mut() else {
            if !can_start {
                return Decision::Drop;
            }
            self.open = Some(Open {
                start_pts: pts,
                last_pts: pts,
                frames: 1,
            });
            return Decision::Open { start_wall: wall };
        };
        if pts > open.last_pts {
            let step = pts - open.last_pts;
            // Keep the smallest positive step seen: the nominal frame interval.
            if self.frame_interval == 0 || step < self.frame_interval {
                self.frame_interval = step;
            }
        }
        let age = pts.saturating_sub(open.start_pts);
        if !can_start
            && age >= ticks(self.cfg.target + self.cfg.keyframe_grace + self.cfg.max_keyframe_wait)
        {
            let closed_seconds = self.finish().unwrap_or(0.0);
            return Decision::End { closed_seconds };
        }
        if can_start && age >= ticks(self.cfg.target) {
            let closed_seconds = age as f64 / 90_000.0;
            self.open = Some(Open {
                start_pts: pts,
                last_pts: pts,
                frames: 1,
            });
            return Decision::Cut {
                closed_seconds,
                start_wall: wall,
            };
        }
        open.last_pts = open.last_pts.max(pts);
        open.frames += 1;
        Decision::Append
    }

    /// Cuts here regardless of the target (the streams in a merged segment
    /// change); opens the first segment when none is open.
    pub fn cut(&mut self, pts: u64, wall: SystemTime) -> Decision {
        let next = Open {
            start_pts: pts,
            last_pts: pts,
            frames: 1,
        };
        match self.open.replace(next) {
            None => Decision::Open { start_wall: wall },
            Some(o) => Decision::Cut {
                closed_seconds: pts.saturating_sub(o.start_pts) as f64 / 90_000.0,
                start_wall: wall,
            },
        }
    }

    /// True when the open segment has run past `target + keyframe_grace`
    /// at `pts` without a key frame: ask the publisher for one.
    pub fn wants_keyframe(&self, pts: u64) -> bool {
        self.open.as_ref().is_some_and(|o| {
            pts.saturating_sub(o.start_pts) >= ticks(self.cfg.target + self.cfg.keyframe_grace)
        })
    }

    /// Closes the open segment (end of stream or a gap); its duration.
    pub fn finish(&mut self) -> Option<f64> {
        let o = self.open.take()?;
        let span = o.last_pts - o.start_pts + self.frame_interval;
        Some(span as f64 / 90_000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn wall(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn cuts_at_the_first_keyframe_after_the_target() {
        let mut s = Segmenter::new(SegmenterConfig {
            target: Duration::from_secs(4),
            keyframe_grace: Duration::from_secs(2),
            max_keyframe_wait: MAX_KEYFRAME_WAIT,
        });
        // 15 fps, key frame every 30 frames (2 s); the first frame is not a key frame.
        let mut durations = Vec::new();
        let mut opened = Vec::new();
        for n in 1..=150u64 {
            let pts = n * 6000;
            match s.on_frame(pts, wall(n * 1000 / 15), n % 30 == 0) {
                Decision::Drop => assert!(n < 30),
                Decision::Open { start_wall } => opened.push(start_wall),
                Decision::Cut {
                    closed_seconds,
                    start_wall,
                } => {
                    durations.push(closed_seconds);
                    opened.push(start_wall);
                }
                Decision::Append => {}
                Decision::End { .. } => panic!("ended at frame {n}"),
            }
        }
        durations.extend(s.finish());
        assert_eq!(
            opened[0],
            wall(2000),
            "first segment at the first key frame"
        );
        // Key frames at 30, 60, 90, 120, 150: cuts at 90 and 150; the last
        // segment is frame 150 alone, one frame interval long.
        assert_eq!(durations, vec![4.0, 4.0, 1.0 / 15.0]);
        let total: f64 = durations.iter().sum();
        assert!(
            (total - 121.0 / 15.0).abs() < 1e-9,
            "frames 30..=150 at 15 fps, each with its own duration"
        );
    }

    #[test]
    fn a_long_gop_asks_for_a_keyframe_and_runs_long() {
        let mut s = Segmenter::new(SegmenterConfig {
            target: Duration::from_secs(4),
            keyframe_grace: Duration::from_secs(1),
            max_keyframe_wait: MAX_KEYFRAME_WAIT,
        });
        assert_eq!(
            s.on_frame(0, wall(0), true),
            Decision::Open {
                start_wall: wall(0)
            }
        );
        let mut asked_at = None;
        for n in 1..180u64 {
            let pts = n * 3000; // 30 fps, no key frame for almost 6 s
            assert_eq!(s.on_frame(pts, wall(n * 33), false), Decision::Append);
            if asked_at.is_none() && s.wants_keyframe(pts) {
                asked_at = Some(pts);
            }
        }
        assert_eq!(
            asked_at,
            Some(5 * 90_000),
            "asks once target + grace passed"
        );
        // The key frame arrives at 6 s: the segment closes at 6 s.
        match s.on_frame(6 * 90_000, wall(6000), true) {
            Decision::Cut { closed_seconds, .. } => assert!((closed_seconds - 6.0).abs() < 1e-9),
            other => panic!("{other:?}"),
        }
        assert!(!s.wants_keyframe(6 * 90_000 + 3000));
    }

    #[test]
    fn audio_only_cuts_at_any_frame() {
        let mut s = Segmenter::new(SegmenterConfig {
            target: Duration::from_secs(2),
            ..Default::default()
        });
        let mut cuts = 0;
        for n in 0..250u64 {
            // 20 ms Opus frames on the 90 kHz timeline.
            if matches!(
                s.on_frame(n * 1800, wall(n * 20), true),
                Decision::Cut { .. }
            ) {
                cuts += 1;
            }
        }
        assert_eq!(cuts, 2);
        let last = s.finish().expect("open");
        assert!((last - 1.0).abs() < 1e-9, "{last}");
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn a_segment_without_key_frames_ends_after_the_longest_wait() {
        let cfg = SegmenterConfig {
            target: Duration::from_secs(2),
            keyframe_grace: Duration::from_secs(1),
            max_keyframe_wait: MAX_KEYFRAME_WAIT,
        };
        let mut s = Segmenter::new(cfg);
        let t = |ms: u64| ms * 90;
        assert!(matches!(
            s.on_frame(t(0), wall(0), true),
            Decision::Open { .. }
        ));
        // Only delta frames from here on (a publisher that ignores PLIs).
        let limit_ms = 3_000 + cfg.max_keyframe_wait.as_millis() as u64;
        let mut ended = None;
        for ms in (40..60_000).step_by(40) {
            match s.on_frame(t(ms), wall(ms), false) {
                Decision::Append => {}
                Decision::End { closed_seconds } => {
                    ended = Some((ms, closed_seconds));
                    break;
                }
                other => panic!("{other:?} at {ms} ms"),
            }
        }
        let (at, seconds) = ended.expect("ended");
        assert_eq!(at, limit_ms);
        assert!(
            (seconds - limit_ms as f64 / 1000.0).abs() < 0.001,
            "{seconds}"
        );
        // Nothing is open: delta frames are dropped until a key frame.
        assert_eq!(s.on_frame(t(at + 40), wall(at + 40), false), Decision::Drop);
        assert!(matches!(
            s.on_frame(t(at + 80), wall(at + 80), true),
            Decision::Open { .. }
        ));
    }
}
