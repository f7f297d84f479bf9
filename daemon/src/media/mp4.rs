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
//! - **Memory.** A file is built in memory (at most the size limit) and
//!   handed out as soon as it is closed; besides, one key-frame interval
//!   and the samples of the newest segment are held.
//!
//! API: [`Mp4Packer`] streams (`push_segment` returns the files it
//! closed, `finish` the rest and [`PackStats`]); [`pack`] and [`pack_aac`]
//! take a whole recording.
//!
//! Boxes are written here (~350 lines) rather than with a crate: we need
//! exact control of faststart sizing, `co64`, several sample descriptions
//! and edit lists, and the candidates either lack one of these or write
//! slightly wrong durations (`mp4` 0.14's `mvhd`).

use std::collections::VecDeque;

use crate::media::h264;
use crate::media::ts::{crc32_mpeg2, PID_AUDIO, PID_VIDEO};

/// Spec §6: MP4 files are split at 24 h of media...
pub const DEFAULT_MAX_DURATION_MS: u64 = 24 * 60 * 60 * 1000;
/// ... or 2 GB (decimal, so the file is also below 2 GiB).
pub const DEFAULT_MAX_BYTES: u64 = 2_000_000_000;

const TS_PACKET: usize = 188;
const TS_SYNC: u8 = 0x47;
const PID_PAT: u16 = 0;
const STREAM_TYPE_H264: u8 = 0x1b;
const STREAM_TYPE_AAC_ADTS: u8 = 0x0f;
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

/// One finished output file.
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

/// The end of packing: the last files and what happened on the way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    pub files: Vec<PackedFile>,
    pub stats: PackStats,
}

/// Problems in the input. None of them stops packing: the damaged part is
/// dropped and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    #[error("segment {segment}: no MPEG-TS packets")]
    NotTs { segment: u64 },
    #[error("segment {segment}: TS sync lost at byte {offset}")]
    LostSync { segment: u64, offset: usize },
    #[error("segment {segment}: ends with a partial TS packet of {bytes} bytes")]
    PartialPacket { segment: u64, bytes: usize },
    #[error("segment {segment}: transport error flagged on PID {pid:#x}")]
    TransportError { segment: u64, pid: u16 },
    #[error("segment {segment}: continuity error on PID {pid:#x}")]
    Continuity { segment: u64, pid: u16 },
    #[error("segment {segment}: malformed adaptation field on PID {pid:#x}")]
    BadAdaptationField { segment: u64, pid: u16 },
    #[error("segment {segment}: bad PAT/PMT on PID {pid:#x}")]
    BadTable { segment: u64, pid: u16 },
    #[error("segment {segment}: malformed PES on PID {pid:#x}")]
    BadPes { segment: u64, pid: u16 },
    #[error("segment {segment}: incomplete PES on PID {pid:#x}")]
    IncompletePes { segment: u64, pid: u16 },
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

    /// Takes over the errors counted in `other`.
    fn absorb(&mut self, other: PackStats) {
        self.errors += other.errors;
        let room = MAX_KEPT_ERRORS.saturating_sub(self.first_errors.len());
        self.first_errors
            .extend(other.first_errors.into_iter().take(room));
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
    let mut files = Vec::new();
    for (ts, discontinuity) in segments {
        files.extend(packer.push_segment(ts, discontinuity));
    }
    let mut last = packer.finish();
    files.append(&mut last.files);
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

/// One elementary-stream unit of a TS segment, as written: an H.264
/// access unit (Annex-B) or one or more ADTS frames, with its raw 33-bit
/// timestamps. For tools that re-time or re-encode a recording before
/// packing it (`kiroku merge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsUnit {
    pub video: bool,
    pub pts: u64,
    pub dts: u64,
    pub payload: Vec<u8>,
}

/// The units of one TS segment in the order they end; damage is skipped
/// and counted in the returned stats, as when packing.
pub fn demux_segment(ts: &[u8]) -> (Vec<TsUnit>, PackStats) {
    let mut stats = PackStats::default();
    let units = Demuxer::new()
        .segment(ts, 0, &mut stats)
        .into_iter()
        .filter_map(|d| match d {
            Demuxed::Pes(p) => Some(TsUnit {
                video: p.kind == Kind::Video,
                pts: p.pts,
                dts: p.dts,
                payload: p.payload,
            }),
            Demuxed::Lost(_) => None,
        })
        .collect();
    (units, stats)
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
    /// in the playlist. Returns the files this closed.
    pub fn push_segment(&mut self, ts: &[u8], discontinuity: bool) -> Vec<PackedFile> {
        let segment = self.stats.segments;
        self.stats.segments += 1;
        let want_video = self.container == Container::Mp4;
        let mut items: Vec<Demuxed> = self
            .demux
            .segment(ts, segment, &mut self.stats)
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
    pub fn finish(mut self) -> Finished {
        let mut files = Vec::new();
        self.release(true, &mut files);
        self.split
            .finish(&self.configs, &mut self.stats, &mut files);
        Finished {
            files,
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
    fn release(&mut self, all: bool, out: &mut Vec<PackedFile>) {
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

// ---------------------------------------------------------------------------
// MPEG-TS demuxing

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Video = 0,
    Audio = 1,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Video => "video",
            Kind::Audio => "audio",
        }
    }
}

#[derive(Debug)]
struct Pes {
    kind: Kind,
    pts: u64,
    dts: u64,
    payload: Vec<u8>,
}

#[derive(Debug)]
enum Demuxed {
    Pes(Pes),
    /// A PES of this kind was lost.
    Lost(Kind),
}

impl Demuxed {
    fn kind(&self) -> Kind {
        match self {
            Demuxed::Pes(p) => p.kind,
            Demuxed::Lost(k) => *k,
        }
    }
}

#[derive(Debug, Default)]
struct PesBuf {
    data: Vec<u8>,
    cc: Option<u8>,
    open: bool,
    broken: bool,
}

struct Demuxer {
    pmt_pid: Option<u16>,
    /// Video and audio PIDs, from the newest PMT.
    pids: [Option<u16>; 2],
    bufs: [PesBuf; 2],
}

impl Demuxer {
    fn new() -> Self {
        Self {
            pmt_pid: None,
            pids: [Some(PID_VIDEO), Some(PID_AUDIO)],
            bufs: Default::default(),
        }
    }

    fn slot(&self, pid: u16) -> Option<usize> {
        self.pids.iter().position(|p| *p == Some(pid))
    }

    /// One segment's PES, in the order they end. PES never span segments.
    fn segment(&mut self, ts: &[u8], segment: u64, stats: &mut PackStats) -> Vec<Demuxed> {
        self.bufs = Default::default();
        let mut out = Vec::new();
        // Counted apart: a segment without a single packet is just NotTs.
        let mut errors = PackStats::default();
        let mut lost_tail = [false; 2];
        let mut pos = 0;
        let mut packets = 0u64;
        while pos < ts.len() {
            if ts[pos] != TS_SYNC {
                errors.error(PackError::LostSync {
                    segment,
                    offset: pos,
                });
                for b in &mut self.bufs {
                    b.broken |= b.open;
                }
                match resync(ts, pos) {
                    Some(next) => pos = next,
                    None => {
                        pos = ts.len();
                        break;
                    }
                }
            }
            let Some(packet) = ts.get(pos..pos + TS_PACKET) else {
                break;
            };
            packets += 1;
            self.packet(packet, segment, &mut errors, &mut out);
            pos += TS_PACKET;
        }
        if packets == 0 {
            stats.error(PackError::NotTs { segment });
            return Vec::new();
        }
        if let Some(rest) = ts.get(pos..).filter(|r| !r.is_empty()) {
            // A partial packet: what it carried is lost.
            errors.error(PackError::PartialPacket {
                segment,
                bytes: rest.len(),
            });
            match rest.get(1..3) {
                Some(h) => {
                    let pid = (u16::from(h[0] & 0x1f) << 8) | u16::from(h[1]);
                    if let Some(i) = self.slot(pid) {
                        if h[0] & 0x40 != 0 {
                            lost_tail[i] = true;
                        } else {
                            self.bufs[i].broken |= self.bufs[i].open;
                        }
                    }
                }
                None => {
                    for b in &mut self.bufs {
                        b.broken |= b.open;
                    }
                }
            }
        }
        for (i, lost) in lost_tail.into_iter().enumerate() {
            self.flush(i, segment, &mut errors, &mut out);
            if lost {
                out.push(Demuxed::Lost(kind_of(i)));
            }
        }
        stats.absorb(errors);
        out
    }

    fn packet(&mut self, p: &[u8], segment: u64, stats: &mut PackStats, out: &mut Vec<Demuxed>) {
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        let pusi = p[1] & 0x40 != 0;
        let afc = (p[3] >> 4) & 3;
        let cc = p[3] & 0x0f;
        let slot = self.slot(pid);
        if p[1] & 0x80 != 0 {
            stats.error(PackError::TransportError { segment, pid });
            if let Some(i) = slot {
                self.bufs[i].broken |= self.bufs[i].open;
            }
            return;
        }
        let mut start = 4;
        let mut discontinuity = false;
        if afc & 2 != 0 {
            let len = usize::from(p[4]);
            if (afc == 2 && len != 183) || (afc == 3 && len > 182) {
                stats.error(PackError::BadAdaptationField { segment, pid });
                if let Some(i) = slot {
                    self.bufs[i].broken |= self.bufs[i].open;
                }
                return;
            }
            discontinuity = len > 0 && p[5] & 0x80 != 0;
            start = 5 + len;
        }
        if afc & 1 == 0 {
            return;
        }
        let payload = &p[start..];
        if pid == PID_PAT {
            if pusi {
                match parse_pat(payload) {
                    Some(pmt) => self.pmt_pid = Some(pmt),
                    None => stats.error(PackError::BadTable { segment, pid }),
                }
            }
            return;
        }
        if Some(pid) == self.pmt_pid {
            if pusi {
                match parse_pmt(payload) {
                    Some(pids) => self.pids = pids,
                    None => stats.error(PackError::BadTable { segment, pid }),
                }
            }
            return;
        }
        let Some(i) = slot else {
            return;
        };
        let b = &mut self.bufs[i];
        if let Some(prev) = b.cc {
            if cc == prev && !discontinuity {
                return; // a duplicate packet
            }
            if cc != (prev + 1) & 0x0f && !discontinuity {
                stats.error(PackError::Continuity { segment, pid });
                b.broken |= b.open;
            }
        }
        b.cc = Some(cc);
        if pusi {
            self.flush(i, segment, stats, out);
            let b = &mut self.bufs[i];
            b.open = true;
            b.broken = false;
        } else if !b.open {
            // The middle of a PES whose start was lost.
            b.open = true;
            b.broken = true;
        }
        let b = &mut self.bufs[i];
        if !b.broken {
            b.data.extend_from_slice(payload);
        }
    }

    fn flush(&mut self, i: usize, segment: u64, stats: &mut PackStats, out: &mut Vec<Demuxed>) {
        let kind = kind_of(i);
        let pid = self.pids[i].unwrap_or(0);
        let b = &mut self.bufs[i];
        if !b.open {
            return;
        }
        b.open = false;
        let data = std::mem::take(&mut b.data);
        if std::mem::take(&mut b.broken) {
            stats.error(PackError::IncompletePes { segment, pid });
            out.push(Demuxed::Lost(kind));
            return;
        }
        match parse_pes(data, kind) {
            Ok(p) => out.push(Demuxed::Pes(p)),
            Err(incomplete) => {
                stats.error(if incomplete {
                    PackError::IncompletePes { segment, pid }
                } else {
                    PackError::BadPes { segment, pid }
                });
                out.push(Demuxed::Lost(kind));
            }
        }
    }
}

fn kind_of(i: usize) -> Kind {
    if i == 0 {
        Kind::Video
    } else {
        Kind::Audio
    }
}

/// The next plausible packet start after `from`: a sync byte followed by
/// another one packet later (or a last whole packet).
fn resync(ts: &[u8], from: usize) -> Option<usize> {
    (from + 1..ts.len()).find(|&j| {
        ts[j] == TS_SYNC
            && match ts.get(j + TS_PACKET) {
                Some(&b) => b == TS_SYNC,
                None => j + TS_PACKET == ts.len(),
            }
    })
}

/// A PSI section in one packet: checked table id, length and CRC.
fn section(payload: &[u8], table_id: u8) -> Option<&[u8]> {
    let pointer = usize::from(*payload.first()?);
    let s = payload.get(1 + pointer..)?;
    if *s.first()? != table_id {
        return None;
    }
    let len = (usize::from(*s.get(1)? & 0x0f) << 8) | usize::from(*s.get(2)?);
    let s = s.get(..3 + len)?;
    (len >= 9 && crc32_mpeg2(s) == 0).then_some(s)
}

/// The PID of the first program's PMT.
fn parse_pat(payload: &[u8]) -> Option<u16> {
    let s = section(payload, 0x00)?;
    s.get(8..s.len() - 4)?
        .chunks_exact(4)
        .find(|e| e[0] != 0 || e[1] != 0)
        .map(|e| (u16::from(e[2] & 0x1f) << 8) | u16::from(e[3]))
}

/// The H.264 and AAC PIDs a PMT declares.
fn parse_pmt(payload: &[u8]) -> Option<[Option<u16>; 2]> {
    let s = section(payload, 0x02)?;
    let info = (usize::from(*s.get(10)? & 0x0f) << 8) | usize::from(*s.get(11)?);
    let mut es = s.get(12 + info..s.len() - 4)?;
    let mut pids = [None; 2];
    while es.len() >= 5 {
        let pid = (u16::from(es[1] & 0x1f) << 8) | u16::from(es[2]);
        let len = (usize::from(es[3] & 0x0f) << 8) | usize::from(es[4]);
        match es[0] {
            STREAM_TYPE_H264 => {
                pids[0].get_or_insert(pid);
            }
            STREAM_TYPE_AAC_ADTS => {
                pids[1].get_or_insert(pid);
            }
            _ => {}
        }
        es = es.get(5 + len..)?;
    }
    Some(pids)
}

fn pes_timestamp(b: &[u8]) -> Option<u64> {
    let b = b.get(..5)?;
    if b[0] & 1 == 0 || b[2] & 1 == 0 || b[4] & 1 == 0 {
        return None;
    }
    Some(
        (u64::from((b[0] >> 1) & 7) << 30)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1),
    )
}

/// A reassembled PES; `Err(true)` when it is shorter than its header says.
fn parse_pes(mut data: Vec<u8>, kind: Kind) -> Result<Pes, bool> {
    if data.len() < 9 || data[..3] != [0, 0, 1] {
        return Err(data.len() < 9);
    }
    let len = usize::from(u16::from_be_bytes([data[4], data[5]]));
    if len != 0 {
        if len < 3 {
            return Err(false);
        }
        if data.len() < 6 + len {
            return Err(true);
        }
        data.truncate(6 + len);
    }
    if data[6] & 0xc0 != 0x80 {
        return Err(false);
    }
    let header_end = 9 + usize::from(data[8]);
    if header_end > data.len() {
        return Err(true);
    }
    let (pts, dts) = match data[7] >> 6 {
        2 if header_end >= 14 => {
            let pts = pes_timestamp(&data[9..]).ok_or(false)?;
            (pts, pts)
        }
        3 if header_end >= 19 => (
            pes_timestamp(&data[9..]).ok_or(false)?,
            pes_timestamp(&data[14..]).ok_or(false)?,
        ),
        _ => return Err(false),
    };
    data.drain(..header_end);
    Ok(Pes {
        kind,
        pts,
        dts,
        payload: data,
    })
}

// ---------------------------------------------------------------------------
// Elementary streams

/// An AAC configuration as ADTS describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AudioConfig {
    /// MPEG-4 audio object type (2 = LC).
    object_type: u8,
    sf_index: u8,
    channel_config: u8,
}

