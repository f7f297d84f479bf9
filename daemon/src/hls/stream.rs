//! One recorded HLS stream: a playlist and its TS segments for one user's
//! audio, video, or (AvMerge = 1) both.
//!
//! Frames come in already placed on the task timeline (server µs, see
//! `record::timeline`); out come the files to store, in the order they
//! must be stored (a segment before the playlist that names it).
//!
//! - PTS = 90 kHz ticks since the task's epoch plus [`BASE_90K`], the same
//!   for every stream of a task, so files can also be aligned by PTS.
//! - Video is passed through; SPS/PPS go in front of every key frame that
//!   lacks them, so every segment decodes on its own.
//! - Opus becomes AAC-LC with the publisher's channel count at 48 kHz.
//! - A merged (`av`) stream is cut at video key frames while the user
//!   sends video and at the target duration on audio otherwise; when video
//!   starts, the segment is cut at its first key frame so the new segment
//!   declares the video stream from its first byte.
//! - A stream whose tracks all end gets `#EXT-X-ENDLIST`; if the user
//!   comes back, it continues after `#EXT-X-DISCONTINUITY`.
//!
//! Sans-IO: no clock, no files.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::hls::naming::{unix_ms, Media, Naming, TrackType};
use crate::hls::playlist::StampedPlaylist;
use crate::hls::segmenter::{Decision, Segmenter, SegmenterConfig};
use crate::media::aac::{AacError, OpusToAac};
use crate::media::h264;
use crate::media::ts::TsMuxer;
use crate::room::TrackKind;

/// PTS of the task epoch: 10 s, so media placed slightly before the epoch
/// (offset estimation) never goes negative.
pub const BASE_90K: u64 = 900_000;
const BASE_48K: u64 = 480_000;
/// Audio bit rate per channel.
const AAC_BPS_PER_CHANNEL: u32 = 64_000;
/// How far one side of a merged stream may run ahead of a silent other side.
const MAX_INTERLEAVE_90K: u64 = 8 * 90_000;
/// At most one key frame request per this many ticks (1 s).
const KEYFRAME_REQUEST_EVERY: u64 = 90_000;

/// Which stream of which user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamId {
    pub user_id: String,
    pub media: Media,
    pub track_type: TrackType,
}

/// What the stream asks its owner to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Store a finished segment.
    Segment { key: String, data: Vec<u8> },
    /// Store (replace) the playlist.
    Playlist {
        key: String,
        file_name: String,
        text: String,
        /// Unix ms of the first media (`#EXT-X-TRTC-START-REC-TIME`).
        begin_ms: u64,
    },
    /// The first segment was cut (callback 307); follows its Segment and
    /// precedes the first Playlist output (whose storing means 304).
    FirstSegment { file_name: String, begin_ms: u64 },
    /// The open segment runs long: ask the publisher for a key frame.
    WantKeyframe,
    /// Bytes of the open segment to make durable now (about once a second
    /// of media), so that a crash loses at most that much: a later run
    /// recovers the segment from them (`hls::recover`). The segment's own
    /// [`Output::Segment`] supersedes them.
    Journal(JournalWrite),
}

/// What the journal of an open segment needs.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalWrite {
    /// The segment's file name and storage key.
    pub file_name: String,
    pub key: String,
    /// Where `bytes` go in the segment.
    pub offset: u64,
    pub bytes: Vec<u8>,
    /// With the first write of a segment: how to finish its playlist.
    pub opened: Option<JournalOpened>,
}

/// The playlist an open segment belongs to, as it stands before it.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalOpened {
    pub playlist_key: String,
    pub playlist_file_name: String,
    /// The playlist's text without this segment (not ended).
    pub playlist_text: String,
    pub discontinuity: bool,
}

/// How much media an open segment may hold that is not yet durable.
const JOURNAL_EVERY_90K: u64 = 90_000;

#[derive(Debug)]
struct OpenSegment {
    file_name: String,
    /// Unix ms of its start, which its name says too.
    start_ms: u64,
    buf: Vec<u8>,
    has_video: bool,
    discontinuity: bool,
    /// Bytes already handed out as [`Output::Journal`].
    journaled: usize,
    /// PTS of the last journal write (the first frame's, before any).
    journal_pts: Option<u64>,
}

pub struct HlsStream {
    id: StreamId,
    naming: Arc<Naming>,
    playlist_name: String,
    epoch_us: i64,
    segmenter: Segmenter,
    muxer: TsMuxer,
    playlist: Option<StampedPlaylist>,
    open: Option<OpenSegment>,
    discontinuity_next: bool,
    /// The latest SPS and PPS NAL units (without start codes).
    sps: Vec<u8>,
    pps: Vec<u8>,
    video_size: Option<(u32, u32)>,
    aac: Option<OpusToAac>,
    audio_active: bool,
    video_active: bool,
    last_video_pts: Option<u64>,
    last_keyframe_request: Option<u64>,
    /// Merged streams: frames waiting to be written in PTS order.
    queued_video: VecDeque<(i64, bool, Vec<u8>)>,
    queued_audio: VecDeque<(u64, Vec<u8>)>,
    /// Frames that could not be recorded (corrupt audio); for metrics.
    pub errors: u64,
    /// Segments ended without a key frame to cut at (too long, or too
    /// large), and the frames dropped until the next key frame.
    pub ended_early: u64,
}

/// The most an open segment (held in memory until it is cut) may hold;
/// past it the segment is ended at once, as when no key frame comes
/// ([`crate::hls::segmenter::MAX_KEYFRAME_WAIT`]).
pub const MAX_SEGMENT_BYTES: usize = 64 * 1024 * 1024;

/// Unix µs → PTS on the task timeline.
fn pts_of(t_us: i64, epoch_us: i64) -> u64 {
    let ticks = (t_us - epoch_us) as i128 * 9 / 100 + i128::from(BASE_90K);
    ticks.max(0) as u64
}

