//! The shared recording timeline: where every frame of every user sits in
//! server time, so that a user's audio and video files, and different
//! users' files, line up (docs/recording.md, "A/V sync").
//!
//! Method:
//! 1. Within a track, time comes from the RTP timestamp (smooth, immune to
//!    network jitter): `sender_time = anchor_sender + (rtp − anchor_rtp) /
//!    clock_rate`, anchored on the sender's RTCP sender report (the
//!    ingest puts the SR-derived sender wall time on each frame).
//! 2. A user's tracks share the sender's clock, so their sender times are
//!    directly comparable: audio and video of one user line up exactly as
//!    the sender captured them.
//! 3. Sender time becomes server time by a per-user offset: the smallest
//!    `arrival − sender_time` seen during the first [`SETTLE_US`] of media
//!    (the least-delayed frame, so the offset is the one-way network delay
//!    plus the clock difference, and jitter is excluded). Frames wait in a
//!    short buffer until the offset is known.
//! 4. If the sender's RTP clock drifts from its sender reports by more than
//!    [`REANCHOR_US`], the track re-anchors on the latest report.
//!
//! Limits: a track with no sender report within [`SR_WAIT_US`] is placed
//! by the arrival time of its first frame (its error is that frame's
//! network delay and jitter). Different users are aligned to within the
//! difference of their one-way delays; publishers whose clocks drift from
//! the server's drift apart slowly (ppm) over long recordings.
//!
//! Sans-IO: frames carry their own arrival time; nothing here reads a clock.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::room::MediaFrame;

/// How long a user's offset is estimated before it is fixed.
pub const SETTLE_US: i64 = 400_000;
/// How long a track waits for its first sender report.
pub const SR_WAIT_US: i64 = 2_000_000;
/// Drift between RTP time and sender reports that triggers a re-anchor.
pub const REANCHOR_US: i64 = 20_000;
/// Frames a track buffers at most while waiting (about 10 s of audio).
const MAX_PENDING: usize = 512;

/// Microseconds since the Unix epoch (negative before it, saturating).
pub fn unix_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// One user's sender clock → server clock offset.
#[derive(Debug, Default, Clone)]
pub struct UserClock {
    best: Option<i64>,
    first_seen: Option<i64>,
    fixed: Option<i64>,
}

impl UserClock {
    fn observe(&mut self, arrival: i64, sender: i64) {
        if self.fixed.is_some() {
            return;
        }
        let d = arrival - sender;
        self.best = Some(self.best.map_or(d, |b| b.min(d)));
        self.first_seen.get_or_insert(arrival);
    }

    /// The offset, once the estimation window has passed at `now`.
    fn offset(&mut self, now: i64) -> Option<i64> {
        if self.fixed.is_none() {
            if let (Some(first), Some(best)) = (self.first_seen, self.best) {
                if now - first >= SETTLE_US {
                    self.fixed = Some(best);
                }
            }
        }
        self.fixed
    }
}

#[derive(Debug, Clone, Copy)]
enum Anchor {
    /// RTP time `rtp` was sender time `at` (µs).
    Sender { rtp: u64, at: i64 },
    /// No sender report in time: RTP time `rtp` arrived at server time `at`.
    Arrival { rtp: u64, at: i64 },
}

/// What happened while placing frames (for metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClockNotes {
    pub arrival_fallback: bool,
    pub reanchored: bool,
    pub overflowed: usize,
}

/// Places one track's frames on the server timeline.
#[derive(Debug)]
pub struct TrackClock {
    clock_rate: i64,
    anchor: Option<Anchor>,
    pending: VecDeque<MediaFrame>,
}