impl AudioConfig {
    fn rate(&self) -> u32 {
        AAC_RATES
            .get(usize::from(self.sf_index))
            .copied()
            .unwrap_or(48_000)
    }

    fn channels(&self) -> u16 {
        match self.channel_config {
            7 => 8,
            c => u16::from(c),
        }
    }

    /// AudioSpecificConfig (GASpecificConfig all zero).
    fn asc(&self) -> [u8; 2] {
        [
            (self.object_type << 3) | (self.sf_index >> 1),
            ((self.sf_index & 1) << 7) | (self.channel_config << 3),
        ]
    }

    /// A 7-byte ADTS header (no CRC) for a raw frame of `raw_len` bytes.
    fn adts_header(&self, raw_len: usize) -> [u8; 7] {
        let len = (raw_len + 7).min(0x1fff);
        [
            0xff,
            0xf1,
            ((self.object_type - 1) << 6) | (self.sf_index << 2) | (self.channel_config >> 2),
            ((self.channel_config & 3) << 6) | (len >> 11) as u8,
            (len >> 3) as u8,
            ((len as u8 & 7) << 5) | 0x1f,
            0xfc,
        ]
    }

    /// One frame's duration in 90 kHz ticks.
    fn frame_ticks(&self) -> u64 {
        AAC_FRAME * CLOCK / u64::from(self.rate())
    }
}

struct Adts {
    config: AudioConfig,
    header_len: usize,
    frame_len: usize,
}

enum AdtsProblem {
    Malformed,
    Unsupported(&'static str),
}

impl AdtsProblem {
    fn at(self, segment: u64) -> PackError {
        match self {
            AdtsProblem::Malformed => PackError::BadAdts { segment },
            AdtsProblem::Unsupported(what) => PackError::UnsupportedAac { segment, what },
        }
    }
}

impl Adts {
    fn parse(b: &[u8]) -> Result<Self, AdtsProblem> {
        let Some(h) = b.get(..7) else {
            return Err(AdtsProblem::Malformed);
        };
        if h[0] != 0xff || h[1] & 0xf6 != 0xf0 {
            return Err(AdtsProblem::Malformed);
        }
        let header_len = if h[1] & 1 == 1 { 7 } else { 9 };
        let frame_len =
            (usize::from(h[3] & 3) << 11) | (usize::from(h[4]) << 3) | usize::from(h[5] >> 5);
        if frame_len <= header_len || frame_len > b.len() {
            return Err(AdtsProblem::Malformed);
        }
        let config = AudioConfig {
            object_type: (h[2] >> 6) + 1,
            sf_index: (h[2] >> 2) & 0x0f,
            channel_config: ((h[2] & 1) << 2) | (h[3] >> 6),
        };
        if usize::from(config.sf_index) >= AAC_RATES.len() {
            return Err(AdtsProblem::Unsupported("sampling frequency index"));
        }
        if config.channel_config == 0 {
            return Err(AdtsProblem::Unsupported("channel configuration in a PCE"));
        }
        if h[6] & 3 != 0 {
            return Err(AdtsProblem::Unsupported("several raw data blocks a frame"));
        }
        Ok(Self {
            config,
            header_len,
            frame_len,
        })
    }
}

/// What a PES payload of ADTS frames holds: (sample rate, channels,
/// frames), from the same parsing the packer uses; `None` when its first
/// frame is not a usable ADTS frame.
pub fn adts_payload_info(payload: &[u8]) -> Option<(u32, u8, u64)> {
    let first = Adts::parse(payload).ok()?;
    let rate = *AAC_RATES.get(usize::from(first.config.sf_index))?;
    let mut frames = 0;
    let mut pos = 0;
    while let Some(a) = payload.get(pos..).and_then(|b| Adts::parse(b).ok()) {
        frames += 1;
        pos += a.frame_len;
    }
    Some((rate, first.config.channel_config, frames))
}

/// One set of H.264 parameter sets: one `avc1` sample description.
#[derive(Debug)]
struct VideoConfig {
    sps: Vec<Vec<u8>>,
    pps: Vec<Vec<u8>>,
    width: u16,
    height: u16,
    avcc: Vec<u8>,
}

impl VideoConfig {
    fn new(sps: &[Vec<u8>], pps: &[Vec<u8>]) -> Option<Self> {
        let first = sps.first()?;
        let info = h264::parse_sps(first)?;
        if pps.is_empty() || sps.len() > 31 || pps.len() > 255 {
            return None;
        }
        let mut avcc = vec![1];
        avcc.extend_from_slice(first.get(1..4)?);
        avcc.extend_from_slice(&[0xff, 0xe0 | sps.len() as u8]);
        for s in sps {
            avcc.extend_from_slice(&u16::try_from(s.len()).ok()?.to_be_bytes());
            avcc.extend_from_slice(s);
        }
        avcc.push(pps.len() as u8);
        for p in pps {
            avcc.extend_from_slice(&u16::try_from(p.len()).ok()?.to_be_bytes());
            avcc.extend_from_slice(p);
        }
        if matches!(info.profile_idc, 100 | 110 | 122 | 144) {
            // ISO/IEC 14496-15 §5.3.3.1: chroma format and bit depths.
            let (chroma, luma_bits, chroma_bits) = sps_chroma(first).unwrap_or((1, 0, 0));
            avcc.extend_from_slice(&[0xfc | chroma, 0xf8 | luma_bits, 0xf8 | chroma_bits, 0]);
        }
        Some(Self {
            sps: sps.to_vec(),
            pps: pps.to_vec(),
            width: u16::try_from(info.width).ok()?,
            height: u16::try_from(info.height).ok()?,
            avcc,
        })
    }
}

/// `chroma_format_idc` and the bit depths (minus 8) of a high-profile SPS.
fn sps_chroma(nal: &[u8]) -> Option<(u8, u8, u8)> {
    let mut rbsp = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &b in nal.get(4..)? {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        rbsp.push(b);
    }
    let mut pos = 0usize;
    let mut bit = || -> Option<u32> {
        let byte = *rbsp.get(pos / 8)?;
        let v = (byte >> (7 - pos % 8)) & 1;
        pos += 1;
        Some(u32::from(v))
    };
    let mut ue = || -> Option<u32> {
        let mut zeros = 0;
        while bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let mut v = 1u64;
        for _ in 0..zeros {
            v = (v << 1) | u64::from(bit()?);
        }
        u32::try_from(v - 1).ok()
    };
    ue()?; // seq_parameter_set_id
    let chroma = ue()?;
    if chroma == 3 {
        // separate_colour_plane_flag: one bit, read as part of the next ue.
        return Some((3, 0, 0));
    }
    let luma = ue()?;
    let chroma_depth = ue()?;
    if chroma > 3 || luma > 7 || chroma_depth > 7 {
        return None;
    }
    Some((chroma as u8, luma as u8, chroma_depth as u8))
}

/// Every sample description seen, by id.
#[derive(Debug, Default)]
struct Configs {
    video: Vec<VideoConfig>,
    audio: Vec<AudioConfig>,
}

impl Configs {
    fn video_desc(&mut self, sps: &[Vec<u8>], pps: &[Vec<u8>]) -> Option<u32> {
        if let Some(i) = self.video.iter().position(|c| c.sps == sps && c.pps == pps) {
            return u32::try_from(i).ok();
        }
        let c = VideoConfig::new(sps, pps)?;
        self.video.push(c);
        u32::try_from(self.video.len() - 1).ok()
    }