fn wall_of(pts: u64, epoch_us: i64) -> SystemTime {
    let us = epoch_us + ((pts as i128 - i128::from(BASE_90K)) * 100 / 9) as i64;
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

/// Opus TOC byte: the `s` bit says stereo.
fn opus_channels(packet: &[u8]) -> u8 {
    match packet.first() {
        Some(toc) if toc & 0x04 != 0 => 2,
        _ => 1,
    }
}

impl HlsStream {
    pub fn new(id: StreamId, naming: Arc<Naming>, epoch_us: i64, cfg: SegmenterConfig) -> Self {
        let playlist_name = naming.single_playlist(&id.user_id, id.media, id.track_type);
        Self::with_names(id, playlist_name, naming, epoch_us, cfg)
    }

    /// The mixed-stream file of a task (`<SdkAppId>_<RoomId>.m3u8`), fed
    /// with encoded video ([`Self::push_video`]) and AAC
    /// ([`Self::push_aac`]). `track_type` says which of the two it carries.
    pub fn mixed(
        track_type: TrackType,
        naming: Arc<Naming>,
        epoch_us: i64,
        cfg: SegmenterConfig,
    ) -> Self {
        let id = StreamId {
            user_id: String::new(),
            media: Media::Main,
            track_type,
        };
        let playlist_name = naming.mixed_playlist();
        Self::with_names(id, playlist_name, naming, epoch_us, cfg)
    }

    fn with_names(
        id: StreamId,
        playlist_name: String,
        naming: Arc<Naming>,
        epoch_us: i64,
        cfg: SegmenterConfig,
    ) -> Self {
        let (video, audio) = match id.track_type {
            TrackType::Audio => (false, true),
            TrackType::Video => (true, false),
            TrackType::AudioVideo => (false, true),
        };
        Self {
            id,
            naming,
            playlist_name,
            epoch_us,
            segmenter: Segmenter::new(cfg),
            muxer: TsMuxer::new(video, audio),
            playlist: None,
            open: None,
            discontinuity_next: false,
            sps: Vec::new(),
            pps: Vec::new(),
            video_size: None,
            aac: None,
            audio_active: false,
            video_active: false,
            last_video_pts: None,
            last_keyframe_request: None,
            queued_video: VecDeque::new(),
            queued_audio: VecDeque::new(),
            errors: 0,
            ended_early: 0,
        }
    }

    fn merged(&self) -> bool {
        self.id.track_type == TrackType::AudioVideo
    }

    /// A track of this stream starts (or starts again after leaving).
    pub fn begin_track(&mut self, kind: TrackKind) {
        match kind {
            TrackKind::Audio => self.audio_active = true,
            TrackKind::MainVideo | TrackKind::AuxVideo => {
                self.video_active = true;
                self.last_video_pts = None;
            }
        }
        if let Some(p) = self.playlist.as_mut() {
            if p.ended {
                p.ended = false;
            }
        }
    }

    /// A track of this stream ended. When none is left, the open segment
    /// is closed and the playlist ends.
    pub fn end_track(&mut self, kind: TrackKind, out: &mut Vec<Output>) {
        match kind {
            TrackKind::Audio => {
                if let Some(aac) = self.aac.take() {
                    match aac.finish() {
                        Ok(frames) => {
                            for f in frames {
                                self.write_aac(f.pts_90k, &f.adts, out);
                            }
                        }
                        Err(_) => self.errors += 1,
                    }
                }
                self.audio_active = false;
            }
            TrackKind::MainVideo | TrackKind::AuxVideo => self.video_active = false,
        }
        let over = !self.audio_active && !self.video_active;
        self.interleave(over, out);
        if over {
            self.end(out);
        }
    }

    /// Ends the stream now (task end): every track is over.
    pub fn finish(&mut self, out: &mut Vec<Output>) {
        if self.audio_active {
            self.end_track(TrackKind::Audio, out);
        }
        self.audio_active = false;
        self.video_active = false;
        self.interleave(true, out);
        self.end(out);
    }

    fn end(&mut self, out: &mut Vec<Output>) {
        let was_ended = self.playlist.as_ref().is_none_or(|p| p.ended);
        if let Some(p) = self.playlist.as_mut() {
            // Set first, so that closing the last segment writes the final
            // playlist once.
            p.ended = true;
        }
        match self.segmenter.finish() {
            Some(seconds) => self.close_segment(seconds, out),
            None if !was_ended => self.emit_playlist(out),
            None => {}
        }
        // Whatever comes next continues after a discontinuity.
        self.discontinuity_next = self.playlist.is_some();
    }

    /// A video access unit at server time `t_us`.
    pub fn push_video(&mut self, t_us: i64, keyframe: bool, au: &[u8], out: &mut Vec<Output>) {
        if self.merged() {
            self.queued_video.push_back((t_us, keyframe, au.to_vec()));
            self.interleave(false, out);
        } else {
            self.write_video(t_us, keyframe, au, out);
        }
    }

    /// Merged streams: audio and video reach the stream at different times
    /// (each track's clock confirms on its own, and AAC frames come in
    /// bursts), so they are queued and written in presentation order. A
    /// side whose track is gone, or has stalled for [`MAX_INTERLEAVE_90K`],
    /// does not hold the other back.
    fn interleave(&mut self, force: bool, out: &mut Vec<Output>) {
        loop {
            let video = self
                .queued_video
                .front()
                .map(|(t, _, _)| pts_of(*t, self.epoch_us));
            let audio = self.queued_audio.front().map(|(p, _)| *p);
            let take_video = match (video, audio) {
                (Some(v), Some(a)) => v <= a,
                (Some(v), None) => {
                    let newest = self
                        .queued_video
                        .back()
                        .map_or(v, |(t, _, _)| pts_of(*t, self.epoch_us));
                    if force || !self.audio_active || newest.saturating_sub(v) > MAX_INTERLEAVE_90K
                    {
                        true
                    } else {
                        break;
                    }
                }
                (None, Some(a)) => {
                    let newest = self.queued_audio.back().map_or(a, |(p, _)| *p);
                    if force || !self.video_active || newest.saturating_sub(a) > MAX_INTERLEAVE_90K
                    {
                        false
                    } else {
                        break;
                    }
                }
                (None, None) => break,
            };
            if take_video {
                if let Some((t, key, au)) = self.queued_video.pop_front() {
                    self.write_video(t, key, &au, out);
                }
            } else if let Some((pts, adts)) = self.queued_audio.pop_front() {
                self.mux_audio(pts, &adts, out);
            }
        }
    }

    fn write_video(&mut self, t_us: i64, keyframe: bool, au: &[u8], out: &mut Vec<Output>) {
        let normalized = h264::normalize_access_unit(au);
        let au = normalized.as_deref().unwrap_or(au);
        let mut pts = pts_of(t_us, self.epoch_us);
        if let Some(last) = self.last_video_pts {
            // Timestamps never go back (a re-anchor can nudge them).
            pts = pts.max(last + 1);
        }
        if keyframe {
            self.learn_parameter_sets(au);
        }
        let wall = wall_of(pts, self.epoch_us);
        let video_missing = self.merged() && self.open.as_ref().is_some_and(|o| !o.has_video);
        let decision = match (keyframe, video_missing) {
            (true, true) => self.segmenter.cut(pts, wall),
            // Video before its first key frame has no place in a segment
            // whose PMT does not declare it.
            (false, true) => Decision::Drop,
            _ => self.segmenter.on_frame(pts, wall, keyframe),
        };
        // Too large to hold any longer without a key frame to cut at.
        let decision = match decision {
            Decision::Append
                if self
                    .open
                    .as_ref()
                    .is_some_and(|o| o.buf.len().saturating_add(au.len()) > MAX_SEGMENT_BYTES) =>
            {
                Decision::End {
                    closed_seconds: self.segmenter.finish().unwrap_or(0.0),
                }
            }
            d => d,
        };
        let dropped = !matches!(
            decision,
            Decision::Append | Decision::Open { .. } | Decision::Cut { .. }
        );
        if !self.apply(decision, out) {
            // Video dropped while waiting for a key frame (before the first,
            // or after a segment ended without one): keep asking for one,
            // as for a segment that runs long — a publisher whose answer to
            // an earlier request was lost would otherwise stay dark.
            if dropped && !keyframe {
                self.request_keyframe(pts, out);
            }
            return;
        }
        self.last_video_pts = Some(pts);
        let with_params;
        let au = match self.missing_parameter_sets(keyframe, au) {
            Some(sets) => {
                with_params = insert_parameter_sets(au, &sets);
                with_params.as_slice()
            }
            None => au,
        };
        if let Some(open) = self.open.as_mut() {
            self.muxer
                .write_video(&mut open.buf, pts, pts, keyframe, au);
        }
        self.journal(pts, out);
        if self.segmenter.wants_keyframe(pts) {
            self.request_keyframe(pts, out);
        }
    }

    /// Asks the publisher for a key frame, at most once a second.
    fn request_keyframe(&mut self, pts: u64, out: &mut Vec<Output>) {
        if self
            .last_keyframe_request
            .is_none_or(|t| pts.saturating_sub(t) >= KEYFRAME_REQUEST_EVERY)
        {
            self.last_keyframe_request = Some(pts);
            out.push(Output::WantKeyframe);
        }
    }

    /// An Opus packet at server time `t_us`.
    pub fn push_opus(&mut self, t_us: i64, packet: &[u8], out: &mut Vec<Output>) {
        if self.aac.is_none() {
            let channels = opus_channels(packet);
            match OpusToAac::new(channels, AAC_BPS_PER_CHANNEL * u32::from(channels)) {
                Ok(aac) => self.aac = Some(aac),
                Err(_) => {
                    self.errors += 1;
                    return;
                }
            }
        }
        let rtp48 = ((t_us - self.epoch_us) as i128 * 48 / 1000 + i128::from(BASE_48K)).max(0);
        let Some(aac) = self.aac.as_mut() else {
            return;
        };
        let frames = match aac.push(packet, rtp48 as u64) {
            Ok(f) => f,
            Err(AacError::Opus(_)) | Err(AacError::Encode(_)) | Err(_) => {
                self.errors += 1;
                return;
            }
        };
        for f in frames {
            self.write_aac(f.pts_90k, &f.adts, out);
        }
    }

    /// An ADTS frame encoded elsewhere (the mixed audio), at `pts` on this
    /// stream's 90 kHz timeline.
    pub fn push_aac(&mut self, pts: u64, adts: &[u8], out: &mut Vec<Output>) {
        self.write_aac(pts, adts, out);
    }

    fn write_aac(&mut self, pts: u64, adts: &[u8], out: &mut Vec<Output>) {
        if self.merged() {
            self.queued_audio.push_back((pts, adts.to_vec()));
            self.interleave(false, out);
        } else {
            self.mux_audio(pts, adts, out);
        }
    }

    fn mux_audio(&mut self, pts: u64, adts: &[u8], out: &mut Vec<Output>) {
        let video_drives = self.merged() && (self.video_active || !self.queued_video.is_empty());
        if !video_drives {
            let decision = self
                .segmenter
                .on_frame(pts, wall_of(pts, self.epoch_us), true);
            if !self.apply(decision, out) {
                return;
            }
        }
        if let Some(open) = self.open.as_mut() {
            self.muxer.write_audio(&mut open.buf, pts, adts);
        }
        self.journal(pts, out);
    }

    /// Hands out what the open segment gained since the last journal
    /// write: at its first frame (so that the journal names the segment and
    /// its playlist from the start, and a crash in its first second still
    /// ends that playlist), then once a second of media.
    fn journal(&mut self, pts: u64, out: &mut Vec<Output>) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        if let Some(last) = open.journal_pts {
            if pts.saturating_sub(last) < JOURNAL_EVERY_90K || open.buf.len() <= open.journaled {
                return;
            }
        }
        open.journal_pts = Some(pts);
        let offset = open.journaled;
        open.journaled = open.buf.len();
        let opened = (offset == 0).then(|| JournalOpened {
            playlist_key: self.naming.key(&self.playlist_name),
            playlist_file_name: self.playlist_name.clone(),
            playlist_text: self
                .playlist
                .as_ref()
                .map(|p| p.render_as(false))
                .unwrap_or_default(),
            discontinuity: open.discontinuity,
        });
        out.push(Output::Journal(JournalWrite {
            file_name: open.file_name.clone(),
            key: self.naming.key(&open.file_name),
            offset: offset as u64,
            bytes: open.buf[offset..].to_vec(),
            opened,
        }));
    }

    /// Acts on a segmenter decision; false when the frame is not recorded.
    fn apply(&mut self, decision: Decision, out: &mut Vec<Output>) -> bool {
        match decision {
            Decision::Drop => false,
            Decision::Append => self.open.is_some(),
            Decision::Open { start_wall } => {
                self.open_segment(start_wall);
                true
            }
            Decision::Cut {
                closed_seconds,
                start_wall,
            } => {
                self.close_segment(closed_seconds, out);
                self.open_segment(start_wall);
                true
            }
            Decision::End { closed_seconds } => {
                self.ended_early += 1;
                self.close_segment(closed_seconds, out);
                self.discontinuity_next = true;
                false
            }
        }
    }

    fn open_segment(&mut self, start: SystemTime) {
        let has_video = match self.id.track_type {
            TrackType::Video => true,
            TrackType::Audio => false,
            TrackType::AudioVideo => self.video_active,
        };
        if self.merged() {
            self.muxer.set_streams(has_video, true);
        }
        let mut buf = Vec::with_capacity(256 * 1024);
        self.muxer.write_tables(&mut buf);
        let start_ms = unix_ms(start);
        let playlist = self.playlist.get_or_insert_with(|| {
            let size = if has_video { self.video_size } else { None };
            StampedPlaylist::new(&self.playlist_name, start_ms, size)
        });
        // The name the playlist will write for it: `Naming`'s
        // `single_segment` / `mixed_segment` for this stream.
        let file_name = playlist.segment_name(start_ms);
        self.open = Some(OpenSegment {
            file_name,
            start_ms,
            buf,
            has_video,
            discontinuity: std::mem::take(&mut self.discontinuity_next),
            journaled: 0,
            journal_pts: None,
        });
    }

    fn close_segment(&mut self, seconds: f64, out: &mut Vec<Output>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let Some(playlist) = self.playlist.as_mut() else {
            return;
        };
        let first = playlist.is_empty();
        playlist.push(open.start_ms, seconds, open.discontinuity);
        out.push(Output::Segment {
            key: self.naming.key(&open.file_name),
            data: open.buf,
        });
        if first {
            out.push(Output::FirstSegment {
                file_name: self.playlist_name.clone(),
                begin_ms: playlist_begin(self.playlist.as_ref()),
            });
        }
        self.emit_playlist(out);
    }

    fn emit_playlist(&self, out: &mut Vec<Output>) {
        let Some(p) = self.playlist.as_ref() else {
            return;
        };
        if p.is_empty() {
            return;
        }
        out.push(Output::Playlist {
            key: self.naming.key(&self.playlist_name),
            file_name: self.playlist_name.clone(),
            text: p.render(),
            begin_ms: p.start_rec_time_ms,
        });
    }

    /// Keeps the latest SPS and PPS, each on its own, and the picture size.
    fn learn_parameter_sets(&mut self, au: &[u8]) {
        for nal in h264::nal_units(au) {
            match h264::nal_type(nal) {
                h264::NAL_SPS => {
                    if let Some(info) = h264::parse_sps(nal) {
                        self.video_size = Some((info.width, info.height));
                        if let Some(p) = self.playlist.as_mut() {
                            p.video_size.get_or_insert((info.width, info.height));
                        }
                    }
                    self.sps = nal.to_vec();
                }
                h264::NAL_PPS => self.pps = nal.to_vec(),
                _ => {}
            }
        }
    }

    /// The SPS and/or PPS (Annex-B) a key frame lacks, if any is known.
    fn missing_parameter_sets(&self, keyframe: bool, au: &[u8]) -> Option<Vec<u8>> {
        if !keyframe {
            return None;
        }
        let (mut has_sps, mut has_pps) = (false, false);
        for nal in h264::nal_units(au) {
            match h264::nal_type(nal) {
                h264::NAL_SPS => has_sps = true,
                h264::NAL_PPS => has_pps = true,
                _ => {}
            }
        }
        let mut sets = Vec::new();
        for (has, nal) in [(has_sps, &self.sps), (has_pps, &self.pps)] {
            if !has && !nal.is_empty() {
                sets.extend_from_slice(&[0, 0, 0, 1]);
                sets.extend_from_slice(nal);
            }
        }
        (!sets.is_empty()).then_some(sets)
    }
}

