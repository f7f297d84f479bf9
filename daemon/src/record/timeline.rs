//! The shared recording timeline: where every frame of every user sits in
//! server time, so that a user's audio and video files, and different
//! users' files, line up (docs/recording.md, "A/V sync").
//!
//! Method:
//! 1. Within a track, time comes from the RTP timestamp (smooth, immune to
//!    network jitter): `sender_time = anchor_sender + (rtp − anchor_rtp) /
//!    clock_rate`, anchored on the sender's RTCP sender report (the
//!    ingest puts the SR-derived sender wall time on each frame).
//! 2. A sender's first report can be wrong: some stacks (str0m among
//!    them) send one before any media, pairing "now" with RTP time zero.
//!    So a track holds its frames until a second report confirms the
//!    mapping (one that maps differently replaces a wrong first; one that
//!    maps alike, told apart from a repeat by its own NTP stamp, confirms
//!    it), or [`CONFIRM_US`] (longer than the usual 5 s audio report
//!    interval) has passed; the latest report anchors.
//! 3. A user's tracks share the sender's clock, so their sender times are
//!    directly comparable: audio and video of one user line up as the
//!    sender captured them.
//! 4. Sender time becomes server time by a per-user offset: the smallest
//!    `arrival − sender_time` over the held frames of the user's first
//!    confirmed track (the least-delayed frame: the one-way network delay
//!    plus the clock difference, without jitter). Later tracks of the user
//!    use the same offset.
//! 5. If a track's RTP clock drifts from its sender reports by more than
//!    [`REANCHOR_US`], it re-anchors. The reports are judged by the
//!    earliest mapping among those seen in the last [`REPORT_WINDOW_US`]:
//!    a report is only ever late (a starved sender stamps it after the
//!    RTP time it pairs, aiortc by up to a quarter second), so one late
//!    report is outvoted by the good one before it, and a track moves only
//!    when every recent report agrees (a real step of the sender's clock
//!    is followed [`REPORT_WINDOW_US`] later; an earlier mapping at once).
//!    A re-anchor is refused when the mapping contradicts the track's
//!    long-run rate: the report's mapping
//!    differs from the track's first one (its origin) by more than
//!    [`MAX_REPORT_RATE_ERROR`] of the RTP time since then. No clock runs
//!    that far off, so the report is broken and ignored (GStreamer 1.22's
//!    reports advance their RTP time at about twice the clock rate: judged
//!    against the origin every one of them is refused, and the track goes
//!    on by its RTP clock instead of jumping back at every report). A
//!    sender whose media clock stalls (a starved capture thread sends less
//!    audio than wall time) drifts by a small share of the long run: its
//!    reports are accepted, the track jumps forward, and the audio gap is
//!    filled — judging against the previous anchor instead would refuse a
//!    stall of a quarter of one report interval and lose that time.
//!
//! Limits: a track with no sender report within [`SR_WAIT_US`] is placed
//! by the arrival time of its first frame (its error is that frame's
//! network delay and jitter). Different users are aligned to within the
//! difference of their one-way delays; publishers whose clocks drift from
//! the server's drift apart slowly (ppm) over long recordings. Opus
//! encoder look-ahead (about 6.5 ms) is not compensated: the RTP time does
//! not say how much the sender's encoder used.
//!
//! Sans-IO: frames carry their own arrival time; nothing here reads a clock.

use std::collections::VecDeque;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::room::MediaFrame;