    fn audio_desc(&mut self, c: AudioConfig) -> u32 {
        let i = match self.audio.iter().position(|a| *a == c) {
            Some(i) => i,
            None => {
                self.audio.push(c);
                self.audio.len() - 1
            }
        };
        i as u32
    }

    fn audio(&self, desc: u32) -> AudioConfig {
        self.audio
            .get(desc as usize)
            .copied()
            .unwrap_or(AudioConfig {
                object_type: 2,
                sf_index: 3,
                channel_config: 2,
            })
    }
}

#[derive(Debug)]
struct Sample {
    kind: Kind,
    /// 90 kHz, unwrapped and rebased.
    dts: u64,
    /// PTS − DTS.
    cto: i32,
    key: bool,
    /// Id in [`Configs`].
    desc: u32,
    /// Length-prefixed NAL units, or one raw AAC frame.
    data: Vec<u8>,
}

// ---------------------------------------------------------------------------
// Splitting into files

struct Splitter {
    container: Container,
    limits: SplitLimits,
    file: Option<FileBuilder>,
    /// Samples since the last place a file may start.
    group: Vec<Sample>,
    group_start: u64,
    group_end: u64,
    group_bytes: u64,
    /// The group continues one that was too big for a file: it must join
    /// the same file.
    group_continues: bool,
    last_video: Option<u64>,
    video_delta: u64,
    emitted: u32,
    origin: Option<u64>,
    co64_above: u64,
    /// The segment being pushed, for errors.
    segment: u64,
}

impl Splitter {
    fn new(limits: SplitLimits, container: Container) -> Self {
        Self {
            container,
            limits,
            file: None,
            group: Vec::new(),
            group_start: 0,
            group_end: 0,
            group_bytes: 0,
            group_continues: false,
            last_video: None,
            video_delta: DEFAULT_FRAME,
            emitted: 0,
            origin: None,
            co64_above: u64::from(u32::MAX),
            segment: 0,
        }
    }

    fn push(&mut self, s: Sample, cfg: &Configs, stats: &mut PackStats, out: &mut Vec<PackedFile>) {
        self.origin.get_or_insert(s.dts);
        let end = match s.kind {
            Kind::Video => {
                if s.key {
                    self.commit(s.dts, cfg, stats, out);
                }
                if let Some(last) = self.last_video {
                    if s.dts > last && s.dts - last < VIDEO_STALL {
                        self.video_delta = s.dts - last;
                    }
                }
                self.last_video = Some(s.dts);
                s.dts + self.video_delta
            }
            Kind::Audio => {
                // (a stall shorter than half the file: the group stays small)
                let stall = VIDEO_STALL.min(self.limits.max_ticks() / 2);
                let video_live = self
                    .last_video
                    .is_some_and(|v| s.dts < v.saturating_add(stall));
                if !video_live {
                    self.commit(s.dts, cfg, stats, out);
                }
                s.dts + cfg.audio(s.desc).frame_ticks()
            }
        };
        if self.group.is_empty() {
            self.group_start = s.dts;
            self.group_end = end;
        } else {
            self.group_start = self.group_start.min(s.dts);
            self.group_end = self.group_end.max(end);
        }
        self.group_bytes += s.data.len() as u64 + TABLE_BYTES_PER_SAMPLE;
        self.group.push(s);
        let span = self.group_end - self.group_start;
        if span > self.limits.max_ticks() || self.group_bytes > self.limits.max_bytes {
            // Too big for any file: it gets one of its own, over the limit.
            if !self.group_continues {
                stats.oversize_files += 1;
                if self.file.as_ref().is_some_and(|f| !f.is_empty()) {
                    self.close(Some(self.group_start), cfg, out);
                }
            }
            self.append_group(cfg, stats);
            self.group_continues = true;
        }
    }

    /// The group is complete (the next sample, at `t`, may start a file):
    /// it joins the open file, or a new one if the open one would pass a
    /// limit.
    fn commit(&mut self, t: u64, cfg: &Configs, stats: &mut PackStats, out: &mut Vec<PackedFile>) {
        if self.group.is_empty() {
            return;
        }
        let end = self.group_end.max(t);
        let too_big = self.file.as_ref().is_some_and(|f| {
            !f.is_empty()
                && (end.saturating_sub(f.start) > self.limits.max_ticks()
                    || f.size_bound() + self.group_bytes > self.limits.max_bytes)
        });
        if too_big && !self.group_continues {
            self.close(Some(self.group_start), cfg, out);
        }
        self.append_group(cfg, stats);
        self.group_continues = false;
    }

    fn append_group(&mut self, cfg: &Configs, stats: &mut PackStats) {
        let file = self
            .file
            .get_or_insert_with(|| FileBuilder::new(self.container, self.group_start));
        if file.is_empty() {
            file.start = self.group_start;
        }
        for s in self.group.drain(..) {
            file.add(s, cfg, stats, self.segment);
        }
        self.group_bytes = 0;
    }

    fn close(&mut self, end: Option<u64>, cfg: &Configs, out: &mut Vec<PackedFile>) {
        let Some(file) = self.file.take().filter(|f| !f.is_empty()) else {
            return;
        };
        self.emitted += 1;
        let origin = self.origin.unwrap_or(file.start);
        out.push(file.finish(self.emitted, end, origin, cfg, self.co64_above));
    }

    fn finish(&mut self, cfg: &Configs, stats: &mut PackStats, out: &mut Vec<PackedFile>) {
        self.commit(self.group_end, cfg, stats, out);
        let Some(file) = self.file.take().filter(|f| !f.is_empty()) else {
            return;
        };
        let index = if self.emitted == 0 {
            0
        } else {
            self.emitted + 1
        };
        self.emitted += 1;
        let origin = self.origin.unwrap_or(file.start);
        out.push(file.finish(index, None, origin, cfg, self.co64_above));
    }
}

// ---------------------------------------------------------------------------
// One file: sample tables and payload

#[derive(Debug)]
struct Chunk {
    offset: u64,
    samples: u32,
    /// 1-based index into the track's `stsd`.
    desc: u32,
}

#[derive(Debug)]
struct TrackBuilder {
    kind: Kind,
    timescale: u32,
    /// Config ids, in `stsd` order.
    descs: Vec<u32>,
    sizes: Vec<u32>,
    stts: Vec<(u32, u32)>,
    ctts: Vec<(u32, i32)>,
    syncs: Vec<u32>,
    chunks: Vec<Chunk>,
    first_dts: u64,
    last_dts: u64,
    /// Media time (timescale units) of the last sample's start.
    pos: u64,
    /// One AAC frame in timescale units.
    frame: u64,
    last_delta: Option<u64>,
    open: Vec<u8>,
    open_samples: u32,
    open_start: u64,
    open_desc: u32,
    bytes: u64,
    max_size: u32,
    second: u64,
    second_bytes: u64,
    max_second_bytes: u64,
    waiting_reported: bool,
}

impl TrackBuilder {
    fn new(kind: Kind) -> Self {
        Self {
            kind,
            timescale: CLOCK as u32,
            descs: Vec::new(),
            sizes: Vec::new(),
            stts: Vec::new(),
            ctts: Vec::new(),
            syncs: Vec::new(),
            chunks: Vec::new(),
            first_dts: 0,
            last_dts: 0,
            pos: 0,
            frame: AAC_FRAME,
            last_delta: None,
            open: Vec::new(),
            open_samples: 0,
            open_start: 0,
            open_desc: 0,
            bytes: 0,
            max_size: 0,
            second: 0,
            second_bytes: 0,
            max_second_bytes: 0,
            waiting_reported: false,
        }
    }

    fn count(&self) -> u32 {
        self.sizes.len() as u32
    }

    fn media_time(&self, dts: u64) -> u64 {
        let rel = dts - self.first_dts;
        match self.kind {
            Kind::Video => rel,
            Kind::Audio => (rel * u64::from(self.timescale) + CLOCK / 2) / CLOCK,
        }
    }

    fn push_duration(&mut self, d: u64) {
        let d = d.clamp(1, u64::from(u32::MAX)) as u32;
        match self.stts.last_mut() {
            Some((n, delta)) if *delta == d => *n += 1,
            _ => self.stts.push((1, d)),
        }
    }

    fn flush_chunk(&mut self, payload: &mut Vec<u8>) {
        if self.open_samples == 0 {
            return;
        }
        self.chunks.push(Chunk {
            offset: payload.len() as u64,
            samples: self.open_samples,
            desc: self.open_desc,
        });
        payload.append(&mut self.open);
        self.open_samples = 0;
    }