/// The access unit with SPS/PPS after its AUD (if any) and before the rest.
fn insert_parameter_sets(au: &[u8], sets: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(au.len() + sets.len() + 8);
    let mut inserted = false;
    for nal in h264::nal_units(au) {
        if !inserted && h264::nal_type(nal) != h264::NAL_AUD {
            out.extend_from_slice(sets);
            inserted = true;
        }
        out.extend_from_slice(&[0, 0, 0, 1]);
        out.extend_from_slice(nal);
    }
    if !inserted {
        out.extend_from_slice(sets);
    }
    out
}

fn playlist_begin(p: Option<&StampedPlaylist>) -> u64 {
    p.map_or(0, |p| p.start_rec_time_ms)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::domain::params::RoomId;
    use crate::media::ts::{PID_AUDIO, PID_PMT, PID_VIDEO};
    use crate::publish::source::{VideoConfig, VideoSource};

    /// The task epoch: 2023-11-14 22:13:20.000 UTC.
    const EPOCH_US: i64 = 1_700_000_000_000_000;
    /// SPS of a 1280x720 baseline stream (as in `media::h264`'s tests).
    pub(crate) const SPS_720P: [u8; 10] =
        [0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x40];
    /// SPS of 1920x1080 high profile (1088 coded rows, 8 cropped).
    const SPS_1080P: [u8; 15] = [
        0x67, 0x64, 0x00, 0x28, 0xac, 0xd9, 0x40, 0x78, 0x02, 0x27, 0xe5, 0x84, 0x00, 0x00, 0x03,
    ];
    pub(crate) const PPS: [u8; 4] = [0x68, 0xce, 0x3c, 0x80];
    const PPS_B: [u8; 4] = [0x68, 0xde, 0x3c, 0x80];
    const AUD: [u8; 2] = [0x09, 0xf0];
    const SEI: [u8; 4] = [0x06, 0x05, 0x01, 0x80];
    const STREAM_TYPE_H264: u8 = 0x1b;
    const STREAM_TYPE_AAC: u8 = 0x0f;

    pub(crate) fn annexb(nals: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for n in nals {
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(n);
        }
        out
    }

    /// An IDR slice NAL, tagged with `n` (no zero bytes).
    fn idr(n: u64) -> Vec<u8> {
        vec![
            0x65,
            0x88,
            0x84,
            (n / 255) as u8 + 1,
            (n % 255) as u8 + 1,
            0x80,
        ]
    }

    /// A non-IDR slice NAL, tagged with `n`.
    fn slice(n: u64) -> Vec<u8> {
        vec![0x41, 0x9a, (n / 255) as u8 + 1, (n % 255) as u8 + 1, 0x80]
    }

    /// Server time of frame `n` at 15 fps: the PTS is exact (n·6000) for
    /// every third frame and at most one tick short in between.
    fn t15(n: u64) -> i64 {
        EPOCH_US + (n * 200_000 / 3) as i64
    }

    fn stream(track_type: TrackType, target_s: u64, grace_s: u64) -> HlsStream {
        let naming = Arc::new(Naming::new(&[], "t1", 1_400_000_001, &RoomId::Int(7), 0));
        HlsStream::new(
            StreamId {
                user_id: "alice".to_owned(),
                media: Media::Main,
                track_type,
            },
            naming,
            EPOCH_US,
            SegmenterConfig {
                target: Duration::from_secs(target_s),
                keyframe_grace: Duration::from_secs(grace_s),
                max_keyframe_wait: crate::hls::segmenter::MAX_KEYFRAME_WAIT,
            },
        )
    }

    #[derive(Debug)]
    struct Pes {
        pid: u16,
        pts: u64,
        es: Vec<u8>,
    }

    impl Pes {
        fn nal_types(&self) -> Vec<u8> {
            h264::nal_units(&self.es).map(h264::nal_type).collect()
        }

        fn nals(&self) -> Vec<Vec<u8>> {
            h264::nal_units(&self.es).map(<[u8]>::to_vec).collect()
        }
    }

    /// A segment: the (stream_type, PID) pairs of each PMT, and its PES.
    /// Packet-level on purpose (the PMTs a segment carries are what these
    /// tests check, and `media::ts_demux` does not expose them).
    fn demux(ts: &[u8]) -> (Vec<Vec<(u8, u16)>>, Vec<Pes>) {
        assert_eq!(ts.len() % 188, 0, "whole TS packets");
        let mut pmts = Vec::new();
        let mut raw: Vec<(u16, Vec<u8>)> = Vec::new();
        for p in ts.chunks(188) {
            assert_eq!(p[0], 0x47, "sync byte");
            let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
            let pusi = p[1] & 0x40 != 0;
            let afc = (p[3] >> 4) & 3;
            let mut i = 4;
            if afc & 2 != 0 {
                i += 1 + usize::from(p[4]);
            }
            if afc & 1 == 0 {
                continue;
            }
            let payload = &p[i..];
            if pid == PID_PMT {
                let s = &payload[1 + usize::from(payload[0])..];
                assert_eq!(s[0], 0x02, "PMT table id");
                let len = (usize::from(s[1] & 0x0f) << 8) | usize::from(s[2]);
                let info = (usize::from(s[10] & 0x0f) << 8) | usize::from(s[11]);
                let mut es = &s[12 + info..3 + len - 4];
                let mut streams = Vec::new();
                while es.len() >= 5 {
                    let es_pid = (u16::from(es[1] & 0x1f) << 8) | u16::from(es[2]);
                    streams.push((es[0], es_pid));
                    let l = (usize::from(es[3] & 0x0f) << 8) | usize::from(es[4]);
                    es = &es[5 + l..];
                }
                pmts.push(streams);
            } else if pid == PID_VIDEO || pid == PID_AUDIO {
                if pusi {
                    raw.push((pid, Vec::new()));
                }
                raw.iter_mut()
                    .rev()
                    .find(|(p, _)| *p == pid)
                    .expect("a PES starts with PUSI")
                    .1
                    .extend_from_slice(payload);
            }
        }
        let pes = raw
            .into_iter()
            .map(|(pid, b)| {
                assert_eq!(&b[..3], &[0, 0, 1], "PES start code");
                let header_len = usize::from(b[8]);
                let t = &b[9..14];
                let pts = (u64::from(t[0] >> 1 & 7) << 30)
                    | (u64::from(t[1]) << 22)
                    | (u64::from(t[2] >> 1) << 15)
                    | (u64::from(t[3]) << 7)
                    | u64::from(t[4] >> 1);
                Pes {
                    pid,
                    pts,
                    es: b[9 + header_len..].to_vec(),
                }
            })
            .collect();
        (pmts, pes)
    }

    fn segments(out: &[Output]) -> Vec<(String, Vec<u8>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Segment { key, data } => Some((key.clone(), data.clone())),
                _ => None,
            })
            .collect()
    }

    fn playlists(out: &[Output]) -> Vec<String> {
        out.iter()
            .filter_map(|o| match o {
                Output::Playlist { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    /// Real Opus packets (20 ms of a 440 Hz tone each), mono.
    fn opus_packets(count: usize) -> Vec<Vec<u8>> {
        let mut enc = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio)
            .expect("opus encoder");
        let step = 2.0 * std::f32::consts::PI * 440.0 / 48_000.0;
        let mut phase = 0.0f32;
        (0..count)
            .map(|_| {
                let mut pcm = [0.0f32; 960];
                for s in &mut pcm {
                    *s = 0.25 * phase.sin();
                    phase = (phase + step) % (2.0 * std::f32::consts::PI);
                }
                enc.encode_vec_float(&pcm, 4000).expect("opus encode")
            })
            .collect()
    }

    #[test]
    fn parameter_sets_go_after_the_aud_and_before_everything_else() {
        let sets = annexb(&[&SPS_720P, &PPS]);
        // AUD + IDR (3-byte start codes in the input; 4-byte in the output).
        let mut au = vec![0, 0, 1];
        au.extend_from_slice(&AUD);
        au.extend_from_slice(&[0, 0, 1]);
        au.extend_from_slice(&idr(1));
        assert_eq!(
            insert_parameter_sets(&au, &sets),
            annexb(&[&AUD, &SPS_720P, &PPS, &idr(1)])
        );
        // No AUD: the sets come first.
        assert_eq!(
            insert_parameter_sets(&annexb(&[&idr(2)]), &sets),
            annexb(&[&SPS_720P, &PPS, &idr(2)])
        );
        // AUD, SEI, IDR: after the AUD, before the SEI.
        assert_eq!(
            insert_parameter_sets(&annexb(&[&AUD, &SEI, &idr(3)]), &sets),
            annexb(&[&AUD, &SPS_720P, &PPS, &SEI, &idr(3)])
        );
        // Nothing but an AUD: the sets are appended.
        assert_eq!(
            insert_parameter_sets(&annexb(&[&AUD]), &sets),
            annexb(&[&AUD, &SPS_720P, &PPS])
        );
    }

    #[test]
    fn key_frames_lacking_sps_and_pps_get_the_last_ones_in_the_ts() {
        // Target 1 s: every key frame (every 2 s) starts a segment.
        let mut s = stream(TrackType::Video, 1, 1);
        s.begin_track(TrackKind::MainVideo);
        let mut out = Vec::new();
        for n in 0..120u64 {
            let au = match n {
                0 => annexb(&[&SPS_720P, &PPS, &idr(n)]),
                30 => annexb(&[&AUD, &idr(n)]),
                60 => annexb(&[&idr(n)]),
                90 => annexb(&[&AUD, &SEI, &idr(n)]),
                _ if n % 2 == 0 => annexb(&[&AUD, &slice(n)]),
                _ => annexb(&[&slice(n)]),
            };
            s.push_video(t15(n), n % 30 == 0, &au, &mut out);
        }
        s.end_track(TrackKind::MainVideo, &mut out);
        let segs = segments(&out);
        assert_eq!(segs.len(), 4);
        let expected_first = [
            vec![h264::NAL_AUD, h264::NAL_SPS, h264::NAL_PPS, h264::NAL_IDR],
            vec![h264::NAL_AUD, h264::NAL_SPS, h264::NAL_PPS, h264::NAL_IDR],
            vec![h264::NAL_AUD, h264::NAL_SPS, h264::NAL_PPS, h264::NAL_IDR],
            vec![
                h264::NAL_AUD,
                h264::NAL_SPS,
                h264::NAL_PPS,
                h264::NAL_SEI,
                h264::NAL_IDR,
            ],
        ];
        for (i, (key, data)) in segs.iter().enumerate() {
            let (pmts, pes) = demux(data);
            assert_eq!(pmts, vec![vec![(STREAM_TYPE_H264, PID_VIDEO)]], "{key}");
            assert_eq!(pes.len(), 30, "{key}: frames {}..{}", i * 30, i * 30 + 30);
            assert!(pes.iter().all(|p| p.pid == PID_VIDEO));
            assert_eq!(pes[0].pts, BASE_90K + i as u64 * 180_000, "{key}");
            assert_eq!(pes[0].nal_types(), expected_first[i], "{key}");
            let nals = pes[0].nals();
            assert_eq!(nals[1], SPS_720P.to_vec(), "the SPS learned from frame 0");
            assert_eq!(nals[2], PPS.to_vec());
            assert_eq!(
                nals.last().expect("slice"),
                &idr(i as u64 * 30),
                "the key frame's own slice"
            );
            for p in &pes[1..] {
                assert_eq!(
                    p.nal_types(),
                    vec![h264::NAL_AUD, h264::NAL_SLICE],
                    "non-key frames are passed through (AUD added once)"
                );
            }
        }
        // A newer SPS/PPS replaces the remembered ones.
        let mut out = Vec::new();
        s.begin_track(TrackKind::MainVideo);
        s.push_video(
            t15(200),
            true,
            &annexb(&[&SPS_1080P, &PPS_B, &idr(200)]),
            &mut out,
        );
        s.push_video(t15(230), true, &annexb(&[&idr(230)]), &mut out);
        s.end_track(TrackKind::MainVideo, &mut out);
        let segs = segments(&out);
        assert_eq!(segs.len(), 2);
        let (_, pes) = demux(&segs[1].1);
        assert_eq!(
            pes[0].nals(),
            vec![AUD.to_vec(), SPS_1080P.to_vec(), PPS_B.to_vec(), idr(230)]
        );
    }

    #[test]
    fn a_key_frame_with_only_a_pps_keeps_the_remembered_sps() {
        let mut s = stream(TrackType::Video, 1, 1);
        s.begin_track(TrackKind::MainVideo);
        let mut out = Vec::new();
        s.push_video(t15(0), true, &annexb(&[&SPS_720P, &PPS, &idr(0)]), &mut out);
        s.push_video(t15(30), true, &annexb(&[&PPS_B, &idr(30)]), &mut out);
        s.push_video(t15(60), true, &annexb(&[&idr(60)]), &mut out);
        s.end_track(TrackKind::MainVideo, &mut out);
        let segs = segments(&out);
        assert_eq!(segs.len(), 3);
        for (key, data) in &segs {
            let (_, pes) = demux(data);
            assert!(
                pes[0].nal_types().contains(&h264::NAL_SPS),
                "{key} starts with a key frame without an SPS: {:?}",
                pes[0].nal_types()
            );
        }
    }

    #[test]
    fn video_pts_never_goes_back() {
        let mut s = stream(TrackType::Video, 10, 2);
        s.begin_track(TrackKind::MainVideo);
        let mut out = Vec::new();
        let frames: [(i64, bool); 8] = [
            (t15(0), true),
            (t15(3), false),
            (t15(6), false),
            // 133 ms back (a re-anchor nudged the clock).
            (t15(4), false),
            (t15(9), false),
            // Far back, before the first frame.
            (t15(0) - 500_000, false),
            (t15(12), false),
            (t15(15), false),
        ];
        for (n, (t, key)) in frames.iter().enumerate() {
            let au = if *key {
                annexb(&[&SPS_720P, &PPS, &idr(n as u64)])
            } else {
                annexb(&[&slice(n as u64)])
            };
            s.push_video(*t, *key, &au, &mut out);
        }
        s.finish(&mut out);
        let segs = segments(&out);
        assert_eq!(segs.len(), 1);
        let (_, pes) = demux(&segs[0].1);
        let pts: Vec<u64> = pes.iter().map(|p| p.pts - BASE_90K).collect();
        assert_eq!(
            pts,
            vec![0, 18_000, 36_000, 36_001, 54_000, 54_001, 72_000, 90_000]
        );
        // The segment lasts from the first frame to the last plus one frame
        // interval (the smallest step seen: 1 tick).
        let text = playlists(&out).pop().expect("playlist");
        assert!(text.contains("#EXTINF:1.000\n"), "{text}");
    }

    #[test]
    fn a_long_gop_asks_for_a_key_frame_at_most_once_a_second() {
        let mut s = stream(TrackType::Video, 4, 1);
        s.begin_track(TrackKind::MainVideo);
        let mut asked = Vec::new();
        let mut all = Vec::new();
        for n in 0..=150u64 {
            let au = if n == 0 {
                annexb(&[&SPS_720P, &PPS, &idr(n)])
            } else {
                annexb(&[&slice(n)])
            };
            let mut out = Vec::new();
            s.push_video(t15(n), n == 0, &au, &mut out);
            let wants = out
                .iter()
                .filter(|o| matches!(o, Output::WantKeyframe))
                .count();
            assert!(wants <= 1);
            if wants == 1 {
                asked.push(n);
            }
            all.extend(out);
        }
        // Target + grace = 5 s (frame 75), then once per second at 15 fps.
        assert_eq!(asked, vec![75, 90, 105, 120, 135, 150]);
        assert!(segments(&all).is_empty(), "no key frame: no cut");
        // The key frame arrives at 10.2 s: the long segment is cut there.
        let mut out = Vec::new();
        s.push_video(t15(153), true, &annexb(&[&idr(153)]), &mut out);
        assert!(!out.iter().any(|o| matches!(o, Output::WantKeyframe)));
        assert_eq!(segments(&out).len(), 1);
        let text = playlists(&out).pop().expect("playlist");
        assert!(
            text.contains("#EXT-X-TARGETDURATION:11\n") && text.contains("#EXTINF:10.200\n"),
            "{text}"
        );
        // The new segment runs long again: asked at 5 s into it, and not
        // before.
        let mut asked = Vec::new();
        for n in 154..=240u64 {
            let mut out = Vec::new();
            s.push_video(t15(n), false, &annexb(&[&slice(n)]), &mut out);
            if out.iter().any(|o| matches!(o, Output::WantKeyframe)) {
                asked.push(n);
            }
        }
        assert_eq!(asked, vec![228]);
    }

    #[test]
    fn an_open_segment_is_journaled_once_a_second_and_the_journal_is_its_prefix() {
        let mut s = stream(TrackType::Video, 10, 1);
        s.begin_track(TrackKind::MainVideo);
        let mut out = Vec::new();
        // 5.5 s at 15 fps, one segment open throughout.
        for n in 0..83u64 {
            let au = if n == 0 {
                annexb(&[&SPS_720P, &PPS, &idr(n)])
            } else {
                annexb(&[&slice(n)])
            };
            s.push_video(t15(n), n == 0, &au, &mut out);
        }
        let writes: Vec<&JournalWrite> = out
            .iter()
            .filter_map(|o| match o {
                Output::Journal(w) => Some(w),
                _ => None,
            })
            .collect();
        assert_eq!(
            writes.len(),
            6,
            "at the first frame, then once a second of media"
        );
        assert!(writes[0].offset == 0 && writes[0].opened.is_some());
        assert!(writes[1..].iter().all(|w| w.opened.is_none()));
        let opened = writes[0].opened.as_ref().expect("opened");
        assert!(
            opened.playlist_text.starts_with("#EXTM3U")
                && !opened.playlist_text.contains("ENDLIST")
        );
        let mut journal = Vec::new();
        for w in &writes {
            assert_eq!(w.offset, journal.len() as u64, "writes follow each other");
            journal.extend_from_slice(&w.bytes);
        }
        // The segment, once cut, starts with exactly what was journaled.
        s.finish(&mut out);
        let data = out
            .iter()
            .find_map(|o| match o {
                Output::Segment { data, .. } => Some(data),
                _ => None,
            })
            .expect("segment");
        assert!(data.starts_with(&journal) && data.len() > journal.len());
        let recovered = crate::hls::recover::recover_segment(&journal).expect("recovered");
        assert!(
            (3.9..=5.0).contains(&recovered.seconds),
            "{}",
            recovered.seconds
        );
    }

    #[test]
    fn the_playlist_carries_the_picture_size_from_the_sps() {
        let mut s = stream(TrackType::Video, 1, 1);
        s.begin_track(TrackKind::MainVideo);
        let mut out = Vec::new();
        for n in 0..31u64 {
            let au = match n {
                0 => annexb(&[&SPS_720P, &PPS, &idr(n)]),
                30 => annexb(&[&SPS_1080P, &PPS, &idr(n)]),
                _ => annexb(&[&slice(n)]),
            };
            s.push_video(t15(n), n % 30 == 0, &au, &mut out);
        }
        let naming = Naming::new(&[], "t1", 1_400_000_001, &RoomId::Int(7), 0);
        let first = naming.single_segment(
            "alice",
            Media::Main,
            TrackType::Video,
            UNIX_EPOCH + Duration::from_micros(EPOCH_US as u64),
        );
        assert_eq!(
            first,
            "1400000001_7__UserId_s_YWxpY2U.__UserId_e_main_video_20231114221320000.ts"
        );
        assert_eq!(
            out.iter()
                .map(|o| match o {
                    Output::Segment { key, .. } => format!("segment {key}"),
                    Output::FirstSegment {
                        file_name,
                        begin_ms,
                    } => format!("first {file_name} {begin_ms}"),
                    Output::Playlist { key, .. } => format!("playlist {key}"),
                    Output::WantKeyframe => "keyframe".to_owned(),
                    Output::Journal(w) => format!("journal {}", w.key),
                })
                .collect::<Vec<_>>(),
            vec![
                // 2 s of video: journaled at its first frame and after its
                // first second; the next segment's first frame is journaled
                // as it opens.
                format!("journal t1/{first}"),
                format!("journal t1/{first}"),
                format!("segment t1/{first}"),
                "first 1400000001_7__UserId_s_YWxpY2U.__UserId_e_main_video.m3u8 1700000000000"
                    .to_owned(),
                "playlist t1/1400000001_7__UserId_s_YWxpY2U.__UserId_e_main_video.m3u8".to_owned(),
                format!(
                    "journal t1/{}",
                    naming.single_segment(
                        "alice",
                        Media::Main,
                        TrackType::Video,
                        UNIX_EPOCH + Duration::from_micros(EPOCH_US as u64 + 2_000_000),
                    )
                ),
            ]
        );
        // The size of the first SPS; a later, different SPS does not change it.
        assert_eq!(
            playlists(&out)[0],
            format!(
                "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-ALLOW-CACHE:NO\n#EXT-X-MEDIA-SEQUENCE:0\n\
                 #EXT-X-TARGETDURATION:2\n#EXT-X-TRTC-START-REC-TIME:1700000000000\n\
                 #EXT-X-TRTC-VIDEO-METADATA:WIDTH:1280 HEIGHT:720\n#EXTINF:2.000\n{first}\n"
            )
        );
        // A real encoder's SPS (OpenH264, 640x360).
        let mut src = VideoSource::new(VideoConfig {
            width: 640,
            height: 360,
            ..VideoConfig::default()
        })
        .expect("video source");
        let mut s = stream(TrackType::Video, 1, 1);
        s.begin_track(TrackKind::MainVideo);
        let mut out = Vec::new();
        for n in 0..31u64 {
            let f = src
                .next_frame(Duration::from_nanos(n * 1_000_000_000 / 15))
                .expect("encode");
            assert_eq!(f.keyframe, n % 30 == 0);
            s.push_video(t15(n), f.keyframe, &f.data, &mut out);
        }
        let text = playlists(&out).pop().expect("playlist");
        assert!(
            text.contains("\n#EXT-X-TRTC-VIDEO-METADATA:WIDTH:640 HEIGHT:360\n"),
            "{text}"
        );
        // Audio playlists have no video metadata.
        let mut s = stream(TrackType::Audio, 1, 1);
        s.begin_track(TrackKind::Audio);
        let mut out = Vec::new();
        for (k, p) in opus_packets(100).iter().enumerate() {
            s.push_opus(EPOCH_US + k as i64 * 20_000, p, &mut out);
        }
        s.finish(&mut out);
        let text = playlists(&out).pop().expect("playlist");
        assert!(!text.contains("VIDEO-METADATA"), "{text}");
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
        assert_eq!(s.errors, 0);
    }

    #[test]
    fn a_merged_stream_cuts_at_the_first_key_frame_when_video_starts() {
        let mut s = stream(TrackType::AudioVideo, 4, 2);
        s.begin_track(TrackKind::Audio);
        let packets = opus_packets(150);
        let mut out = Vec::new();
        // 2 s of audio alone.
        for (k, p) in packets[..100].iter().enumerate() {
            s.push_opus(EPOCH_US + k as i64 * 20_000, p, &mut out);
        }
        assert!(segments(&out).is_empty(), "audio alone: cut at the target");
        // The camera starts at 2 s: the segment is cut at its key frame.
        s.begin_track(TrackKind::MainVideo);
        for n in 0..15u64 {
            let t = EPOCH_US + 2_000_000 + (n * 200_000 / 3) as i64;
            let au = if n == 0 {
                annexb(&[&SPS_720P, &PPS, &idr(n)])
            } else {
                annexb(&[&slice(n)])
            };
            s.push_video(t, n == 0, &au, &mut out);
            // The audio up to the next video frame (20 ms packets).
            let (from, to) = (100 + n as usize * 10 / 3, 100 + (n as usize + 1) * 10 / 3);
            for (k, p) in packets.iter().enumerate().take(to).skip(from) {
                s.push_opus(EPOCH_US + k as i64 * 20_000, p, &mut out);
            }
        }
        let segs = segments(&out);
        assert_eq!(segs.len(), 1, "cut at the first key frame");
        let (pmts, pes) = demux(&segs[0].1);
        assert_eq!(pmts, vec![vec![(STREAM_TYPE_AAC, PID_AUDIO)]]);
        assert!(pes.iter().all(|p| p.pid == PID_AUDIO));
        // Named after its first AAC frame, which starts with the first
        // Opus sample (at most one AAC frame earlier: encoder priming).
        assert!(
            (BASE_90K - 1920..=BASE_90K).contains(&pes[0].pts),
            "{}",
            pes[0].pts
        );
        let naming = Naming::new(&[], "t1", 1_400_000_001, &RoomId::Int(7), 0);
        assert_eq!(
            segs[0].0,
            format!(
                "t1/{}",
                naming.single_segment(
                    "alice",
                    Media::Main,
                    TrackType::AudioVideo,
                    wall_of(pes[0].pts, EPOCH_US)
                )
            )
        );
        // The closed segment holds the AAC frames before 2 s.
        assert!(pes.iter().all(|p| p.pts < BASE_90K + 180_000));
        s.finish(&mut out);
        let segs = segments(&out);
        assert_eq!(segs.len(), 2);
        assert!(segs[1].0.ends_with("_main_av_20231114221322000.ts"));
        let (pmts, pes) = demux(&segs[1].1);
        assert_eq!(
            pmts,
            vec![vec![
                (STREAM_TYPE_H264, PID_VIDEO),
                (STREAM_TYPE_AAC, PID_AUDIO)
            ]],
            "the new segment declares video from its first byte"
        );
        assert_eq!(pes[0].pid, PID_VIDEO);
        assert_eq!(pes[0].pts, BASE_90K + 180_000);
        assert_eq!(
            pes.iter().filter(|p| p.pid == PID_VIDEO).count(),
            15,
            "every video frame"
        );
        assert!(pes.iter().any(|p| p.pid == PID_AUDIO));
        // The playlist learned the picture size once video came.
        let text = playlists(&out).pop().expect("playlist");
        assert!(
            text.contains("#EXT-X-TRTC-VIDEO-METADATA:WIDTH:1280 HEIGHT:720\n"),
            "{text}"
        );
        assert_eq!(text.matches("#EXTINF:").count(), 2);
    }

    #[test]
    fn a_merged_stream_takes_video_going_back_while_it_waits_for_audio() {
        let mut s = stream(TrackType::AudioVideo, 4, 2);
        s.begin_track(TrackKind::Audio);
        s.begin_track(TrackKind::MainVideo);
        let packets = opus_packets(50);
        let mut out = Vec::new();
        for (k, p) in packets.iter().enumerate() {
            s.push_opus(EPOCH_US + k as i64 * 20_000, p, &mut out);
        }
        // Video ahead of the audio waits for it; then a re-anchor moves the
        // video clock back 100 ms.
        let key = annexb(&[&SPS_720P, &PPS, &idr(0)]);
        s.push_video(EPOCH_US + 2_000_000, true, &key, &mut out);
        s.push_video(EPOCH_US + 1_900_000, false, &annexb(&[&slice(1)]), &mut out);
        s.push_video(EPOCH_US + 1_966_667, false, &annexb(&[&slice(2)]), &mut out);
        s.finish(&mut out);
        let video: Vec<u64> = segments(&out)
            .iter()
            .flat_map(|(_, data)| demux(data).1)
            .filter(|p| p.pid == PID_VIDEO)
            .map(|p| p.pts - BASE_90K)
            .collect();
        assert_eq!(video, vec![180_000, 180_001, 180_002]);
    }

    #[test]
    fn a_merged_stream_drops_video_before_its_first_key_frame() {
        let mut s = stream(TrackType::AudioVideo, 4, 2);
        s.begin_track(TrackKind::Audio);
        let packets = opus_packets(150);
        let mut out = Vec::new();
        for (k, p) in packets[..100].iter().enumerate() {
            s.push_opus(EPOCH_US + k as i64 * 20_000, p, &mut out);
        }
        // The camera starts mid-GOP at 2 s: five non-key frames, then a key
        // frame; the audio goes on.
        s.begin_track(TrackKind::MainVideo);
        for n in 0..15u64 {
            let t = EPOCH_US + 2_000_000 + (n * 200_000 / 3) as i64;
            let au = if n == 5 {
                annexb(&[&SPS_720P, &PPS, &idr(n)])
            } else {
                annexb(&[&slice(n)])
            };
            s.push_video(t, n == 5, &au, &mut out);
            // The audio up to the next video frame (20 ms packets).
            let (from, to) = (100 + n as usize * 10 / 3, 100 + (n as usize + 1) * 10 / 3);
            for (k, p) in packets.iter().enumerate().take(to).skip(from) {
                s.push_opus(EPOCH_US + k as i64 * 20_000, p, &mut out);
            }
        }
        s.finish(&mut out);
        let segs = segments(&out);
        assert_eq!(segs.len(), 2, "cut at the key frame");
        let (pmts, pes) = demux(&segs[0].1);
        assert_eq!(pmts, vec![vec![(STREAM_TYPE_AAC, PID_AUDIO)]]);
        assert_eq!(
            pes.iter().filter(|p| p.pid == PID_VIDEO).count(),
            0,
            "video on a PID the segment's PMT does not declare"
        );
    }
}
