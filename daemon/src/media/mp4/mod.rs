//! MP4 from a recorded HLS stream: a sans-IO packer that turns kiroku's
//! own MPEG-TS segments (H.264 and/or AAC in ADTS, as [`super::ts`] writes
//! them) into faststart MP4 files without re-encoding, split at a maximum
//! duration and size (spec §6: 24 h and 2 GB, or `MaxMediaFileDuration`).
//! Audio-only recordings can also come out as an audio-only MP4 (M4A
//! brand) or as raw ADTS (`.aac`).
//!
//! Rules:
//! - **Input.** Segments are pushed in playlist order; a user's separate
//!   audio and video playlists (AvMerge = 0) can go into one packer when
//!   their segments are pushed in order of start time (both share the
//!   task's PTS timeline); a sample that arrives behind a file already
//!   closed is dropped. PIDs and stream types come from the PMT (our
//!   0x100/0x101 when a segment's PMT is lost).
//! - **Damage is skipped, never fatal.** A broken packet (lost sync,
//!   continuity error, transport error, truncation) drops the PES it
//!   belongs to; malformed PES, ADTS or H.264 data is dropped; each drop
//!   is a counted [`PackError`] in [`PackStats`]. After a lost video frame
//!   the video waits for the next key frame, so what is written decodes.
//! - **Timeline.** 33-bit timestamps are unwrapped. The first sample of
//!   each file is at 0; gaps (a discontinuity between segments, a track
//!   pausing) are kept as sample durations, so audio and video stay
//!   aligned and the file keeps real time. A track that starts later than
//!   its file gets an empty edit (`elst`). A segment whose timestamps go
//!   back (flagged discontinuity, or over 1 s back) continues after what
//!   came before; other backward samples are dropped.
//! - **Video.** `avc1` with `avcC` built from the stream's SPS/PPS; AUD,
//!   SPS, PPS and filler NAL units are removed from samples, which become
//!   length-prefixed (4 bytes). Key frames (IDR) go in `stss`; `ctts` only
//!   when PTS ≠ DTS. New parameter sets mid-file (a resolution change)
//!   become another `avc1` entry in `stsd`, not a new file.
//! - **Audio.** `mp4a` + `esds` (AudioSpecificConfig from the ADTS
//!   header), ADTS headers stripped, 1024 samples a frame, timescale = the
//!   sample rate.
//! - **Splitting.** A file is closed when adding the next group would pass
//!   a limit. Groups start at video key frames, or at any audio frame
//!   while there is no video (audio-only, or video stalled for 10 s or
//!   half the maximum duration), so every file with video starts with a
//!   key frame (video resuming with a non-key frame in a file cut during
//!   a stall waits for the next one). A group larger than a limit by
//!   itself (a key-frame interval longer than the maximum duration) gets
//!   a file of its own, over the limit, counted in
//!   [`PackStats::oversize_files`]. Files are numbered 1, 2, ... when
//!   split and 0 when the recording fits one file (spec §3a: no
//!   `_<Index>` then).
//! - **Faststart.** `ftyp`, `moov`, `mdat`: chunk offsets are computed
//!   after sizing `moov`; `co64` replaces `stco` past 4 GiB. Chunks hold
//!   at most 1 s (or 1 MiB) of one track, interleaved.
//! - **Memory.** Payload is handed out chunk by chunk as it is packed
//!   ([`PackOutput::Payload`], at most 1 s or 1 MiB of one track each);
//!   only the sample tables stay (about 20 bytes a sample), and the
//!   header comes last ([`PackOutput::Closed`]): a faststart file is its
//!   header followed by the payload handed out before it. Besides, one
//!   key-frame interval and the samples of the newest segment are held.
//!   Whoever writes the payload to disk as it comes packs a 2 GB file in
//!   a few MB ([`Assembler`] puts files together in memory instead, for
//!   tests and small outputs).
//!
//! Layout: `config` (sample descriptions), `split` (file limits), `tables`
//! (one file's sample tables and payload), `boxes` (the box writers); the
//! TS input is read by `media::ts_demux`.
//!
//! API: [`Mp4Packer`] streams (`push_segment` returns the payload and
//! files it produced, `finish` the rest and [`PackStats`]); [`pack`] and
//! [`pack_aac`] take a whole recording and return whole files.
//!
//! Boxes are written here (`boxes`, ~280 lines) rather than with a crate:
//! we need exact faststart sizing, `co64`, several sample descriptions and
//! edit lists. `mp4` 0.14 writes slightly wrong `mvhd` durations;
//! `shiguredo_mp4` (2026.5) needs Rust 1.93 (ours: 1.85) and its muxer
//! writes no edit lists (docs/architecture.md has the evaluation).