    /// Media duration and the last sample's duration, in timescale units.
    fn close(&mut self, end: Option<u64>) -> u64 {
        let last = match self.kind {
            Kind::Video => match end {
                Some(e) if e > self.last_dts && e - self.last_dts <= VIDEO_STALL => {
                    e - self.last_dts
                }
                _ => self.last_delta.unwrap_or(DEFAULT_FRAME),
            },
            Kind::Audio => self.frame,
        };
        self.push_duration(last);
        self.pos + last
    }
}

struct FileBuilder {
    container: Container,
    start: u64,
    payload: Vec<u8>,
    tracks: [TrackBuilder; 2],
}

impl FileBuilder {
    fn new(container: Container, start: u64) -> Self {
        Self {
            container,
            start,
            payload: Vec::new(),
            tracks: [
                TrackBuilder::new(Kind::Video),
                TrackBuilder::new(Kind::Audio),
            ],
        }
    }

    fn is_empty(&self) -> bool {
        self.tracks.iter().all(|t| t.sizes.is_empty())
    }

    /// The file's size if it were closed now, at most.
    fn size_bound(&self) -> u64 {
        let mut n = FIXED_HEADER_BYTES + self.payload.len() as u64;
        for t in &self.tracks {
            n += t.open.len() as u64
                + TABLE_BYTES_PER_SAMPLE * u64::from(t.count())
                + 20 * (t.chunks.len() as u64 + 1);
        }
        n
    }

    fn add(&mut self, s: Sample, cfg: &Configs, stats: &mut PackStats, segment: u64) {
        if s.dts < self.start {
            stats.error(PackError::Late {
                segment,
                track: s.kind.name(),
            });
            match s.kind {
                Kind::Video => stats.dropped_video_frames += 1,
                Kind::Audio => stats.dropped_audio_frames += 1,
            }
            return;
        }
        let container = self.container;
        let t = &mut self.tracks[s.kind as usize];
        if t.sizes.is_empty() {
            if s.kind == Kind::Video && !s.key {
                // A file cut while video stalled: wait for a key frame.
                if !t.waiting_reported {
                    t.waiting_reported = true;
                    stats.error(PackError::WaitingForKeyframe { segment });
                }
                stats.dropped_video_frames += 1;
                return;
            }
            if s.kind == Kind::Audio {
                let c = cfg.audio(s.desc);
                t.timescale = c.rate();
            }
            t.first_dts = s.dts;
            t.pos = 0;
        } else {
            if s.dts <= t.last_dts {
                stats.error(PackError::NonMonotonic {
                    segment,
                    track: s.kind.name(),
                });
                return;
            }
            let mut delta = t.media_time(s.dts).saturating_sub(t.pos).max(1);
            if s.kind == Kind::Audio && delta.abs_diff(t.frame) <= 2 {
                delta = t.frame;
            }
            t.push_duration(delta);
            t.last_delta = Some(delta);
            t.pos += delta;
        }
        if s.kind == Kind::Audio {
            let c = cfg.audio(s.desc);
            t.frame = (AAC_FRAME * u64::from(t.timescale) / u64::from(c.rate())).max(1);
        }
        let desc = match t.descs.iter().position(|d| *d == s.desc) {
            Some(i) => i as u32 + 1,
            None => {
                t.descs.push(s.desc);
                t.descs.len() as u32
            }
        };
        if t.open_samples > 0
            && (desc != t.open_desc
                || s.dts - t.open_start >= CHUNK_SPAN
                || t.open.len() >= CHUNK_BYTES)
        {
            t.flush_chunk(&mut self.payload);
        }
        if t.open_samples == 0 {
            t.open_start = s.dts;
            t.open_desc = desc;
        }
        if container == Container::Adts {
            t.open
                .extend_from_slice(&cfg.audio(s.desc).adts_header(s.data.len()));
        }
        t.open.extend_from_slice(&s.data);
        t.open_samples += 1;
        let size = s.data.len() as u32;
        t.sizes.push(size);
        t.max_size = t.max_size.max(size);
        t.bytes += u64::from(size);
        let second = (s.dts - t.first_dts) / CLOCK;
        if second != t.second {
            t.second = second;
            t.second_bytes = 0;
        }
        t.second_bytes += u64::from(size);
        t.max_second_bytes = t.max_second_bytes.max(t.second_bytes);
        if s.key && s.kind == Kind::Video {
            t.syncs.push(t.count());
        }
        match t.ctts.last_mut() {
            Some((n, c)) if *c == s.cto => *n += 1,
            _ => t.ctts.push((1, s.cto)),
        }
        t.last_dts = s.dts;
        match s.kind {
            Kind::Video => stats.video_frames += 1,
            Kind::Audio => stats.audio_frames += 1,
        }
    }

    fn finish(
        mut self,
        index: u32,
        end: Option<u64>,
        origin: u64,
        cfg: &Configs,
        co64_above: u64,
    ) -> PackedFile {
        let mut timings = Vec::new();
        let mut end_ticks = 0u64;
        for t in &mut self.tracks {
            t.flush_chunk(&mut self.payload);
            if t.sizes.is_empty() {
                continue;
            }
            let duration = t.close(end);
            let offset = t.first_dts - self.start;
            let ticks = duration * CLOCK / u64::from(t.timescale);
            end_ticks = end_ticks.max(offset + ticks);
            timings.push(TrackTiming {
                kind: t.kind,
                duration,
                offset_ms: (offset + 45) / 90,
                duration_ms: (duration * MOVIE_TIMESCALE + u64::from(t.timescale) / 2)
                    / u64::from(t.timescale),
            });
        }
        let [video, audio] = &self.tracks;
        let (has_video, has_audio) = (!video.sizes.is_empty(), !audio.sizes.is_empty());
        let (video_frames, audio_frames) = (video.sizes.len() as u64, audio.sizes.len() as u64);
        let data = if self.container == Container::Adts {
            self.payload
        } else {
            let header = self.header(cfg, &timings, co64_above);
            let mut data = self.payload;
            data.splice(0..0, header);
            data
        };
        PackedFile {
            index,
            data,
            start_ms: (self.start.saturating_sub(origin) + 45) / 90,
            duration_ms: (end_ticks + 45) / 90,
            has_video,
            has_audio,
            video_frames,
            audio_frames,
        }
    }

    /// `ftyp`, `moov` and the `mdat` header, with chunk offsets pointing
    /// past them.
    fn header(&self, cfg: &Configs, timings: &[TrackTiming], co64_above: u64) -> Vec<u8> {
        let mut ftyp = Vec::new();
        boxed(&mut ftyp, b"ftyp", |b| match self.container {
            Container::AudioMp4 => {
                b.extend_from_slice(b"M4A \0\0\0\0M4A isomiso2mp41");
            }
            _ => b.extend_from_slice(b"isom\0\0\x02\0isomiso2avc1mp41"),
        });
        let payload = self.payload.len() as u64;
        let mdat_header: u64 = if payload + 8 > u64::from(u32::MAX) {
            16
        } else {
            8
        };
        let mut co64 = false;
        let mut moov = self.moov(cfg, timings, 0, false);
        if ftyp.len() as u64 + moov.len() as u64 + mdat_header + payload > co64_above {
            co64 = true;
            moov = self.moov(cfg, timings, 0, true);
        }
        let base = ftyp.len() as u64 + moov.len() as u64 + mdat_header;
        let moov = self.moov(cfg, timings, base, co64);
        let mut out = ftyp;
        out.extend_from_slice(&moov);
        if mdat_header == 16 {
            out.extend_from_slice(&1u32.to_be_bytes());
            out.extend_from_slice(b"mdat");
            out.extend_from_slice(&(payload + 16).to_be_bytes());
        } else {
            out.extend_from_slice(&((payload + 8) as u32).to_be_bytes());
            out.extend_from_slice(b"mdat");
        }
        out
    }

