//! The first moments of a track, kept for subscribers that arrive late.
//!
//! A recording task learns of a new track by looking at its room (every
//! 50 ms when idle, later on a loaded box: its thread runs at nice 10), and
//! a publisher's first key frame is sent the moment its session connects.
//! So the task often subscribes after that key frame went by, and a video
//! subscriber that starts at the next key frame loses everything before it:
//! a PLI's round trip and the encoder's answer, or the whole publication
//! when the publisher ignores PLIs. CI measured 4 frames (0.27 s) missing
//! from a 15 fps AvMerge file, and 0.54 s of the first publisher missing
//! from a mixed recording.
//!
//! So a track keeps its frames from its start (video: from its first key
//! frame) for [`HEAD_SPAN`] of arrival time; a subscriber that arrives
//! within it is handed them before anything newer, and a task that exists
//! when a publisher starts records the publisher from its first frame.
//! After the span (or past [`HEAD_MAX_FRAMES`] / [`HEAD_MAX_BYTES`]) the
//! head is let go for good: a later subscriber starts at the next key
//! frame, as before. The frames' payloads are shared (`Arc`), so the head
//! costs no copy of the media, and it holds at most a couple of seconds of
//! one track's frames once per track.
//!
//! Sans-IO: time is each frame's arrival time.

use std::time::{Duration, Instant};

use super::MediaFrame;

/// How long after a track's first frame its head is kept (a recorder's
/// look at its room takes 50 ms when idle; on a starved 2-core box its
/// thread was seen half a second late).
pub const HEAD_SPAN: Duration = Duration::from_secs(2);
/// Frames a head holds at most (2 s of 60 fps video, or of 50 fps audio
/// with room to spare); a track past it lets the head go.
pub const HEAD_MAX_FRAMES: usize = 256;
/// Bytes a head holds at most (2 s of 8 Mbit/s video); a track past it
/// lets the head go.
pub const HEAD_MAX_BYTES: usize = 2 << 20;

/// The frames a track delivered since it started, while they are recent.
#[derive(Debug, Default)]
pub struct TrackHead {
    frames: Vec<MediaFrame>,
    bytes: usize,
    /// Arrival of the track's first frame.
    started: Option<Instant>,
    /// The head was let go (span or bounds passed); it never reopens.
    closed: bool,
}

impl TrackHead {
    /// Takes a frame the track delivered. `video` frames are kept from the
    /// first key frame on (a subscriber could not decode those before it).
    pub fn push(&mut self, frame: &MediaFrame, video: bool) {
        if self.closed {
            return;
        }
        let started = *self.started.get_or_insert(frame.received_at);
        let too_late = frame.received_at.saturating_duration_since(started) > HEAD_SPAN;
        let too_big = self.frames.len() >= HEAD_MAX_FRAMES
            || self.bytes.saturating_add(frame.data.len()) > HEAD_MAX_BYTES;
        if too_late || too_big {
            self.close();
            return;
        }
        if video && self.frames.is_empty() && !frame.keyframe {
            return;
        }
        self.bytes = self.bytes.saturating_add(frame.data.len());
        self.frames.push(frame.clone());
    }

    /// What a subscriber arriving now receives first: the track from its
    /// start (video: from its first key frame), oldest first. Empty once
    /// the head was let go, or while a video track has sent no key frame.
    pub fn frames(&self) -> &[MediaFrame] {
        &self.frames
    }

    fn close(&mut self) {
        self.closed = true;
        self.frames = Vec::new();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::Codec;
    use std::sync::Arc;
    use std::time::SystemTime;

    fn frame(t0: Instant, ms: u64, keyframe: bool, size: usize) -> MediaFrame {
        MediaFrame {
            codec: Codec::H264,
            data: Arc::from(vec![0u8; size]),
            keyframe,
            rtp_time: ms * 90,
            clock_rate: 90_000,
            ntp_time: None,
            received_at: t0 + Duration::from_millis(ms),
            received_wall: SystemTime::now(),
            report_stamp: None,
            contiguous: true,
        }
    }

    #[test]
    fn video_is_kept_from_its_first_key_frame_until_the_span_ends() {
        let t0 = Instant::now();
        let mut head = TrackHead::default();
        head.push(&frame(t0, 0, false, 10), true);
        assert!(head.frames().is_empty(), "nothing before a key frame");
        head.push(&frame(t0, 67, true, 10), true);
        head.push(&frame(t0, 133, false, 10), true);
        let kept: Vec<_> = head.frames().iter().map(|f| f.rtp_time).collect();
        assert_eq!(kept, vec![67 * 90, 133 * 90]);
        // The span counts from the track's first frame, key frame or not.
        head.push(&frame(t0, 2_000, false, 10), true);
        assert_eq!(head.frames().len(), 3);
        head.push(&frame(t0, 2_001, false, 10), true);
        assert!(head.frames().is_empty(), "let go after the span");
        head.push(&frame(t0, 2_100, true, 10), true);
        assert!(head.frames().is_empty(), "never reopens");
    }

    #[test]
    fn audio_is_kept_from_its_first_frame() {
        let t0 = Instant::now();
        let mut head = TrackHead::default();
        for ms in (0..400).step_by(20) {
            head.push(&frame(t0, ms, true, 50), false);
        }
        assert_eq!(head.frames().len(), 20);
    }

    #[test]
    fn a_head_past_its_bounds_is_let_go() {
        let t0 = Instant::now();
        let mut head = TrackHead::default();
        for n in 0..HEAD_MAX_FRAMES as u64 {
            head.push(&frame(t0, n, true, 1), false);
        }
        assert_eq!(head.frames().len(), HEAD_MAX_FRAMES);
        head.push(&frame(t0, 300, true, 1), false);
        assert!(head.frames().is_empty(), "one frame too many");

        let mut head = TrackHead::default();
        head.push(&frame(t0, 0, true, HEAD_MAX_BYTES - 1), true);
        assert_eq!(head.frames().len(), 1);
        head.push(&frame(t0, 33, false, 2), true);
        assert!(head.frames().is_empty(), "one byte too many");
    }
}