impl TrackClock {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: i64::from(clock_rate.max(1)),
            anchor: None,
            pending: VecDeque::new(),
        }
    }

    fn since(&self, rtp: u64, anchor_rtp: u64) -> i64 {
        let ticks = rtp as i128 - anchor_rtp as i128;
        (ticks * 1_000_000 / i128::from(self.clock_rate)) as i64
    }

    /// Takes a frame; appends the frames that are now placed, as
    /// `(server µs, frame)`, to `out` in arrival order.
    pub fn push(
        &mut self,
        frame: MediaFrame,
        user: &mut UserClock,
        out: &mut Vec<(i64, MediaFrame)>,
    ) -> ClockNotes {
        let mut notes = ClockNotes::default();
        let arrival = unix_us(frame.received_wall);
        if let Some(ntp) = frame.ntp_time {
            let sender = unix_us(ntp);
            user.observe(arrival, sender);
            match self.anchor {
                None => {
                    self.anchor = Some(Anchor::Sender {
                        rtp: frame.rtp_time,
                        at: sender,
                    })
                }
                Some(Anchor::Sender { rtp, at }) => {
                    let drift = sender - (at + self.since(frame.rtp_time, rtp));
                    if drift.abs() > REANCHOR_US {
                        self.anchor = Some(Anchor::Sender {
                            rtp: frame.rtp_time,
                            at: sender,
                        });
                        notes.reanchored = true;
                    }
                }
                Some(Anchor::Arrival { .. }) => {}
            }
        }
        self.pending.push_back(frame);
        if self.anchor.is_none() {
            let waited = self
                .pending
                .front()
                .map_or(0, |f| arrival - unix_us(f.received_wall));
            if waited >= SR_WAIT_US {
                if let Some(f) = self.pending.front() {
                    self.anchor = Some(Anchor::Arrival {
                        rtp: f.rtp_time,
                        at: unix_us(f.received_wall),
                    });
                    notes.arrival_fallback = true;
                }
            }
        }
        self.release(user, arrival, false, out);
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
            notes.overflowed += 1;
        }
        notes
    }

    /// Places whatever is still waiting (the track ended): with the best
    /// mapping known, or by arrival time.
    pub fn flush(&mut self, user: &mut UserClock, out: &mut Vec<(i64, MediaFrame)>) {
        let now = self.pending.back().map_or(0, |f| unix_us(f.received_wall));
        self.release(user, now, true, out);
    }

    fn release(
        &mut self,
        user: &mut UserClock,
        now: i64,
        force: bool,
        out: &mut Vec<(i64, MediaFrame)>,
    ) {
        let base = match self.anchor {
            Some(Anchor::Sender { rtp, at }) => match user.offset(now) {
                Some(offset) => Some((rtp, at + offset)),
                None if force => user.best.map(|b| (rtp, at + b)),
                None => None,
            },
            Some(Anchor::Arrival { rtp, at }) => Some((rtp, at)),
            None => None,
        };
        let base = match (base, force) {
            (Some(b), _) => b,
            (None, true) => match self.pending.front() {
                Some(f) => (f.rtp_time, unix_us(f.received_wall)),
                None => return,
            },
            (None, false) => return,
        };
        while let Some(f) = self.pending.pop_front() {
            let t = base.1 + self.since(f.rtp_time, base.0);
            out.push((t, f));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::Codec;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    fn at(us: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    }

    /// A frame captured at sender time `capture_us` (sender clock), with
    /// RTP time derived from it, arriving `delay_us` later on a server
    /// clock that is `skew_us` ahead of the sender's.
    fn frame(
        rate: u32,
        rtp0: u64,
        capture_us: i64,
        delay_us: i64,
        skew_us: i64,
        sr: bool,
    ) -> MediaFrame {
        MediaFrame {
            codec: if rate == 48_000 {
                Codec::Opus
            } else {
                Codec::H264
            },
            data: Arc::from(vec![0u8; 3]),
            keyframe: true,
            rtp_time: rtp0 + (capture_us as u64) * u64::from(rate) / 1_000_000,
            clock_rate: rate,
            ntp_time: sr.then(|| at(1_000_000_000 + capture_us)),
            received_at: Instant::now(),
            received_wall: at(1_000_000_000 + capture_us + delay_us + skew_us),
            contiguous: true,
        }
    }

    #[test]
    fn audio_and_video_of_a_user_share_the_sender_clock_despite_jitter() {
        let mut user = UserClock::default();
        let (mut audio, mut video) = (TrackClock::new(48_000), TrackClock::new(90_000));
        let mut out_a = Vec::new();
        let mut out_v = Vec::new();
        // 1 s of media: audio every 20 ms with 5..25 ms delay, video every
        // 66 ms with 30..60 ms delay (big key frames); server 3 s ahead.
        for i in 0..50i64 {
            let t = i * 20_000;
            audio.push(
                frame(48_000, 1000, t, 5_000 + (i % 5) * 5_000, 3_000_000, true),
                &mut user,
                &mut out_a,
            );
            if i % 3 == 0 {
                let vt = i / 3 * 66_666;
                video.push(
                    frame(90_000, 77, vt, 30_000 + (i % 4) * 10_000, 3_000_000, true),
                    &mut user,
                    &mut out_v,
                );
            }
        }
        assert!(!out_a.is_empty() && !out_v.is_empty());
        // Same capture instant → same timeline instant (within rounding).
        let a0 = out_a[0].0;
        let v0 = out_v[0].0;
        assert!((a0 - v0).abs() < 100, "a0 {a0} v0 {v0}");
        // Offset = clock skew + the smallest delay (5 ms), not the jitter.
        assert_eq!(a0, 1_000_000_000 + 3_000_000 + 5_000);
        // Frames keep their RTP spacing exactly.
        assert_eq!(out_a[1].0 - out_a[0].0, 20_000);
    }

    #[test]
    fn frames_before_the_first_sender_report_are_placed_once_it_arrives() {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        for i in 0..10 {
            clock.push(
                frame(48_000, 0, i * 20_000, 10_000, 0, false),
                &mut user,
                &mut out,
            );
        }
        assert!(out.is_empty(), "no SR yet: held back");
        for i in 10..40 {
            clock.push(
                frame(48_000, 0, i * 20_000, 10_000, 0, true),
                &mut user,
                &mut out,
            );
        }
        // The offset settles 400 ms after the first SR (frame 10): frame 30.
        assert_eq!(out.len(), 40, "everything released once settled");
        assert_eq!(
            out[0].0,
            1_000_000_000 + 10_000,
            "the first frame, placed by the later SR"
        );
        assert!(
            out.windows(2).all(|w| w[1].0 - w[0].0 == 20_000),
            "in order, RTP spacing"
        );
    }

    #[test]
    fn a_track_without_sender_reports_falls_back_to_arrival_time() {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(90_000);
        let mut out = Vec::new();
        let mut fell_back = false;
        for i in 0..40 {
            let n = clock.push(
                frame(90_000, 5, i * 66_000, 7_000, 0, false),
                &mut user,
                &mut out,
            );
            fell_back |= n.arrival_fallback;
        }
        assert!(fell_back);
        assert_eq!(out[0].0, 1_000_000_000 + 7_000);
        assert_eq!(out[1].0 - out[0].0, 66_000);
    }

    #[test]
    fn drift_between_rtp_and_sender_reports_reanchors() {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        for i in 0..30 {
            clock.push(
                frame(48_000, 0, i * 20_000, 1_000, 0, true),
                &mut user,
                &mut out,
            );
        }
        // The sender's reports now say 50 ms later than its RTP clock does.
        let mut f = frame(48_000, 0, 30 * 20_000, 1_000, 0, true);
        f.ntp_time = Some(at(1_000_000_000 + 30 * 20_000 + 50_000));
        let n = clock.push(f, &mut user, &mut out);
        assert!(n.reanchored);
        let last = out.last().expect("placed").0;
        assert_eq!(last, 1_000_000_000 + 30 * 20_000 + 50_000 + 1_000);
    }

    #[test]
    fn an_ended_track_flushes_what_it_held() {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        for i in 0..5 {
            clock.push(
                frame(48_000, 0, i * 20_000, 2_000, 0, true),
                &mut user,
                &mut out,
            );
        }
        assert!(out.is_empty(), "offset still settling");
        clock.flush(&mut user, &mut out);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].0, 1_000_000_000 + 2_000);
    }
}