    fn moov(&self, cfg: &Configs, timings: &[TrackTiming], base: u64, co64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let movie_ms = timings
            .iter()
            .map(|t| t.offset_ms + t.duration_ms)
            .max()
            .unwrap_or(0);
        boxed(&mut out, b"moov", |b| {
            let v1 = movie_ms > u64::from(u32::MAX);
            full(b, b"mvhd", u8::from(v1), 0, |b| {
                times(b, v1, MOVIE_TIMESCALE as u32, movie_ms);
                b.extend_from_slice(&0x0001_0000u32.to_be_bytes()); // rate
                b.extend_from_slice(&0x0100u16.to_be_bytes()); // volume
                b.extend_from_slice(&[0; 10]);
                matrix(b);
                b.extend_from_slice(&[0; 24]);
                b.extend_from_slice(&(timings.len() as u32 + 1).to_be_bytes());
            });
            for (i, timing) in timings.iter().enumerate() {
                let t = &self.tracks[timing.kind as usize];
                trak(b, t, timing, i as u32 + 1, cfg, base, co64);
            }
        });
        out
    }
}

struct TrackTiming {
    kind: Kind,
    /// Media duration, timescale units.
    duration: u64,
    offset_ms: u64,
    duration_ms: u64,
}

// ---------------------------------------------------------------------------
// Boxes

fn boxed(out: &mut Vec<u8>, kind: &[u8; 4], f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(kind);
    f(out);
    let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn full(out: &mut Vec<u8>, kind: &[u8; 4], version: u8, flags: u32, f: impl FnOnce(&mut Vec<u8>)) {
    boxed(out, kind, |b| {
        b.extend_from_slice(&((u32::from(version) << 24) | (flags & 0x00ff_ffff)).to_be_bytes());
        f(b);
    });
}

fn u32s(out: &mut Vec<u8>, values: &[u32]) {
    for v in values {
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn matrix(out: &mut Vec<u8>) {
    u32s(out, &MATRIX);
}

/// creation/modification time (0), then timescale and duration (v0/v1).
fn times(out: &mut Vec<u8>, v1: bool, timescale: u32, duration: u64) {
    if v1 {
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&timescale.to_be_bytes());
        out.extend_from_slice(&duration.to_be_bytes());
    } else {
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&timescale.to_be_bytes());
        out.extend_from_slice(&(duration as u32).to_be_bytes());
    }
}

fn trak(
    out: &mut Vec<u8>,
    t: &TrackBuilder,
    timing: &TrackTiming,
    id: u32,
    cfg: &Configs,
    base: u64,
    co64: bool,
) {
    let video = t.kind == Kind::Video;
    let (width, height) = t
        .descs
        .first()
        .and_then(|d| cfg.video.get(*d as usize))
        .filter(|_| video)
        .map_or((0, 0), |c| (c.width, c.height));
    boxed(out, b"trak", |b| {
        let track_ms = timing.offset_ms + timing.duration_ms;
        let v1 = track_ms > u64::from(u32::MAX);
        full(b, b"tkhd", u8::from(v1), 3, |b| {
            if v1 {
                b.extend_from_slice(&[0; 16]);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(&track_ms.to_be_bytes());
            } else {
                b.extend_from_slice(&[0; 8]);
                b.extend_from_slice(&id.to_be_bytes());
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(&(track_ms as u32).to_be_bytes());
            }
            b.extend_from_slice(&[0; 8]);
            b.extend_from_slice(&[0; 4]); // layer, alternate_group
            b.extend_from_slice(&(if video { 0u16 } else { 0x0100 }).to_be_bytes());
            b.extend_from_slice(&[0; 2]);
            matrix(b);
            u32s(b, &[u32::from(width) << 16, u32::from(height) << 16]);
        });
        let first_cto = t.ctts.first().map_or(0, |c| c.1.max(0));
        if timing.offset_ms > 0 || first_cto > 0 {
            boxed(b, b"edts", |b| {
                let v1 = timing.offset_ms.max(timing.duration_ms) > u64::from(u32::MAX);
                full(b, b"elst", u8::from(v1), 0, |b| {
                    let mut entries = Vec::new();
                    if timing.offset_ms > 0 {
                        entries.push((timing.offset_ms, -1i64));
                    }
                    entries.push((timing.duration_ms, i64::from(first_cto)));
                    b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
                    for (duration, media_time) in entries {
                        if v1 {
                            b.extend_from_slice(&duration.to_be_bytes());
                            b.extend_from_slice(&media_time.to_be_bytes());
                        } else {
                            b.extend_from_slice(&(duration as u32).to_be_bytes());
                            b.extend_from_slice(&(media_time as i32).to_be_bytes());
                        }
                        b.extend_from_slice(&0x0001_0000u32.to_be_bytes());
                    }
                });
            });
        }
        boxed(b, b"mdia", |b| {
            let v1 = timing.duration > u64::from(u32::MAX);
            full(b, b"mdhd", u8::from(v1), 0, |b| {
                times(b, v1, t.timescale, timing.duration);
                b.extend_from_slice(&0x55c4u16.to_be_bytes()); // "und"
                b.extend_from_slice(&[0; 2]);
            });
            full(b, b"hdlr", 0, 0, |b| {
                b.extend_from_slice(&[0; 4]);
                b.extend_from_slice(if video { b"vide" } else { b"soun" });
                b.extend_from_slice(&[0; 12]);
                b.extend_from_slice(if video {
                    b"VideoHandler\0".as_slice()
                } else {
                    b"SoundHandler\0".as_slice()
                });
            });
            boxed(b, b"minf", |b| {
                if video {
                    full(b, b"vmhd", 0, 1, |b| b.extend_from_slice(&[0; 8]));
                } else {
                    full(b, b"smhd", 0, 0, |b| b.extend_from_slice(&[0; 4]));
                }
                boxed(b, b"dinf", |b| {
                    full(b, b"dref", 0, 0, |b| {
                        b.extend_from_slice(&1u32.to_be_bytes());
                        full(b, b"url ", 0, 1, |_| {});
                    });
                });
                stbl(b, t, timing, id, cfg, base, co64);
            });
        });
    });
}

fn stbl(
    out: &mut Vec<u8>,
    t: &TrackBuilder,
    timing: &TrackTiming,
    id: u32,
    cfg: &Configs,
    base: u64,
    co64: bool,
) {
    boxed(out, b"stbl", |b| {
        full(b, b"stsd", 0, 0, |b| {
            b.extend_from_slice(&(t.descs.len() as u32).to_be_bytes());
            for &d in &t.descs {
                match t.kind {
                    Kind::Video => {
                        if let Some(c) = cfg.video.get(d as usize) {
                            avc1(b, c);
                        }
                    }
                    Kind::Audio => mp4a(b, &cfg.audio(d), t, timing, id),
                }
            }
        });
        full(b, b"stts", 0, 0, |b| {
            b.extend_from_slice(&(t.stts.len() as u32).to_be_bytes());
            for (n, d) in &t.stts {
                u32s(b, &[*n, *d]);
            }
        });
        if t.ctts.iter().any(|c| c.1 != 0) {
            let signed = t.ctts.iter().any(|c| c.1 < 0);
            full(b, b"ctts", u8::from(signed), 0, |b| {
                b.extend_from_slice(&(t.ctts.len() as u32).to_be_bytes());
                for (n, c) in &t.ctts {
                    b.extend_from_slice(&n.to_be_bytes());
                    b.extend_from_slice(&c.to_be_bytes());
                }
            });
        }
        if t.kind == Kind::Video {
            full(b, b"stss", 0, 0, |b| {
                b.extend_from_slice(&(t.syncs.len() as u32).to_be_bytes());
                u32s(b, &t.syncs);
            });
        }
        full(b, b"stsc", 0, 0, |b| {
            let mut entries: Vec<[u32; 3]> = Vec::new();
            for (i, c) in t.chunks.iter().enumerate() {
                if entries
                    .last()
                    .is_none_or(|e| e[1] != c.samples || e[2] != c.desc)
                {
                    entries.push([i as u32 + 1, c.samples, c.desc]);
                }
            }
            b.extend_from_slice(&(entries.len() as u32).to_be_bytes());
            for e in &entries {
                u32s(b, e);
            }
        });
        full(b, b"stsz", 0, 0, |b| {
            u32s(b, &[0, t.count()]);
            u32s(b, &t.sizes);
        });
        if co64 {
            full(b, b"co64", 0, 0, |b| {
                b.extend_from_slice(&(t.chunks.len() as u32).to_be_bytes());
                for c in &t.chunks {
                    b.extend_from_slice(&(base + c.offset).to_be_bytes());
                }
            });
        } else {
            full(b, b"stco", 0, 0, |b| {
                b.extend_from_slice(&(t.chunks.len() as u32).to_be_bytes());
                for c in &t.chunks {
                    b.extend_from_slice(&((base + c.offset) as u32).to_be_bytes());
                }
            });
        }
    });
}

fn avc1(out: &mut Vec<u8>, c: &VideoConfig) {
    boxed(out, b"avc1", |b| {
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&1u16.to_be_bytes()); // data_reference_index
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&c.width.to_be_bytes());
        b.extend_from_slice(&c.height.to_be_bytes());
        u32s(b, &[0x0048_0000, 0x0048_0000, 0]); // 72 dpi, reserved
        b.extend_from_slice(&1u16.to_be_bytes()); // frame_count
        b.extend_from_slice(&[0; 32]); // compressorname
        b.extend_from_slice(&0x0018u16.to_be_bytes()); // depth
        b.extend_from_slice(&0xffffu16.to_be_bytes()); // pre_defined = -1
        boxed(b, b"avcC", |b| b.extend_from_slice(&c.avcc));
    });
}

fn mp4a(out: &mut Vec<u8>, c: &AudioConfig, t: &TrackBuilder, timing: &TrackTiming, id: u32) {
    let avg_bps = (t.bytes * 8 * u64::from(t.timescale))
        .checked_div(timing.duration)
        .unwrap_or(0);
    let max_bps = (t.max_second_bytes * 8).max(avg_bps);
    boxed(out, b"mp4a", |b| {
        b.extend_from_slice(&[0; 6]);
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&c.channels().to_be_bytes());
        b.extend_from_slice(&16u16.to_be_bytes()); // sample size
        b.extend_from_slice(&[0; 4]);
        let rate = c.rate();
        let rate_field = if rate <= 0xffff { rate << 16 } else { 0 };
        b.extend_from_slice(&rate_field.to_be_bytes());
        full(b, b"esds", 0, 0, |b| {
            let asc = c.asc();
            let mut dcd = vec![0x40, 0x15];
            dcd.extend_from_slice(&t.max_size.min(0xff_ffff).to_be_bytes()[1..]);
            u32s(
                &mut dcd,
                &[
                    u32::try_from(max_bps).unwrap_or(u32::MAX),
                    u32::try_from(avg_bps).unwrap_or(u32::MAX),
                ],
            );
            descriptor(&mut dcd, 0x05, &asc);
            let mut es = Vec::new();
            es.extend_from_slice(&(id as u16).to_be_bytes());
            es.push(0);
            descriptor(&mut es, 0x04, &dcd);
            descriptor(&mut es, 0x06, &[0x02]);
            descriptor(b, 0x03, &es);
        });
    });
}