use std::collections::VecDeque;

use crate::media::h264;
use crate::media::ts_demux::{Demuxed, Demuxer, Kind, Pes, TsError};

mod boxes;
mod config;
mod split;
mod tables;
#[cfg(test)]
mod tests;

use boxes::*;
pub use config::adts_payload_info;
use config::*;
use split::*;
use tables::*;

/// Spec §6: MP4 files are split at 24 h of media...
pub const DEFAULT_MAX_DURATION_MS: u64 = 24 * 60 * 60 * 1000;
/// ... or 2 GB (decimal, so the file is also below 2 GiB).
pub const DEFAULT_MAX_BYTES: u64 = 2_000_000_000;

const NAL_FILLER: u8 = 12;
const CLOCK: u64 = 90_000;
const WRAP: u64 = 1 << 33;
const MOVIE_TIMESCALE: u64 = 1000;
const AAC_FRAME: u64 = 1024;
/// Video this long without a frame no longer holds audio back from
/// cutting, and a frame shown this long at the end of a file is cut short.
const VIDEO_STALL: u64 = 10 * CLOCK;
/// Timestamps this far back start a new timeline even without the flag.
const REBASE_AFTER: u64 = CLOCK;
const CHUNK_SPAN: u64 = CLOCK;
const CHUNK_BYTES: usize = 1 << 20;
/// A video frame's duration before any two frames were seen (30 fps).
const DEFAULT_FRAME: u64 = 3_000;
const MAX_KEPT_ERRORS: usize = 16;
/// Sample-table bytes per sample, at most (stsz, stts, ctts, stss, chunk).
const TABLE_BYTES_PER_SAMPLE: u64 = 44;
/// ftyp, mvhd, the fixed boxes of two tracks and the mdat header, at most.
const FIXED_HEADER_BYTES: u64 = 4096;
const AAC_RATES: [u32; 13] = [
    96_000, 88_200, 64_000, 48_000, 44_100, 32_000, 24_000, 22_050, 16_000, 12_000, 11_025, 8_000,
    7_350,
];
const MATRIX: [u32; 9] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000];

/// When a file is closed and the next one begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLimits {
    /// Media duration of a file, at most.
    pub max_duration_ms: u64,
    /// Size of a file, at most.
    pub max_bytes: u64,
}

