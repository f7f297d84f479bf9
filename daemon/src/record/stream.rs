//! One recorded HLS stream: a playlist and its TS segments for one user's
//! audio, video, or (AvMerge = 1) both.
//!
//! Frames come in already placed on the task timeline (server µs, see
//! [`super::timeline`]); out come the files to store, in the order they
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

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::media::aac::{AacError, OpusToAac};
use crate::media::h264;
use crate::media::ts::TsMuxer;
use crate::record::naming::{Media, Naming, TrackType};
use crate::record::playlist::{Playlist, Segment};
use crate::record::segmenter::{Decision, Segmenter, SegmenterConfig};
use crate::room::TrackKind;

/// PTS of the task epoch: 10 s, so media placed slightly before the epoch
/// (offset estimation) never goes negative.
pub const BASE_90K: u64 = 900_000;
const BASE_48K: u64 = 480_000;
/// Audio bit rate per channel.
const AAC_BPS_PER_CHANNEL: u32 = 64_000;
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
}

#[derive(Debug)]
struct OpenSegment {
    file_name: String,
    buf: Vec<u8>,
    has_video: bool,
    discontinuity: bool,
}

pub struct HlsStream {
    id: StreamId,
    naming: Arc<Naming>,
    playlist_name: String,
    epoch_us: i64,
    segmenter: Segmenter,
    muxer: TsMuxer,
    playlist: Option<Playlist>,
    open: Option<OpenSegment>,
    discontinuity_next: bool,
    parameter_sets: Vec<u8>,
    video_size: Option<(u32, u32)>,
    aac: Option<OpusToAac>,
    audio_active: bool,
    video_active: bool,
    last_video_pts: Option<u64>,
    last_keyframe_request: Option<u64>,
    /// Frames that could not be recorded (corrupt audio); for metrics.
    pub errors: u64,
}

/// Unix µs → PTS on the task timeline.
fn pts_of(t_us: i64, epoch_us: i64) -> u64 {
    let ticks = (t_us - epoch_us) as i128 * 9 / 100 + i128::from(BASE_90K);
    ticks.max(0) as u64
}

fn wall_of(pts: u64, epoch_us: i64) -> SystemTime {
    let us = epoch_us + ((pts as i128 - i128::from(BASE_90K)) * 100 / 9) as i64;
    UNIX_EPOCH + Duration::from_micros(us.max(0) as u64)
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
            parameter_sets: Vec::new(),
            video_size: None,
            aac: None,
            audio_active: false,
            video_active: false,
            last_video_pts: None,
            last_keyframe_request: None,
            errors: 0,
        }
    }

    pub fn id(&self) -> &StreamId {
        &self.id
    }

    pub fn playlist_name(&self) -> &str {
        &self.playlist_name
    }

    /// Segments written so far (their total duration in seconds).
    pub fn recorded_seconds(&self) -> f64 {
        self.playlist.as_ref().map_or(0.0, Playlist::total_seconds)
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
        if !self.audio_active && !self.video_active {
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
        self.end(out);
    }

    fn end(&mut self, out: &mut Vec<Output>) {
        if let Some(seconds) = self.segmenter.finish() {
            self.close_segment(seconds, out);
        }
        if let Some(p) = self.playlist.as_mut() {
            if !p.ended {
                p.ended = true;
                self.emit_playlist(out);
            }
        }
        // Whatever comes next continues after a discontinuity.
        self.discontinuity_next = self.playlist.is_some();
    }

    /// A video access unit at server time `t_us`.
    pub fn push_video(&mut self, t_us: i64, keyframe: bool, au: &[u8], out: &mut Vec<Output>) {
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
        let decision = if keyframe && video_missing {
            self.segmenter.cut(pts, wall)
        } else {
            self.segmenter.on_frame(pts, wall, keyframe)
        };
        if !self.apply(decision, out) {
            return;
        }
        self.last_video_pts = Some(pts);
        let with_params;
        let au = if keyframe && h264::find_sps(au).is_none() && !self.parameter_sets.is_empty() {
            with_params = insert_parameter_sets(au, &self.parameter_sets);
            with_params.as_slice()
        } else {
            au
        };
        if let Some(open) = self.open.as_mut() {
            self.muxer
                .write_video(&mut open.buf, pts, pts, keyframe, au);
        }
        if self.segmenter.wants_keyframe(pts)
            && self
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

    fn write_aac(&mut self, pts: u64, adts: &[u8], out: &mut Vec<Output>) {
        let video_drives = self.merged() && self.video_active;
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
        if self.playlist.is_none() {
            let size = if has_video { self.video_size } else { None };
            self.playlist = Some(Playlist::new(unix_ms(start), size));
        }
        self.open = Some(OpenSegment {
            file_name: self.naming.single_segment(
                &self.id.user_id,
                self.id.media,
                self.id.track_type,
                start,
            ),
            buf,
            has_video,
            discontinuity: std::mem::take(&mut self.discontinuity_next),
        });
    }

    fn close_segment(&mut self, seconds: f64, out: &mut Vec<Output>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let Some(playlist) = self.playlist.as_mut() else {
            return;
        };
        let first = playlist.segments.is_empty();
        playlist.push(Segment {
            file_name: open.file_name.clone(),
            duration_seconds: seconds,
            discontinuity: open.discontinuity,
        });
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
        if p.segments.is_empty() {
            return;
        }
        out.push(Output::Playlist {
            key: self.naming.key(&self.playlist_name),
            file_name: self.playlist_name.clone(),
            text: p.render(),
            begin_ms: p.start_rec_time_ms,
        });
    }

    /// Keeps the latest SPS and PPS (Annex-B) and the picture size.
    fn learn_parameter_sets(&mut self, au: &[u8]) {
        let mut sets = Vec::new();
        for nal in h264::nal_units(au) {
            match h264::nal_type(nal) {
                h264::NAL_SPS => {
                    if let Some(info) = h264::parse_sps(nal) {
                        self.video_size = Some((info.width, info.height));
                        if let Some(p) = self.playlist.as_mut() {
                            p.video_size.get_or_insert((info.width, info.height));
                        }
                    }
                    sets.extend_from_slice(&[0, 0, 0, 1]);
                    sets.extend_from_slice(nal);
                }
                h264::NAL_PPS => {
                    sets.extend_from_slice(&[0, 0, 0, 1]);
                    sets.extend_from_slice(nal);
                }
                _ => {}
            }
        }
        if !sets.is_empty() {
            self.parameter_sets = sets;
        }
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

fn playlist_begin(p: Option<&Playlist>) -> u64 {
    p.map_or(0, |p| p.start_rec_time_ms)
}