/// An MPEG-4 descriptor (all of ours are under 128 bytes).
fn descriptor(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.push(body.len().min(0x7f) as u8);
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::aac::OpusToAac;
    use crate::media::ts::TsMuxer;
    use crate::publish::source::{
        AudioConfig as ToneConfig, AudioSource, VideoConfig as PictureConfig, VideoSource,
    };
    use std::sync::OnceLock;

    // ---- input: TS segments written by our own muxer from real media

    #[derive(Debug, Clone)]
    struct Spec {
        seconds: u64,
        fps: u64,
        /// Key frame every this many frames; segments are cut at key frames.
        key_every: u32,
        video: bool,
        audio: bool,
        channels: u8,
        /// PTS of the first video frame.
        start: u64,
        /// Video begins this many seconds in (audio from 0).
        video_from_s: u64,
        /// From this second on, pictures are 256x144 instead of 320x180.
        resize_at_s: Option<u64>,
    }

    impl Default for Spec {
        fn default() -> Self {
            Self {
                seconds: 8,
                fps: 15,
                key_every: 30,
                video: true,
                audio: true,
                channels: 2,
                start: 900_000,
                video_from_s: 0,
                resize_at_s: None,
            }
        }
    }

    enum Ev {
        Video { au: Vec<u8>, key: bool },
        Audio(Vec<u8>),
    }

    struct Input {
        segments: Vec<Vec<u8>>,
        /// Every video frame's PTS (in order) and key flag; AAC frame PTS.
        video: Vec<(u64, bool)>,
        audio: Vec<u64>,
    }

    impl Input {
        fn frame_ticks(&self) -> u64 {
            match self.video.as_slice() {
                [a, b, ..] => b.0 - a.0,
                _ => 6000,
            }
        }

        /// First sample to the end of the last, in seconds.
        fn duration_s(&self) -> f64 {
            let start = self
                .video
                .first()
                .map(|v| v.0)
                .into_iter()
                .chain(self.audio.first().copied())
                .min()
                .expect("media");
            let end = self
                .video
                .last()
                .map(|v| v.0 + self.frame_ticks())
                .into_iter()
                .chain(self.audio.last().map(|a| a + 1920))
                .max()
                .expect("media");
            (end - start) as f64 / 90_000.0
        }

        fn pushes(&self) -> Vec<(&[u8], bool)> {
            self.segments
                .iter()
                .map(|s| (s.as_slice(), false))
                .collect()
        }
    }

    fn picture_source(width: u32, height: u32, spec: &Spec) -> VideoSource {
        VideoSource::new(PictureConfig {
            width,
            height,
            fps: spec.fps as u32,
            bitrate_bps: 200_000,
            keyframe_interval_frames: spec.key_every,
            ..PictureConfig::default()
        })
        .expect("video source")
    }

    fn events(spec: &Spec) -> Vec<(u64, Ev)> {
        let mut ev = Vec::new();
        if spec.video {
            let mut src = picture_source(320, 180, spec);
            let mut resized = false;
            let first = spec.video_from_s * spec.fps;
            for i in first..spec.seconds * spec.fps {
                if spec.resize_at_s.is_some_and(|s| i >= s * spec.fps) && !resized {
                    resized = true;
                    src = picture_source(256, 144, spec);
                }
                let t = std::time::Duration::from_millis(i * 1000 / spec.fps);
                let f = src.next_frame(t).expect("frame");
                let pts = spec.start + i * 90_000 / spec.fps;
                ev.push((
                    pts,
                    Ev::Video {
                        au: f.data,
                        key: f.keyframe,
                    },
                ));
            }
        }
        if spec.audio {
            let mut tone = AudioSource::new(ToneConfig {
                channels: spec.channels,
                ..ToneConfig::default()
            })
            .expect("audio source");
            let mut aac = OpusToAac::new(spec.channels, 64_000).expect("aac");
            let start48 = spec.start * 48 / 90;
            let mut frames = Vec::new();
            for _ in 0..spec.seconds * 50 {
                let p = tone.next_frame().expect("opus");
                frames.extend(aac.push(&p.data, start48 + p.pts_48khz).expect("push"));
            }
            frames.extend(aac.finish().expect("finish"));
            for f in frames {
                ev.push((f.pts_90k, Ev::Audio(f.adts)));
            }
        }
        ev.sort_by_key(|(t, e)| (*t, matches!(e, Ev::Audio(_))));
        ev
    }

    /// Segments cut at video key frames, or every 2 s without video, each
    /// starting with PAT/PMT declaring what it holds.
    fn build(spec: &Spec) -> Input {
        let mut groups: Vec<Vec<(u64, Ev)>> = Vec::new();
        let mut seg_start = 0;
        for (t, e) in events(spec) {
            let cut = match &e {
                Ev::Video { key, .. } => *key,
                Ev::Audio(_) => {
                    let video_in_seg = groups
                        .last()
                        .is_some_and(|g| g.iter().any(|(_, e)| matches!(e, Ev::Video { .. })));
                    !video_in_seg && t >= seg_start + 180_000
                }
            };
            if cut || groups.is_empty() {
                groups.push(Vec::new());
                seg_start = t;
            }
            if let Some(g) = groups.last_mut() {
                g.push((t, e));
            }
        }
        let mut muxer = TsMuxer::new(spec.video, spec.audio);
        let mut input = Input {
            segments: Vec::new(),
            video: Vec::new(),
            audio: Vec::new(),
        };
        for g in groups {
            let has_video = g.iter().any(|(_, e)| matches!(e, Ev::Video { .. }));
            muxer.set_streams(has_video, spec.audio);
            let mut buf = Vec::new();
            muxer.write_tables(&mut buf);
            for (t, e) in g {
                match e {
                    Ev::Video { au, key } => {
                        muxer.write_video(&mut buf, t, t, key, &au);
                        input.video.push((t, key));
                    }
                    Ev::Audio(adts) => {
                        muxer.write_audio(&mut buf, t, &adts);
                        input.audio.push(t);
                    }
                }
            }
            input.segments.push(buf);
        }
        input
    }

    fn standard() -> &'static Input {
        static INPUT: OnceLock<Input> = OnceLock::new();
        INPUT.get_or_init(|| build(&Spec::default()))
    }

    // ---- checks

    fn ffprobe() -> Option<std::path::PathBuf> {
        let found = crate::media::ts::tests::tool("ffprobe");
        if found.is_none() {
            eprintln!("skipped: ffprobe not installed (KIROKU_REQUIRE_TOOLS=1 makes this fail)");
        }
        found
    }

    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(data: &[u8], tag: &str, ext: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::env::temp_dir()
                .join(format!("kiroku-mp4-{}-{tag}-{n}.{ext}", std::process::id()));
            std::fs::write(&path, data).expect("write temp file");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn run(tool: &std::path::Path, args: &[&str], file: &TempFile) -> (String, String) {
        let out = std::process::Command::new(tool)
            .args(args)
            .arg(&file.0)
            .output()
            .expect("tool runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{tool:?} failed: {stderr}");
        (stdout, stderr)
    }

    #[derive(Debug)]
    struct Probed {
        streams: Vec<serde_json::Value>,
        duration: f64,
        first_video_flags: Option<String>,
        video_pts: Vec<f64>,
    }

    impl Probed {
        fn stream(&self, kind: &str) -> Option<&serde_json::Value> {
            self.streams.iter().find(|s| s["codec_type"] == kind)
        }

        fn frames(&self, kind: &str) -> u64 {
            self.stream(kind)
                .and_then(|s| s["nb_read_frames"].as_str())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0)
        }

        fn start(&self, kind: &str) -> f64 {
            self.stream(kind)
                .and_then(|s| s["start_time"].as_str())
                .and_then(|n| n.parse().ok())
                .expect("start_time")
        }
    }

    /// ffprobe's view of a file, after checking that ffprobe and ffmpeg
    /// read and decode it without a word of complaint.
    fn probe(tool: &std::path::Path, data: &[u8], ext: &str) -> Probed {
        let file = TempFile::new(data, "probe", ext);
        let (json, err) = run(
            tool,
            &[
                "-v",
                "error",
                "-count_frames",
                "-show_entries",
                "stream=codec_type,codec_name,width,height,sample_rate,channels,nb_read_frames,start_time:format=duration",
                "-of",
                "json",
            ],
            &file,
        );
        assert!(err.is_empty(), "ffprobe complained: {err}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        let streams = v["streams"].as_array().cloned().unwrap_or_default();
        let duration = v["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .expect("duration");
        let mut first_video_flags = None;
        let mut video_pts = Vec::new();
        if streams.iter().any(|s| s["codec_type"] == "video") {
            let (csv, _) = run(
                tool,
                &[
                    "-v",
                    "error",
                    "-select_streams",
                    "v:0",
                    "-show_entries",
                    "packet=pts_time,flags",
                    "-of",
                    "csv=p=0",
                ],
                &file,
            );
            // (side data, such as new extradata, prints as empty lines)
            for line in csv.lines().filter(|l| !l.is_empty()) {
                let mut parts = line.split(',');
                let pts: f64 = parts.next().and_then(|p| p.parse().ok()).expect(line);
                let flags = parts.next().unwrap_or("").to_owned();
                first_video_flags.get_or_insert(flags);
                video_pts.push(pts);
            }
        }
        let ffmpeg = tool.with_file_name("ffmpeg");
        if ffmpeg.is_file() {
            let out = std::process::Command::new(ffmpeg)
                .args(["-v", "error", "-i"])
                .arg(&file.0)
                .args(["-f", "null", "-"])
                .output()
                .expect("ffmpeg runs");
            assert!(
                out.status.success() && out.stderr.is_empty(),
                "ffmpeg decoding: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Probed {
            streams,
            duration,
            first_video_flags,
            video_pts,
        }
    }

    /// The MD5 of every decoded frame of one stream (`v` or `a`).
    fn decoded_md5s(tool: &std::path::Path, data: &[u8], ext: &str, stream: &str) -> Vec<String> {
        let file = TempFile::new(data, "md5", ext);
        let out = std::process::Command::new(tool.with_file_name("ffmpeg"))
            .args(["-v", "error", "-i"])
            .arg(&file.0)
            .args(["-map", &format!("0:{stream}"), "-f", "framemd5", "-"])
            .output()
            .expect("ffmpeg runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit(',').next().map(|m| m.trim().to_owned()))
            .collect()
    }

    /// Top-level boxes: (type, size).
    fn top_boxes(d: &[u8]) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        let mut pos = 0usize;
        while pos + 8 <= d.len() {
            let mut size = u64::from(u32::from_be_bytes([
                d[pos],
                d[pos + 1],
                d[pos + 2],
                d[pos + 3],
            ]));
            if size == 1 {
                let b: [u8; 8] = d[pos + 8..pos + 16].try_into().expect("largesize");
                size = u64::from_be_bytes(b);
            }
            out.push((
                String::from_utf8_lossy(&d[pos + 4..pos + 8]).into_owned(),
                size,
            ));
            assert!(size >= 8, "box size");
            pos += size as usize;
        }
        assert_eq!(pos, d.len(), "boxes cover the file exactly");
        out
    }

    /// Every box of `kind` anywhere under `moov` (bodies).
    fn find_boxes<'a>(d: &'a [u8], kind: &[u8; 4], out: &mut Vec<&'a [u8]>) {
        const CONTAINERS: [&[u8; 4]; 8] = [
            b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta",
        ];
        let mut pos = 0usize;
        while pos + 8 <= d.len() {
            let size = u32::from_be_bytes([d[pos], d[pos + 1], d[pos + 2], d[pos + 3]]) as usize;
            if size < 8 || pos + size > d.len() {
                return;
            }
            let t = &d[pos + 4..pos + 8];
            let body = &d[pos + 8..pos + size];
            if t == kind {
                out.push(body);
            }
            if CONTAINERS.iter().any(|c| c.as_slice() == t) {
                find_boxes(body, kind, out);
            }
            if t == b"mdat" {
                return;
            }
            pos += size;
        }
    }

    fn boxes<'a>(d: &'a [u8], kind: &[u8; 4]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        find_boxes(d, kind, &mut out);
        out
    }

    fn assert_faststart(d: &[u8]) {
        let kinds: Vec<String> = top_boxes(d).into_iter().map(|b| b.0).collect();
        assert_eq!(kinds, ["ftyp", "moov", "mdat"], "faststart layout");
    }

    fn limits(max_duration_ms: u64, max_bytes: u64) -> SplitLimits {
        SplitLimits {
            max_duration_ms,
            max_bytes,
        }
    }

    // ---- tests

    #[test]
    fn limits_follow_the_spec() {
        assert_eq!(
            SplitLimits::default(),
            limits(24 * 3_600_000, 2_000_000_000)
        );
        assert_eq!(
            SplitLimits::from_max_media_file_minutes(0),
            SplitLimits::default()
        );
        assert_eq!(
            SplitLimits::from_max_media_file_minutes(90).max_duration_ms,
            90 * 60_000
        );
        assert_eq!(unwrap33(WRAP + 10, WRAP - 5), WRAP - 5 + WRAP - WRAP);
        assert_eq!(unwrap33(2 * WRAP - 10, 5), 2 * WRAP + 5);
        assert_eq!(unwrap33(2 * WRAP + 5, WRAP - 10), 2 * WRAP - 10);
    }

    #[test]
    fn an_av_recording_becomes_one_faststart_mp4() {
        let input = standard();
        let done = pack(input.pushes(), SplitLimits::default(), Container::Mp4);
        assert_eq!(done.stats.errors, 0, "{:?}", done.stats.first_errors);
        assert_eq!(done.files.len(), 1);
        let f = &done.files[0];
        assert_eq!((f.index, f.has_video, f.has_audio), (0, true, true));
        assert_eq!(f.video_frames, input.video.len() as u64);
        assert_eq!(f.audio_frames, input.audio.len() as u64);
        assert_faststart(&f.data);
        assert_eq!(boxes(&f.data, b"stco").len(), 2);
        assert!(boxes(&f.data, b"ctts").is_empty(), "PTS = DTS: no ctts");
        // The first video chunk starts with the IDR picture, length-prefixed.
        let stco = boxes(&f.data, b"stco")[0];
        let off = u32::from_be_bytes(stco[8..12].try_into().expect("offset")) as usize;
        let nal_len = u32::from_be_bytes(f.data[off..off + 4].try_into().expect("len")) as usize;
        assert!(nal_len > 0 && off + 4 + nal_len <= f.data.len());
        assert_eq!(f.data[off + 4] & 0x1f, h264::NAL_IDR);
        let frame_s = input.frame_ticks() as f64 / 90_000.0;
        assert!(
            (f.duration_ms as f64 / 1000.0 - input.duration_s()).abs() <= frame_s,
            "{} ms vs {} s",
            f.duration_ms,
            input.duration_s()
        );
        let Some(tool) = ffprobe() else {
            return;
        };
        let p = probe(&tool, &f.data, "mp4");
        let v = p.stream("video").expect("video stream");
        let a = p.stream("audio").expect("audio stream");
        assert_eq!(v["codec_name"], "h264");
        assert_eq!(
            (v["width"].as_u64(), v["height"].as_u64()),
            (Some(320), Some(180))
        );
        assert_eq!(a["codec_name"], "aac");
        assert_eq!(a["sample_rate"], "48000");
        assert_eq!(a["channels"].as_u64(), Some(2));
        assert_eq!(p.frames("video"), input.video.len() as u64);
        assert_eq!(p.frames("audio"), input.audio.len() as u64);
        assert!(
            (p.duration - input.duration_s()).abs() <= frame_s,
            "ffprobe {} s vs input {} s",
            p.duration,
            input.duration_s()
        );
        assert!(p
            .first_video_flags
            .as_deref()
            .is_some_and(|f| f.starts_with('K')));
        // Audio starts one AAC priming delay before video, as in the TS.
        assert!((p.start("video") - 1024.0 / 48_000.0).abs() < 0.002);
        assert!(p.start("audio").abs() < 0.001);
        // Every picture and every sound decodes exactly as from the TS.
        let ts: Vec<u8> = input.segments.concat();
        for stream in ["v", "a"] {
            let from_ts = decoded_md5s(&tool, &ts, "ts", stream);
            assert_eq!(
                from_ts.len(),
                p.frames(if stream == "v" { "video" } else { "audio" }) as usize
            );
            assert_eq!(
                decoded_md5s(&tool, &f.data, "mp4", stream),
                from_ts,
                "{stream}"
            );
        }
    }

    #[test]
    fn splits_at_key_frames_within_the_duration_limit() {
        let input = build(&Spec {
            key_every: 15,
            ..Spec::default()
        });
        let limit_ms = 2_500;
        let done = pack(input.pushes(), limits(limit_ms, u64::MAX), Container::Mp4);
        assert_eq!(done.stats.errors, 0, "{:?}", done.stats.first_errors);
        let indexes: Vec<u32> = done.files.iter().map(|f| f.index).collect();
        assert_eq!(indexes, [1, 2, 3, 4], "2 s files from 1 s key-frame groups");
        let video: u64 = done.files.iter().map(|f| f.video_frames).sum();
        let audio: u64 = done.files.iter().map(|f| f.audio_frames).sum();
        assert_eq!(
            (video, audio),
            (input.video.len() as u64, input.audio.len() as u64)
        );
        for f in &done.files {
            assert!(f.duration_ms <= limit_ms, "{}", f.duration_ms);
            assert_faststart(&f.data);
        }
        assert_eq!(
            done.files.iter().map(|f| f.start_ms).collect::<Vec<_>>(),
            [0, 2021, 4021, 6021],
            "cut at the key frames (audio starts 21 ms earlier)"
        );
        let Some(tool) = ffprobe() else {
            return;
        };
        let (mut v, mut a) = (0, 0);
        for f in &done.files {
            let p = probe(&tool, &f.data, "mp4");
            assert!(p.duration <= limit_ms as f64 / 1000.0, "{}", p.duration);
            assert!(
                p.first_video_flags
                    .as_deref()
                    .is_some_and(|f| f.starts_with('K')),
                "file {} starts with a key frame",
                f.index
            );
            v += p.frames("video");
            a += p.frames("audio");
        }
        assert_eq!((v, a), (input.video.len() as u64, input.audio.len() as u64));
    }

    #[test]
    fn splits_by_size() {
        let input = build(&Spec {
            key_every: 15,
            ..Spec::default()
        });
        let whole = pack(input.pushes(), SplitLimits::default(), Container::Mp4);
        let total = whole.files[0].data.len() as u64;
        let max = total / 3;
        let done = pack(input.pushes(), limits(u64::MAX, max), Container::Mp4);
        assert!(done.files.len() >= 3, "{} files", done.files.len());
        assert_eq!(done.stats.oversize_files, 0);
        for f in &done.files {
            assert!(f.data.len() as u64 <= max, "{} > {max}", f.data.len());
        }
        let video: u64 = done.files.iter().map(|f| f.video_frames).sum();
        assert_eq!(video, input.video.len() as u64);
        // A group larger than the limit gets a file of its own.
        let tiny = pack(input.pushes(), limits(u64::MAX, 1000), Container::Mp4);
        // (and the 21 ms of audio before the first key frame one more)
        assert_eq!(tiny.files.len(), 9, "one file per 1 s group");
        assert!(tiny.stats.oversize_files >= 8);
        let video: u64 = tiny.files.iter().map(|f| f.video_frames).sum();
        assert_eq!(video, input.video.len() as u64);
    }

    #[test]
    fn audio_only_as_m4a_and_as_adts() {
        let input = build(&Spec {
            video: false,
            channels: 1,
            ..Spec::default()
        });
        assert!(input.segments.len() >= 4);
        let m4a = pack(input.pushes(), SplitLimits::default(), Container::AudioMp4);
        assert_eq!(m4a.stats.errors, 0, "{:?}", m4a.stats.first_errors);
        assert_eq!(m4a.files.len(), 1);
        let f = &m4a.files[0];
        assert!(!f.has_video && f.has_audio);
        assert_eq!(&f.data[8..12], b"M4A ");
        assert_faststart(&f.data);
        // Raw ADTS: the input's frames, back to back (the header rebuilt).
        let adts = pack_aac(input.pushes(), SplitLimits::default());
        assert_eq!(adts.files.len(), 1);
        let mut expected = Vec::new();
        for (seg, _) in input.pushes() {
            let mut d = Demuxer::new();
            for item in d.segment(seg, 0, &mut PackStats::default()) {
                if let Demuxed::Pes(p) = item {
                    expected.extend_from_slice(&p.payload);
                }
            }
        }
        assert_eq!(adts.files[0].data, expected);
        // Split audio-only at any frame: exactly at the limit.
        let split = pack(input.pushes(), limits(3_000, u64::MAX), Container::AudioMp4);
        assert_eq!(split.files.len(), 3);
        assert!(split.files.iter().all(|f| f.duration_ms <= 3_000));
        let frames: u64 = split.files.iter().map(|f| f.audio_frames).sum();
        assert_eq!(frames, input.audio.len() as u64);
        // A/V input into an audio-only container keeps only the audio.
        let av = pack(
            standard().pushes(),
            SplitLimits::default(),
            Container::AudioMp4,
        );
        assert!(av.files.iter().all(|f| !f.has_video && f.has_audio));
        let Some(tool) = ffprobe() else {
            return;
        };
        for (data, ext) in [(&f.data, "m4a"), (&adts.files[0].data, "aac")] {
            let p = probe(&tool, data, ext);
            assert_eq!(p.streams.len(), 1);
            let a = p.stream("audio").expect("audio");
            assert_eq!(a["codec_name"], "aac");
            assert_eq!(a["channels"].as_u64(), Some(1));
            assert_eq!(p.frames("audio"), input.audio.len() as u64, "{ext}");
            assert!(
                (p.duration - input.duration_s()).abs() < 0.05,
                "{ext}: {}",
                p.duration
            );
        }
        for f in &split.files {
            let p = probe(&tool, &f.data, "m4a");
            assert!(p.duration <= 3.0, "{}", p.duration);
        }
    }

    #[test]
    fn damaged_segments_are_counted_and_skipped() {
        let input = standard();
        let mut segs: Vec<Vec<u8>> = input.segments.clone();
        // A 21 ms audio-only segment (AAC priming), then 2 s A/V segments.
        assert_eq!(segs.len(), 5);
        // Segment 2 loses its second half, mid-packet.
        let half = segs[2].len() / 2 + 77;
        segs[2].truncate(half);
        // Segment 3 loses a packet's sync byte mid-way (and so that PES).
        let at = (segs[3].len() / 188 / 2) * 188;
        segs[3][at] = 0x00;
        // Garbage between segments 3 and 4.
        let garbage: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        segs.insert(4, garbage);
        let pushes: Vec<(&[u8], bool)> = segs.iter().map(|s| (s.as_slice(), false)).collect();
        let done = pack(pushes, SplitLimits::default(), Container::Mp4);
        let s = &done.stats;
        assert!(s.errors >= 3, "{s:?}");
        assert!(s
            .first_errors
            .iter()
            .any(|e| matches!(e, PackError::PartialPacket { segment: 2, .. })));
        assert!(s
            .first_errors
            .iter()
            .any(|e| matches!(e, PackError::LostSync { segment: 3, .. })));
        assert!(s
            .first_errors
            .iter()
            .any(|e| matches!(e, PackError::NotTs { segment: 4 })));
        assert!(s.dropped_video_frames > 0);
        assert_eq!(done.files.len(), 1);
        let f = &done.files[0];
        assert_eq!(f.video_frames, s.video_frames);
        assert!(
            f.video_frames >= 60,
            "segments 1 and 5 are whole: {}",
            f.video_frames
        );
        assert!(f.video_frames < input.video.len() as u64);
        let Some(tool) = ffprobe() else {
            return;
        };
        // What is written decodes without errors.
        let p = probe(&tool, &f.data, "mp4");
        assert_eq!(p.frames("video"), f.video_frames);
        assert_eq!(p.frames("audio"), f.audio_frames);
    }

    #[test]
    fn mangled_input_never_panics() {
        let small = build(&Spec {
            seconds: 2,
            key_every: 10,
            ..Spec::default()
        });
        let seg = &small.segments[0];
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for round in 0..1000 {
            let mut pushes = Vec::new();
            for s in &small.segments {
                let mut s = s.clone();
                match round % 4 {
                    0 => {
                        for _ in 0..1 + next() % 20 {
                            let i = (next() as usize) % s.len();
                            s[i] = next() as u8;
                        }
                    }
                    1 => s.truncate((next() as usize) % s.len()),
                    2 => {
                        let i = (next() as usize) % s.len();
                        let n = (next() as usize) % 300;
                        s.splice(i..i, (0..n).map(|_| next() as u8));
                    }
                    _ => {
                        let i = (next() as usize) % s.len();
                        let n = ((next() as usize) % 2000).min(s.len() - i);
                        s.drain(i..i + n);
                    }
                }
                pushes.push((s, next() % 5 == 0));
            }
            let lim = limits(1 + next() % 3000, 1 + next() % 200_000);
            let container = [Container::Mp4, Container::AudioMp4, Container::Adts][round % 3];
            let done = pack(
                pushes.iter().map(|(s, d)| (s.as_slice(), *d)),
                lim,
                container,
            );
            for f in done.files.iter().filter(|_| container != Container::Adts) {
                top_boxes(&f.data);
            }
        }
        for cut in (0..seg.len()).step_by(61) {
            let done = pack(
                [(&seg[..cut], false)],
                SplitLimits::default(),
                Container::Mp4,
            );
            for f in &done.files {
                assert_faststart(&f.data);
            }
        }
        assert!(
            pack([(&[][..], false)], SplitLimits::default(), Container::Mp4)
                .files
                .is_empty()
        );
    }

    #[test]
    fn gaps_and_late_video_keep_audio_and_video_aligned() {
        let input = standard();
        // Segment 2 (2..4 s) is missing; segment 3 follows a discontinuity.
        let pushes: Vec<(&[u8], bool)> = input
            .segments
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(i, s)| (s.as_slice(), i == 3))
            .collect();
        let done = pack(pushes, SplitLimits::default(), Container::Mp4);
        assert_eq!(done.stats.errors, 0, "{:?}", done.stats.first_errors);
        let f = &done.files[0];
        assert_eq!(f.video_frames, 90);
        let frame_s = input.frame_ticks() as f64 / 90_000.0;
        assert!((f.duration_ms as f64 / 1000.0 - input.duration_s()).abs() <= frame_s);
        // Video starts 2 s after audio.
        let late = build(&Spec {
            video_from_s: 2,
            ..Spec::default()
        });
        let late_done = pack(late.pushes(), SplitLimits::default(), Container::Mp4);
        assert_eq!(
            late_done.stats.errors, 0,
            "{:?}",
            late_done.stats.first_errors
        );
        assert_eq!(late_done.files.len(), 1);
        assert_eq!(
            boxes(&late_done.files[0].data, b"elst").len(),
            1,
            "video's empty edit"
        );
        let Some(tool) = ffprobe() else {
            return;
        };
        let p = probe(&tool, &f.data, "mp4");
        let gap = p
            .video_pts
            .windows(2)
            .map(|w| w[1] - w[0])
            .fold(0.0f64, f64::max);
        assert!(
            (gap - 2.0 - frame_s).abs() < 0.01,
            "the 2 s gap is kept: {gap}"
        );
        assert!((p.duration - input.duration_s()).abs() <= frame_s);
        let p = probe(&tool, &late_done.files[0].data, "mp4");
        assert!(
            (p.start("video") - 2.0 - 1024.0 / 48_000.0).abs() < 0.002,
            "{p:?}"
        );
        assert!(p.start("audio").abs() < 0.001);
        assert_eq!(p.frames("video"), late.video.len() as u64);
    }

    #[test]
    fn a_camera_pause_lets_audio_cut_files() {
        // Video 0..3 s and from 18 s on (key frames every 2 s), audio
        // throughout; files of at most 5 s.
        let spec = Spec {
            seconds: 24,
            ..Spec::default()
        };
        let mut video = Vec::new();
        let mut muxer = TsMuxer::new(true, true);
        let mut segments = Vec::new();
        let mut buf = Vec::new();
        let mut audio_frames = 0u64;
        let mut seg_start = 0;
        for (t, e) in events(&spec) {
            let rel = t.saturating_sub(spec.start);
            if matches!(e, Ev::Video { .. }) && (3 * 90_000..18 * 90_000).contains(&rel) {
                continue;
            }
            let cut = matches!(e, Ev::Video { key: true, .. }) || t >= seg_start + 180_000;
            if cut || buf.is_empty() {
                if !buf.is_empty() {
                    segments.push(std::mem::take(&mut buf));
                }
                seg_start = t;
                muxer.write_tables(&mut buf);
            }
            match e {
                Ev::Video { au, key } => {
                    muxer.write_video(&mut buf, t, t, key, &au);
                    video.push(key);
                }
                Ev::Audio(adts) => {
                    muxer.write_audio(&mut buf, t, &adts);
                    audio_frames += 1;
                }
            }
        }
        segments.push(buf);
        let done = pack(
            segments.iter().map(|s| (s.as_slice(), false)),
            limits(5_000, u64::MAX),
            Container::Mp4,
        );
        assert_eq!(done.stats.errors, 0, "{:?}", done.stats.first_errors);
        assert_eq!(done.stats.oversize_files, 0);
        assert!(done.files.len() >= 5, "{}", done.files.len());
        let v: u64 = done.files.iter().map(|f| f.video_frames).sum();
        let a: u64 = done.files.iter().map(|f| f.audio_frames).sum();
        assert_eq!((v, a), (video.len() as u64, audio_frames));
        assert!(
            done.files.iter().any(|f| !f.has_video),
            "audio-only files in the pause"
        );
        for f in &done.files {
            assert!(f.duration_ms <= 5_000, "{}", f.duration_ms);
        }
        let Some(tool) = ffprobe() else {
            return;
        };
        for f in done.files.iter().filter(|f| f.has_video) {
            let p = probe(&tool, &f.data, "mp4");
            assert!(p.duration <= 5.0, "{}", p.duration);
            assert!(p
                .first_video_flags
                .as_deref()
                .is_some_and(|f| f.starts_with('K')));
        }
    }

    #[test]
    fn a_resolution_change_adds_a_sample_description() {
        let input = build(&Spec {
            resize_at_s: Some(4),
            ..Spec::default()
        });
        let done = pack(input.pushes(), SplitLimits::default(), Container::Mp4);
        assert_eq!(done.stats.errors, 0, "{:?}", done.stats.first_errors);
        let f = &done.files[0];
        let stsd = boxes(&f.data, b"stsd");
        assert_eq!(
            u32::from_be_bytes(stsd[0][4..8].try_into().expect("count")),
            2
        );
        let moov = boxes(&f.data, b"moov")[0];
        assert_eq!(moov.windows(4).filter(|w| w == b"avcC").count(), 2);
        let Some(tool) = ffprobe() else {
            return;
        };
        let p = probe(&tool, &f.data, "mp4");
        assert_eq!(p.frames("video"), input.video.len() as u64);
    }

    #[test]
    fn timestamps_wrap_and_co64_offsets() {
        let input = build(&Spec {
            start: WRAP - 3 * 90_000,
            seconds: 6,
            ..Spec::default()
        });
        let mut packer = Mp4Packer::new(SplitLimits::default(), Container::Mp4).with_co64_above(0);
        let mut files = Vec::new();
        for (s, d) in input.pushes() {
            files.extend(packer.push_segment(s, d));
        }
        let done = packer.finish();
        files.extend(done.files);
        assert_eq!(done.stats.errors, 0, "{:?}", done.stats.first_errors);
        assert_eq!(files.len(), 1);
        let f = &files[0];
        assert_eq!(f.video_frames, 90);
        assert!(boxes(&f.data, b"stco").is_empty());
        assert_eq!(boxes(&f.data, b"co64").len(), 2);
        let frame_s = input.frame_ticks() as f64 / 90_000.0;
        assert!((f.duration_ms as f64 / 1000.0 - input.duration_s()).abs() <= frame_s);
        let Some(tool) = ffprobe() else {
            return;
        };
        let p = probe(&tool, &f.data, "mp4");
        assert_eq!(p.frames("video"), 90);
        assert_eq!(p.frames("audio"), input.audio.len() as u64);
        assert!((p.duration - input.duration_s()).abs() <= frame_s);
    }

    #[test]
    fn separate_audio_and_video_playlists_merge_in_start_order() {
        let spec = Spec::default();
        let av = standard();
        let video = build(&Spec {
            audio: false,
            ..spec.clone()
        });
        let audio = build(&Spec {
            video: false,
            ..spec
        });
        let start = |seg: &[u8]| {
            let mut d = Demuxer::new();
            d.segment(seg, 0, &mut PackStats::default())
                .into_iter()
                .find_map(|i| match i {
                    Demuxed::Pes(p) => Some(p.dts),
                    Demuxed::Lost(_) => None,
                })
                .expect("a PES")
        };
        let mut all: Vec<&Vec<u8>> = video.segments.iter().chain(&audio.segments).collect();
        all.sort_by_key(|s| start(s));
        let done = pack(
            all.iter().map(|s| (s.as_slice(), false)),
            SplitLimits::default(),
            Container::Mp4,
        );
        assert_eq!(done.stats.errors, 0, "{:?}", done.stats.first_errors);
        assert_eq!(done.files.len(), 1);
        let f = &done.files[0];
        assert_eq!(f.video_frames, av.video.len() as u64);
        assert_eq!(f.audio_frames, av.audio.len() as u64);
        let merged = pack(av.pushes(), SplitLimits::default(), Container::Mp4);
        assert_eq!(f.duration_ms, merged.files[0].duration_ms);
    }
}