impl Default for SplitLimits {
    fn default() -> Self {
        Self {
            max_duration_ms: DEFAULT_MAX_DURATION_MS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl SplitLimits {
    /// From `RecordParams.MaxMediaFileDuration` (minutes, 1..=1440; 0 means
    /// the default 24 h), with the 2 GB size limit.
    pub fn from_max_media_file_minutes(minutes: u32) -> Self {
        let max_duration_ms = match minutes {
            0 => DEFAULT_MAX_DURATION_MS,
            m => u64::from(m) * 60_000,
        };
        Self {
            max_duration_ms,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    fn max_ticks(&self) -> u64 {
        self.max_duration_ms.saturating_mul(CLOCK / 1000)
    }
}

/// What the packer writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// MP4 with the stream's H.264 and AAC tracks (`OutputFormat` mp4).
    Mp4,
    /// MP4 with only the AAC track, M4A brand (audio-only recordings).
    AudioMp4,
    /// Raw ADTS frames one after another (`OutputFormat` aac). ADTS has no
    /// timestamps: gaps in the audio close up.
    Adts,
}

/// What one finished output file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    /// 0 when the recording fits one file (named without `_<Index>`,
    /// spec §3a); 1, 2, ... when it was split.
    pub index: u32,
    /// Where the file starts: ms after the recording's first sample.
    pub start_ms: u64,
    /// Media duration (the longest track, from the file's start).
    pub duration_ms: u64,
    pub has_video: bool,
    pub has_audio: bool,
    pub video_frames: u64,
    pub audio_frames: u64,
}

/// What the packer produces, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackOutput {
    /// The next bytes of the open file's payload (the `mdat` contents; for
    /// ADTS the file itself).
    Payload(Vec<u8>),
    /// The open file is complete: its header, then every payload handed
    /// out since the previous `Closed`, make the file.
    Closed(ClosedFile),
}

/// A file the packer closed; its payload went out before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedFile {
    /// `ftyp`, `moov` and the `mdat` header (empty for ADTS).
    pub header: Vec<u8>,
    /// The payload's length, to check what was written.
    pub payload_len: u64,
    pub facts: FileFacts,
}

/// One finished output file, whole in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedFile {
    /// 0 when the recording fits one file (named without `_<Index>`,
    /// spec §3a); 1, 2, ... when it was split.
    pub index: u32,
    /// The whole file.
    pub data: Vec<u8>,
    /// Where the file starts: ms after the recording's first sample.
    pub start_ms: u64,
    /// Media duration (the longest track, from the file's start).
    pub duration_ms: u64,
    pub has_video: bool,
    pub has_audio: bool,
    pub video_frames: u64,
    pub audio_frames: u64,
}

/// Puts the packer's output together in memory: whole files, for tests,
/// fuzzing and callers whose files are small.
#[derive(Debug, Default)]
pub struct Assembler {
    payload: Vec<u8>,
}

impl Assembler {
    /// The files `outputs` completed.
    pub fn files(&mut self, outputs: Vec<PackOutput>) -> Vec<PackedFile> {
        let mut files = Vec::new();
        for output in outputs {
            match output {
                PackOutput::Payload(mut bytes) => self.payload.append(&mut bytes),
                PackOutput::Closed(closed) => {
                    let mut data = closed.header;
                    data.append(&mut self.payload);
                    let f = closed.facts;
                    files.push(PackedFile {
                        index: f.index,
                        data,
                        start_ms: f.start_ms,
                        duration_ms: f.duration_ms,
                        has_video: f.has_video,
                        has_audio: f.has_audio,
                        video_frames: f.video_frames,
                        audio_frames: f.audio_frames,
                    });
                }
            }
        }
        files
    }
}

/// A whole recording packed in memory: its files and what happened on
/// the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub files: Vec<PackedFile>,
    pub stats: PackStats,
}

/// The end of streaming: the last outputs and what happened on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedOutputs {
    pub outputs: Vec<PackOutput>,
    pub stats: PackStats,
}