/// How long a track waits for a second sender report to confirm the first.
pub const CONFIRM_US: i64 = 5_500_000;
/// How long a track waits for its first sender report.
pub const SR_WAIT_US: i64 = 2_000_000;
/// Drift between RTP time and sender reports that triggers a re-anchor.
pub const REANCHOR_US: i64 = 20_000;
/// Sender reports are judged by the earliest mapping seen this recently
/// (longer than a report interval, so that a late report is outvoted).
pub const REPORT_WINDOW_US: i64 = 2_500_000;
/// Distinct recent report mappings kept at most.
const MAX_RECENT_REPORTS: usize = 32;
/// The largest drift from the track's first mapping (its origin), as a
/// share of the RTP time since, that a re-anchor accepts (a real clock is
/// off by parts per million; a stall or a step of the sender's wall clock
/// can be large but is rare).
pub const MAX_REPORT_RATE_ERROR: f64 = 0.25;
/// A report whose mapping differs from the first by more than this is a
/// new report (a repeat of the same report maps identically).
const NEW_REPORT_US: i128 = 50;
/// Frames a track holds at most while waiting (CONFIRM_US of 60 fps video
/// or 50 fps audio fits).
const MAX_PENDING: usize = 1024;

/// Microseconds since the Unix epoch (negative before it, saturating).
pub fn unix_us(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// One user's sender clock → server clock offset, fixed by the user's
/// first confirmed track.
#[derive(Debug, Default, Clone)]
pub struct UserClock {
    offset: Option<i64>,
}

impl UserClock {
    pub fn offset(&self) -> Option<i64> {
        self.offset
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
    /// A report contradicted the track's long-run RTP rate and was ignored.
    pub reports_refused: bool,
    pub overflowed: usize,
}

/// Places one track's frames on the server timeline.
#[derive(Debug)]
pub struct TrackClock {
    clock_rate: i64,
    anchor: Option<Anchor>,
    /// Mapping constant of the first report, and when it arrived.
    first_report: Option<(i128, i64)>,
    /// The NTP stamp of the first report (tells a second report that maps
    /// alike from a repeat of the first).
    first_stamp: Option<i64>,
    confirmed: bool,
    released: bool,
    /// The first sender anchor placed frames from (module docs, step 5).
    origin: Option<(u64, i64)>,
    /// Mapping constant of the last refused report (each frame repeats the
    /// report in force; it is counted once).
    refused_mapping: Option<i128>,
    /// Recent report mappings and when each was last in force (arrival µs).
    recent_reports: VecDeque<(i128, i64)>,
    pending: VecDeque<MediaFrame>,
}

impl TrackClock {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            clock_rate: i64::from(clock_rate.max(1)),
            anchor: None,
            first_report: None,
            first_stamp: None,
            confirmed: false,
            released: false,
            origin: None,
            refused_mapping: None,
            recent_reports: VecDeque::new(),
            pending: VecDeque::new(),
        }
    }

    fn since(&self, rtp: u64, anchor_rtp: u64) -> i64 {
        let ticks = rtp as i128 - anchor_rtp as i128;
        (ticks * 1_000_000 / i128::from(self.clock_rate)) as i64
    }

    /// Sender µs minus RTP µs: equal for every frame mapped by one report.
    fn mapping(&self, rtp: u64, sender: i64) -> i128 {
        i128::from(sender) - rtp as i128 * 1_000_000 / i128::from(self.clock_rate)
    }

    /// Whether a report mapping `rtp` to `sender` µs is off the origin's
    /// mapping by more than [`MAX_REPORT_RATE_ERROR`] of the RTP time since.
    fn contradicts_origin(&self, rtp: u64, sender: i64) -> bool {
        let Some((origin_rtp, origin_at)) = self.origin else {
            return false;
        };
        let elapsed = self.since(rtp, origin_rtp);
        let drift = sender.saturating_sub(origin_at.saturating_add(elapsed));
        drift.unsigned_abs() as f64 > MAX_REPORT_RATE_ERROR * elapsed.unsigned_abs().max(1) as f64
    }

    /// Notes the report mapping `c` in force at `arrival`; returns the
    /// earliest mapping in force within [`REPORT_WINDOW_US`].
    fn recent_earliest(&mut self, c: i128, arrival: i64) -> i128 {
        match self
            .recent_reports
            .iter_mut()
            .find(|(m, _)| (*m - c).abs() <= NEW_REPORT_US)
        {
            Some(seen) => seen.1 = arrival,
            None => {
                self.recent_reports.push_back((c, arrival));
                if self.recent_reports.len() > MAX_RECENT_REPORTS {
                    self.recent_reports.pop_front();
                }
            }
        }
        self.recent_reports
            .retain(|(_, seen)| arrival.saturating_sub(*seen) <= REPORT_WINDOW_US);
        self.recent_reports
            .iter()
            .map(|(m, _)| *m)
            .min()
            .unwrap_or(c)
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
            let latest = Anchor::Sender {
                rtp: frame.rtp_time,
                at: sender,
            };
            let earliest = self.recent_earliest(self.mapping(frame.rtp_time, sender), arrival);
            match self.anchor {
                None | Some(Anchor::Sender { .. }) if !self.released => {
                    let c = self.mapping(frame.rtp_time, sender);
                    let stamp = frame.report_stamp.map(unix_us);
                    match self.first_report {
                        None => self.first_report = Some((c, arrival)),
                        Some((first, _)) if (c - first).abs() > NEW_REPORT_US => {
                            // The first report was wrong (str0m's before any
                            // media): it must not outvote the one confirmed.
                            self.confirmed = true;
                            self.recent_reports
                                .retain(|(m, _)| (*m - c).abs() <= NEW_REPORT_US);
                        }
                        // Another report that maps alike confirms the first
                        // (a wrong one could not agree with it).
                        Some(_)
                            if stamp.is_some_and(|s| self.first_stamp.is_some_and(|f| f != s)) =>
                        {
                            self.confirmed = true;
                        }
                        Some(_) => {}
                    }
                    self.first_stamp = self.first_stamp.or(stamp);
                    self.anchor = Some(latest);
                }
                Some(Anchor::Sender { rtp, at }) => {
                    // This frame's sender time by the earliest recent report.
                    let rtp_us = frame.rtp_time as i128 * 1_000_000 / i128::from(self.clock_rate);
                    let sender = i64::try_from(earliest + rtp_us).unwrap_or(sender);
                    let latest = Anchor::Sender {
                        rtp: frame.rtp_time,
                        at: sender,
                    };
                    let elapsed = self.since(frame.rtp_time, rtp);
                    let drift = sender - (at + elapsed);
                    if drift.abs() > REANCHOR_US {
                        if self.contradicts_origin(frame.rtp_time, sender) {
                            let c = earliest;
                            if self
                                .refused_mapping
                                .is_none_or(|m| (c - m).abs() > NEW_REPORT_US)
                            {
                                self.refused_mapping = Some(c);
                                notes.reports_refused = true;
                            }
                        } else {
                            self.anchor = Some(latest);
                            notes.reanchored = true;
                        }
                    }
                }
                _ => {}
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
        let ready = self.released
            || matches!(self.anchor, Some(Anchor::Arrival { .. }))
            || (matches!(self.anchor, Some(Anchor::Sender { .. }))
                && (self.confirmed
                    || self
                        .first_report
                        .is_some_and(|(_, at)| arrival - at >= CONFIRM_US)));
        if ready {
            self.release(user, out);
        }
        while self.pending.len() > MAX_PENDING {
            self.pending.pop_front();
            notes.overflowed += 1;
        }
        notes
    }

    /// Server arrival time (unix µs) of the oldest frame the track holds
    /// unplaced, while it waits for its sender reports; `None` once it
    /// places frames as they come.
    pub fn holding_since(&self) -> Option<i64> {
        if self.released {
            return None;
        }
        self.pending.front().map(|f| unix_us(f.received_wall))
    }

    /// Places whatever is still waiting (the track ended): with the best
    /// mapping known, or by arrival time.
    pub fn flush(&mut self, user: &mut UserClock, out: &mut Vec<(i64, MediaFrame)>) {
        if self.anchor.is_none() {
            if let Some(f) = self.pending.front() {
                self.anchor = Some(Anchor::Arrival {
                    rtp: f.rtp_time,
                    at: unix_us(f.received_wall),
                });
            }
        }
        self.release(user, out);
    }

    fn release(&mut self, user: &mut UserClock, out: &mut Vec<(i64, MediaFrame)>) {
        let base = match self.anchor {
            Some(Anchor::Sender { rtp, at }) => {
                let offset = match user.offset {
                    Some(o) => o,
                    None => {
                        // The least-delayed held frame fixes the user's offset.
                        let best = self
                            .pending
                            .iter()
                            .map(|f| unix_us(f.received_wall) - (at + self.since(f.rtp_time, rtp)))
                            .min();
                        let Some(best) = best else {
                            return;
                        };
                        user.offset = Some(best);
                        best
                    }
                };
                self.origin.get_or_insert((rtp, at));
                (rtp, at + offset)
            }
            Some(Anchor::Arrival { rtp, at }) => (rtp, at),
            None => return,
        };
        self.released = true;
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

    const T0: i64 = 1_000_000_000;

    fn at(us: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    }

    /// A frame captured at sender time `capture_us` (sender clock), with
    /// RTP time derived from it, arriving `delay_us` later on a server
    /// clock `skew_us` ahead of the sender's. `report_error_us` is how
    /// wrong the sender report in force is (None: no report yet).
    fn frame(
        rate: u32,
        rtp0: u64,
        capture_us: i64,
        delay_us: i64,
        skew_us: i64,
        report_error_us: Option<i64>,
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
            ntp_time: report_error_us.map(|e| at(T0 + capture_us + e)),
            received_at: Instant::now(),
            received_wall: at(T0 + capture_us + delay_us + skew_us),
            report_stamp: None,
            contiguous: true,
        }
    }

    #[test]
    fn a_wrong_first_report_is_replaced_before_anything_is_placed() {
        // Like str0m: the first report (before any media) is 67 ms off;
        // the second, 1 s later, is right. Audio every 20 ms with 5..25 ms
        // delay, video every 66 ms with 5..35 ms delay; server 3 s ahead.
        let mut user = UserClock::default();
        let (mut audio, mut video) = (TrackClock::new(48_000), TrackClock::new(90_000));
        let (mut out_a, mut out_v) = (Vec::new(), Vec::new());
        for i in 0..150i64 {
            let t = i * 20_000;
            let err = Some(if t < 1_000_000 { -67_000 } else { 0 });
            audio.push(
                frame(48_000, 1000, t, 5_000 + (i % 5) * 5_000, 3_000_000, err),
                &mut user,
                &mut out_a,
            );
            if i % 3 == 0 {
                let vt = i / 3 * 66_666;
                let err = Some(if vt < 1_000_000 { -67_000 } else { 0 });
                video.push(
                    frame(90_000, 77, vt, 5_000 + (i % 4) * 10_000, 3_000_000, err),
                    &mut user,
                    &mut out_v,
                );
            }
            if i < 45 {
                // Both tracks still have only the first report.
                assert!(out_a.is_empty() && out_v.is_empty(), "held until confirmed");
            }
        }
        assert_eq!(out_a.len(), 150, "every audio frame placed");
        assert_eq!(out_v.len(), 50, "every video frame placed");
        // The offset is the clock skew plus the smallest delay (5 ms), not
        // the jitter and not the bad report.
        // (±2 µs: RTP ticks are rounded.)
        let near = |a: i64, b: i64| (a - b).abs() <= 2;
        let offset = user.offset().expect("fixed");
        assert!(near(offset, 3_005_000), "{offset}");
        assert!(near(out_a[0].0, T0 + 3_005_000), "{}", out_a[0].0);
        assert!(
            near(out_v[0].0, out_a[0].0),
            "same capture instant → same timeline instant"
        );
        assert!(
            out_a.windows(2).all(|w| w[1].0 - w[0].0 == 20_000),
            "RTP spacing kept"
        );
    }

    #[test]
    fn a_single_report_is_trusted_after_the_confirmation_wait() {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        let confirm_frames = CONFIRM_US / 20_000;
        for i in 0..confirm_frames {
            clock.push(
                frame(48_000, 0, i * 20_000, 2_000, 0, Some(0)),
                &mut user,
                &mut out,
            );
        }
        assert!(out.is_empty(), "one report, not yet confirmed");
        clock.push(
            frame(48_000, 0, confirm_frames * 20_000, 2_000, 0, Some(0)),
            &mut user,
            &mut out,
        );
        assert_eq!(out.len() as i64, confirm_frames + 1);
        assert_eq!(out[0].0, T0 + 2_000);
    }

    #[test]
    fn a_second_report_that_agrees_confirms_the_first_at_once() {
        // Reports once a second that map alike (a steady sender's clock,
        // like str0m's or a browser's): the second, told apart by its own
        // NTP stamp, confirms the first; nothing waits for CONFIRM_US.
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        for i in 0..60i64 {
            let mut f = frame(48_000, 0, i * 20_000, 2_000, 0, Some(0));
            let report = i * 20_000 / 1_000_000;
            f.report_stamp = Some(at(T0 + report * 1_000_000));
            clock.push(f, &mut user, &mut out);
            if i < 50 {
                assert!(out.is_empty(), "frame {i}: only the first report yet");
                assert!(clock.holding_since().is_some());
            }
        }
        assert_eq!(out.len(), 60, "placed from the second report on");
        assert_eq!(out[0].0, T0 + 2_000);
        assert_eq!(clock.holding_since(), None);
    }

    #[test]
    fn frames_before_the_first_report_are_placed_by_it() {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        for i in 0..40 {
            let report = (i >= 10).then_some(if i < 25 { 30_000 } else { 0 });
            clock.push(
                frame(48_000, 0, i * 20_000, 10_000, 0, report),
                &mut user,
                &mut out,
            );
        }
        assert_eq!(out.len(), 40);
        assert_eq!(
            out[0].0,
            T0 + 10_000,
            "the first frame, placed by the later report"
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
                frame(90_000, 5, i * 66_000, 7_000, 0, None),
                &mut user,
                &mut out,
            );
            fell_back |= n.arrival_fallback;
        }
        assert!(fell_back);
        assert_eq!(out[0].0, T0 + 7_000);
        assert_eq!(out[1].0 - out[0].0, 66_000);
    }

    /// One late report (a starved sender stamps it late) moves nothing;
    /// reports that all agree on a later mapping move the track once the
    /// earlier one has left the window.
    #[test]
    fn a_late_report_is_outvoted_and_a_lasting_step_reanchors_after_the_window() {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        let mut reanchored_at = Vec::new();
        for i in 0..500 {
            let report = Some(match i {
                0..5 => 100,      // a second report at frame 5 confirms
                30..80 => 80_000, // one report, 80 ms late, for 1 s
                200.. => 50_000,  // from 4 s on, every report 50 ms later
                _ => 0,
            });
            let n = clock.push(
                frame(48_000, 0, i * 20_000, 1_000, 0, report),
                &mut user,
                &mut out,
            );
            if n.reanchored {
                reanchored_at.push(i);
            }
        }
        // The last report at the old mapping was in force at frame 199;
        // 2.5 s (125 frames) later it leaves the window: frame 325 moves.
        assert_eq!(reanchored_at, vec![325]);
        assert_eq!(out.len(), 500);
        for (i, w) in out.windows(2).enumerate() {
            let step = if i + 1 == 325 { 70_000 } else { 20_000 };
            assert_eq!(w[1].0 - w[0].0, step, "frame {}", i + 1);
        }
    }

    /// GStreamer 1.22's sender reports advance their RTP time at about
    /// twice the clock rate: each new report maps the same RTP time a whole
    /// report interval earlier. The track must not jump back at every
    /// report: it refuses them and goes on by its RTP clock.
    #[test]
    fn reports_that_contradict_the_rtp_clock_are_refused() {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        let mut refused = 0;
        let mut reanchored = 0;
        for i in 0..500 {
            let capture = i * 20_000; // 10 s of 20 ms frames
                                      // A report every second, each "earlier" by the time since the first.
            let report_at = (capture / 1_000_000) * 1_000_000;
            let error = if i < 50 { 0 } else { -report_at };
            let n = clock.push(
                frame(48_000, 0, capture, 1_000, 0, Some(error)),
                &mut user,
                &mut out,
            );
            refused += usize::from(n.reports_refused);
            reanchored += usize::from(n.reanchored);
        }
        // The report at 1 s confirms the mapping (nothing placed yet to
        // judge it by); those at 2..9 s are refused, once each.
        assert_eq!(refused, 8);
        assert_eq!(reanchored, 0);
        assert!(!out.is_empty());
        assert!(
            out.windows(2).all(|w| w[1].0 - w[0].0 == 20_000),
            "placed 20 ms apart throughout, never back in time"
        );
    }

    /// Audio 20 ms apart whose sender's media clock stalls for `stall_us`
    /// after `stall_at` frames: later frames carry RTP time that lags the
    /// sender's wall clock (and their arrival) by the stall. Returns the
    /// placed times and how many reports were refused and re-anchored on.
    fn stalled_audio(stall_at: i64, stall_us: i64, frames: i64) -> (Vec<i64>, usize, usize) {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        let (mut refused, mut reanchored) = (0, 0);
        for i in 0..frames {
            let lag = if i < stall_at { 0 } else { stall_us };
            let report = if i < 5 { 100 } else { lag };
            let n = clock.push(
                frame(48_000, 0, i * 20_000, 1_000, lag, Some(report)),
                &mut user,
                &mut out,
            );
            refused += usize::from(n.reports_refused);
            reanchored += usize::from(n.reanchored);
        }
        (out.iter().map(|(t, _)| *t).collect(), refused, reanchored)
    }

    /// A stall is a small share of the long run: once every recent
    /// report agrees (the last one from before the stall, in force until
    /// frame 99, leaves the window at frame 210: arrivals are 300 ms later
    /// from frame 100), the track re-anchors, jumps forward by the stall,
    /// and its span stays the wall time (the audio transcoder fills the
    /// gap), instead of coming out short.
    #[test]
    fn a_stalled_sender_clock_jumps_forward_with_its_reports() {
        let (placed, refused, reanchored) = stalled_audio(100, 300_000, 300);
        assert_eq!((refused, reanchored), (0, 1));
        assert_eq!(placed[210] - placed[209], 20_000 + 300_000);
        assert_eq!(placed[299] - placed[0], 299 * 20_000 + 300_000);
    }

    /// A stall early in the stream: by the time the window has let go of
    /// the report before it (frame 135), the long run makes the stall
    /// plausible, and the track catches up — never left short for good.
    #[test]
    fn an_early_stall_is_taken_once_the_window_has_passed() {
        let (placed, refused, reanchored) = stalled_audio(25, 300_000, 150);
        assert_eq!((refused, reanchored), (0, 1));
        assert_eq!(placed[135] - placed[134], 20_000 + 300_000);
        assert_eq!(placed[149] - placed[0], 149 * 20_000 + 300_000);
    }

    #[test]
    fn an_ended_track_flushes_what_it_held() {
        let mut user = UserClock::default();
        let mut clock = TrackClock::new(48_000);
        let mut out = Vec::new();
        for i in 0..5 {
            clock.push(
                frame(48_000, 0, i * 20_000, 2_000, 0, Some(0)),
                &mut user,
                &mut out,
            );
        }
        assert!(out.is_empty(), "waiting for confirmation");
        clock.flush(&mut user, &mut out);
        assert_eq!(out.len(), 5);
        assert_eq!(out[0].0, T0 + 2_000);
    }
}