/// Problems in the input. None of them stops packing: the damaged part is
/// dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    #[error(transparent)]
    Ts(#[from] TsError),
    #[error("segment {segment}: malformed ADTS frame")]
    BadAdts { segment: u64 },
    #[error("segment {segment}: unsupported AAC ({what})")]
    UnsupportedAac { segment: u64, what: &'static str },
    #[error("segment {segment}: H.264 access unit without a picture")]
    NoPicture { segment: u64 },
    #[error("segment {segment}: unusable H.264 SPS/PPS")]
    BadParameterSets { segment: u64 },
    #[error("segment {segment}: video frames dropped until the next key frame")]
    WaitingForKeyframe { segment: u64 },
    #[error("segment {segment}: {track} timestamps went backwards")]
    NonMonotonic { segment: u64, track: &'static str },
    #[error("segment {segment}: {track} sample came after its file was closed")]
    Late { segment: u64, track: &'static str },
}

/// Counters of a packing run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackStats {
    pub segments: u64,
    /// Frames written to files.
    pub video_frames: u64,
    pub audio_frames: u64,
    /// Frames of the input left out (damaged, or waiting for a key frame).
    pub dropped_video_frames: u64,
    pub dropped_audio_frames: u64,
    /// Files over a limit because one key-frame interval exceeded it.
    pub oversize_files: u64,
    /// Every [`PackError`], counted.
    pub errors: u64,
    /// The first few errors, for the log.
    pub first_errors: Vec<PackError>,
}

impl PackStats {
    fn error(&mut self, e: PackError) {
        self.errors += 1;
        if self.first_errors.len() < MAX_KEPT_ERRORS {
            self.first_errors.push(e);
        }
    }
}

/// Packs a whole recording at once: `(segment, discontinuity)` in
/// playlist order.
pub fn pack<'a>(
    segments: impl IntoIterator<Item = (&'a [u8], bool)>,
    limits: SplitLimits,
    container: Container,
) -> Finished {
    let mut packer = Mp4Packer::new(limits, container);
    let mut assembler = Assembler::default();
    let mut files = Vec::new();
    for (ts, discontinuity) in segments {
        files.extend(assembler.files(packer.push_segment(ts, discontinuity)));
    }
    let last = packer.finish();
    files.extend(assembler.files(last.outputs));
    Finished {
        files,
        stats: last.stats,
    }
}

/// An audio-only recording as raw ADTS `.aac` files.
pub fn pack_aac<'a>(
    segments: impl IntoIterator<Item = (&'a [u8], bool)>,
    limits: SplitLimits,
) -> Finished {
    pack(segments, limits, Container::Adts)
}

/// The streaming packer: segments in, files out as limits are reached.
pub struct Mp4Packer {
    container: Container,
    demux: Demuxer,
    stats: PackStats,
    configs: Configs,
    /// The newest unwrapped timestamp: the reference for the next one.
    ts_ref: Option<u64>,
    /// Added to unwrapped timestamps (timeline restarts).
    offset: u64,
    last_dts: [Option<u64>; 2],
    video_delta: u64,
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
    video_desc: Option<u32>,
    need_key: bool,
    dropping_video: bool,
    /// Samples waiting to be released in DTS order.
    queues: [VecDeque<Sample>; 2],
    /// Samples before this DTS can no longer be preceded by new ones.
    horizon: u64,
    split: Splitter,
}

impl Mp4Packer {
    pub fn new(limits: SplitLimits, container: Container) -> Self {
        Self {
            container,
            demux: Demuxer::new(),
            stats: PackStats::default(),
            configs: Configs::default(),
            ts_ref: None,
            offset: 0,
            last_dts: [None; 2],
            video_delta: DEFAULT_FRAME,
            sps: Vec::new(),
            pps: Vec::new(),
            video_desc: None,
            need_key: true,
            dropping_video: false,
            queues: [VecDeque::new(), VecDeque::new()],
            horizon: 0,
            split: Splitter::new(limits, container),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &PackStats {
        &self.stats
    }

    /// One TS segment; `discontinuity` as `#EXT-X-DISCONTINUITY` before it
    /// in the playlist. Returns the payload packed and the files closed.
    pub fn push_segment(&mut self, ts: &[u8], discontinuity: bool) -> Vec<PackOutput> {
        let segment = self.stats.segments;
        self.stats.segments += 1;
        let want_video = self.container == Container::Mp4;
        let mut damage = Vec::new();
        let demuxed = self.demux.segment(ts, segment, &mut damage);
        for e in damage {
            self.stats.error(PackError::Ts(e));
        }
        let mut items: Vec<Demuxed> = demuxed
            .into_iter()
            .filter(|i| want_video || i.kind() == Kind::Audio)
            .collect();
        let mut first = [None; 2];
        for item in &mut items {
            if let Demuxed::Pes(p) = item {
                let reference = self.ts_ref.unwrap_or((p.dts % WRAP) + WRAP);
                p.dts = unwrap33(reference, p.dts);
                p.pts = unwrap33(p.dts, p.pts);
                self.ts_ref = Some(p.dts);
                first[p.kind as usize].get_or_insert(p.dts);
            }
        }
        self.maybe_rebase(first, discontinuity);
        let mut seg_min: Option<u64> = None;
        for item in items {
            match item {
                Demuxed::Lost(Kind::Video) => self.need_key = true,
                Demuxed::Lost(Kind::Audio) => self.stats.dropped_audio_frames += 1,
                Demuxed::Pes(p) => {
                    let min = match p.kind {
                        Kind::Video => self.video(p, segment),
                        Kind::Audio => self.audio(p, segment),
                    };
                    if let Some(m) = min {
                        seg_min = Some(seg_min.map_or(m, |s| s.min(m)));
                    }
                }
            }
        }
        if let Some(m) = seg_min {
            self.horizon = self.horizon.max(m);
        }
        self.split.segment = segment;
        let mut out = Vec::new();
        self.release(false, &mut out);
        out
    }

    /// Ends the input: packs what is held and closes the last file.
    pub fn finish(mut self) -> FinishedOutputs {
        let mut outputs = Vec::new();
        self.release(true, &mut outputs);
        self.split
            .finish(&self.configs, &mut self.stats, &mut outputs);
        FinishedOutputs {
            outputs,
            stats: self.stats,
        }
    }

    /// Test hook: use `co64` once a chunk offset passes `limit`.
    #[cfg(test)]
    fn with_co64_above(mut self, limit: u64) -> Self {
        self.split.co64_above = limit;
        self
    }

    /// A segment whose first timestamps lie behind what came before starts
    /// a new timeline: it continues where the old one ended.
    fn maybe_rebase(&mut self, first: [Option<u64>; 2], discontinuity: bool) {
        let mut shift = 0;
        for kind in [Kind::Video, Kind::Audio] {
            let (Some(first), Some(last)) = (first[kind as usize], self.last_dts[kind as usize])
            else {
                continue;
            };
            let first = first + self.offset;
            if first <= last && (discontinuity || first + REBASE_AFTER <= last) {
                let nominal = match kind {
                    Kind::Video => self.video_delta,
                    Kind::Audio => self.configs.audio.last().map_or(1920, |c| c.frame_ticks()),
                };
                shift = shift.max(last + nominal - first);
            }
        }
        self.offset += shift;
    }

    /// One video PES: the sample's DTS when queued.
    fn video(&mut self, p: Pes, segment: u64) -> Option<u64> {
        let dts = p.dts + self.offset;
        let cto = (p.pts as i64 - p.dts as i64).clamp(i64::from(i32::MIN), i64::from(i32::MAX));
        let (mut sps, mut pps) = (Vec::new(), Vec::new());
        let (mut key, mut picture) = (false, false);
        let mut data = Vec::with_capacity(p.payload.len());
        for nal in h264::nal_units(&p.payload) {
            let nal = trim_trailing_zeros(nal);
            match h264::nal_type(nal) {
                _ if nal.is_empty() => {}
                h264::NAL_SPS => sps.push(nal.to_vec()),
                h264::NAL_PPS => pps.push(nal.to_vec()),
                h264::NAL_AUD | NAL_FILLER => {}
                t => {
                    let Ok(len) = u32::try_from(nal.len()) else {
                        continue;
                    };
                    picture |= (1..=5).contains(&t);
                    key |= t == h264::NAL_IDR;
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend_from_slice(nal);
                }
            }
        }
        if !sps.is_empty() || !pps.is_empty() {
            if !sps.is_empty() {
                self.sps = sps;
            }
            if !pps.is_empty() {
                self.pps = pps;
            }
            self.video_desc = self.configs.video_desc(&self.sps, &self.pps);
            if self.video_desc.is_none() {
                self.stats.error(PackError::BadParameterSets { segment });
            }
        }
        if !picture {
            self.stats.error(PackError::NoPicture { segment });
            self.stats.dropped_video_frames += 1;
            return None;
        }
        if self.last_dts[0].is_some_and(|l| dts <= l) {
            self.stats.error(PackError::NonMonotonic {
                segment,
                track: "video",
            });
            self.stats.dropped_video_frames += 1;
            self.need_key = true;
            return None;
        }
        if key && self.video_desc.is_some() {
            self.need_key = false;
            self.dropping_video = false;
        }
        let desc = match self.video_desc {
            Some(d) if !self.need_key => d,
            _ => {
                self.stats.dropped_video_frames += 1;
                if !self.dropping_video {
                    self.dropping_video = true;
                    self.stats.error(PackError::WaitingForKeyframe { segment });
                }
                return None;
            }
        };
        if let Some(last) = self.last_dts[0] {
            if dts - last < VIDEO_STALL {
                self.video_delta = dts - last;
            }
        }
        self.last_dts[0] = Some(dts);
        self.queues[0].push_back(Sample {
            kind: Kind::Video,
            dts,
            cto: cto as i32,
            key,
            desc,
            data,
        });
        Some(dts)
    }

    /// One audio PES of one or more ADTS frames: the first queued DTS.
    fn audio(&mut self, p: Pes, segment: u64) -> Option<u64> {
        let base = p.pts + self.offset;
        let mut first = None;
        let mut rest = p.payload.as_slice();
        let mut k = 0u64;
        while !rest.is_empty() {
            let adts = match Adts::parse(rest) {
                Ok(a) => a,
                Err(e) => {
                    self.stats.error(e.at(segment));
                    self.stats.dropped_audio_frames += 1;
                    break;
                }
            };
            let rate = u64::from(adts.config.rate());
            let dts = base + (k * AAC_FRAME * CLOCK + rate / 2) / rate;
            k += 1;
            let (frame, tail) = rest.split_at(adts.frame_len);
            rest = tail;
            if self.last_dts[1].is_some_and(|l| dts <= l) {
                self.stats.error(PackError::NonMonotonic {
                    segment,
                    track: "audio",
                });
                self.stats.dropped_audio_frames += 1;
                continue;
            }
            let desc = self.configs.audio_desc(adts.config);
            self.last_dts[1] = Some(dts);
            first.get_or_insert(dts);
            self.queues[1].push_back(Sample {
                kind: Kind::Audio,
                dts,
                cto: 0,
                key: true,
                desc,
                data: frame[adts.header_len..].to_vec(),
            });
        }
        first
    }

    /// Hands queued samples to the splitter in DTS order: those before the
    /// horizon, or all.
    fn release(&mut self, all: bool, out: &mut Vec<PackOutput>) {
        loop {
            let v = self.queues[0].front().map(|s| s.dts);
            let a = self.queues[1].front().map(|s| s.dts);
            let (i, dts) = match (v, a) {
                (Some(v), Some(a)) if v <= a => (0, v),
                (Some(v), None) => (0, v),
                (_, Some(a)) => (1, a),
                (None, None) => break,
            };
            if !all && dts >= self.horizon {
                break;
            }
            let Some(s) = self.queues[i].pop_front() else {
                break;
            };
            self.split.push(s, &self.configs, &mut self.stats, out);
        }
    }
}

/// Unwraps a 33-bit timestamp to the value nearest `reference`.
fn unwrap33(reference: u64, raw: u64) -> u64 {
    let candidate = (reference & !(WRAP - 1)) | (raw % WRAP);
    if candidate + WRAP / 2 < reference {
        candidate + WRAP
    } else if candidate > reference + WRAP / 2 && candidate >= WRAP {
        candidate - WRAP
    } else {
        candidate
    }
}

fn trim_trailing_zeros(nal: &[u8]) -> &[u8] {
    let end = nal.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &nal[..end]
}
