//! The end-of-task conversion: a task's recorded HLS (playlists and TS
//! segments in one folder) becomes MP4 or raw AAC files (`OutputFormat`
//! hls+mp4 / mp4 / hls+aac / aac, and the MP4 the VOD store takes), with
//! [`crate::media::mp4::Mp4Packer`] doing the packing.
//!
//! Two parts: [`plan`] is pure (file names and parsed playlists in, jobs
//! out) and [`convert_folder`] is the thin IO edge around it.
//!
//! Rules:
//! - **Which playlists.** Only names of this task (spec §3a, stem
//!   `<SdkAppId>_<RoomId>` from the request), with or without the
//!   `ha<n>_` prefix of a resumed task; other `.m3u8` files are ignored
//!   (listed in the report). Single-stream mode reads only the per-user
//!   names, mixed mode only `<SdkAppId>_<RoomId>.m3u8`.
//! - **Jobs.** Single-stream: one job per user and `<MediaId>`: `main`
//!   takes the user's main video, audio and (AvMerge = 1) `av`
//!   playlists, `aux` the aux video ones, every HA generation of them.
//!   Mixed: one job. With the AAC format only playlists that carry audio
//!   (`audio`, `av`, mixed) count, so an aux video makes no job; the
//!   packer keeps only the audio of A/V segments.
//! - **Order.** A job's segments are pushed in order of their start, the
//!   `<UTC>` in their names (a name without one takes its predecessor's in
//!   the same playlist, or the playlist's `#EXT-X-TRTC-START-REC-TIME`),
//!   ties in playlist order. This interleaves separate audio and video
//!   playlists (the packer holds samples until no earlier segment can
//!   come) and puts `ha<n>_` playlists after what came before them.
//! - **Discontinuities are not passed to the packer.** kiroku writes every
//!   segment of a task on one PTS timeline (the task's epoch, kept across
//!   HA restarts), so a publisher who leaves and returns, or a resumed
//!   task, only jumps forward, which the packer keeps as a gap with audio
//!   and video aligned. The flag would only make a difference when time
//!   goes back a little (a returning publisher's re-estimated clock
//!   offset): the packer would then shift the whole timeline by the
//!   overlap of the track in that one segment, and with separate audio
//!   and video playlists the other track's overlap may differ, so the
//!   tracks could drift apart. Without the flag the overlapping samples
//!   are dropped and both tracks stay on the task timeline; a jump back of
//!   over 1 s (someone else's HLS whose timeline restarts) is still
//!   rebased by the packer. [`PlannedSegment::discontinuity`] keeps the
//!   playlist's flag for whoever wants it.
//! - **Containers.** MP4 format: [`Container::Mp4`] when the job has
//!   video (a `video` playlist, or an `av`/mixed playlist with
//!   `#EXT-X-TRTC-VIDEO-METADATA`, or without TRTC tags at all, where we
//!   cannot tell), else [`Container::AudioMp4`]. AAC format:
//!   [`Container::Adts`].
//! - **Names.** MP4: `Naming::single_mp4(user, media, index)` /
//!   `Naming::mixed_mp4(index)`, never with `ha<n>_` (the file covers the
//!   whole recording); `_<Index>` only when split. AAC, which the spec
//!   does not name (kiroku's choice): the same stem with `.aac`, e.g.
//!   `<SdkAppId>_<RoomId>__UserId_s_<UserId>__UserId_e_main.aac`,
//!   `..._main_2.aac`, mixed `<SdkAppId>_<RoomId>.aac`.
//! - **Damage is reported, never fatal.** A playlist that does not parse
//!   is skipped; a segment missing from the folder or unreadable is
//!   skipped; damaged TS is the packer's (counted in `pack_errors`). Each
//!   is a line in [`ConvertReport::failed`].
//! - **Memory.** One segment is read at a time; the packer's payload is
//!   spilled to a scratch file as it comes ([`crate::output::spill`],
//!   in [`ConvertRequest::scratch`]) and a file goes to the sink as its
//!   header and that scratch file as soon as the packer closes it, so a
//!   job holds a few MB and one key-frame interval, whatever the file's
//!   size (up to the split size, 2 GB).
//!
//! [`ConvertReport::status`] is callback 310's `Status`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::domain::params::RoomId;
use crate::hls::naming::{
    decode_id, parse_user_stream, segment_start_ms, Media, Naming, TrackType,
};
use crate::hls::playlist::Playlist;
use crate::media::mp4::{Container, Mp4Packer, SplitLimits};
use crate::output::spill::{Spill, SpilledFile};

/// Problem lines kept in a report; the rest are only counted.
const MAX_PROBLEMS: usize = 64;

/// What the recording becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvertFormat {
    /// MP4 (audio-only recordings: M4A-branded `.mp4`).
    Mp4,
    /// Raw ADTS `.aac`, audio only.
    Aac,
}

/// One task's conversion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertRequest {
    pub format: ConvertFormat,
    /// `SplitLimits::from_max_media_file_minutes(MaxMediaFileDuration)`.
    pub limits: SplitLimits,
    /// `RecordMode::Mixed`.
    pub mixed: bool,
    pub sdk_app_id: u32,
    pub room: RoomId,
    /// Where payloads are spilled while packing (`data_dir/packing`).
    pub scratch: PathBuf,
}

impl ConvertRequest {
    /// Output names never carry `ha<n>_`, whatever generation converts.
    fn naming(&self) -> Naming {
        Naming::new(&[], "task", self.sdk_app_id, &self.room, 0)
    }
}

/// What a playlist's name says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Mixed,
    Single {
        /// Decoded.
        user_id: String,
        media: Media,
        track_type: TrackType,
    },
}

/// A playlist name of this task: its HA generation (`ha<n>_`, 0 without)
/// and what it holds. `None` for any other name.
pub fn classify(name: &str, naming: &Naming) -> Option<(u32, Source)> {
    let (generation, rest) = match name.strip_prefix("ha").and_then(|r| r.split_once('_')) {
        Some((n, rest)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (n.parse().ok()?, rest)
        }
        _ => (0, name),
    };
    let mixed = naming.mixed_playlist();
    if rest == mixed {
        return Some((generation, Source::Mixed));
    }
    let stem = mixed.strip_suffix(".m3u8")?;
    let (user, media, track_type, tail) =
        parse_user_stream(rest.strip_prefix(stem)?.strip_suffix(".m3u8")?)?;
    if !tail.is_empty() {
        return None;
    }
    Some((
        generation,
        Source::Single {
            user_id: decode_id(user)?,
            media,
            track_type,
        },
    ))
}

/// A parsed playlist and its file name.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaylistFile {
    pub name: String,
    pub playlist: Playlist,
}

/// One segment of a job, in push order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedSegment {
    pub file_name: String,
    /// From the name's `<UTC>` (Unix ms), when it has one.
    pub start_ms: Option<u64>,
    /// The playlist's `#EXT-X-DISCONTINUITY` (not given to the packer,
    /// see the module doc).
    pub discontinuity: bool,
    /// HA generation of its playlist.
    pub generation: u32,
}

/// One output: a user's main or aux recording, or the mixed one.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Decoded; empty for mixed.
    pub user_id: String,
    /// Mixed: [`Media::Main`].
    pub media: Media,
    pub mixed: bool,
    pub container: Container,
    /// The playlists it reads, by generation.
    pub playlists: Vec<String>,
    pub segments: Vec<PlannedSegment>,
}

impl Job {
    /// The output file name for a packed file's index (0 = not split).
    pub fn output_name(&self, naming: &Naming, index: u32) -> String {
        let mp4 = if self.mixed {
            naming.mixed_mp4(index)
        } else {
            naming.single_mp4(&self.user_id, self.media, index)
        };
        match self.container {
            Container::Adts => match mp4.strip_suffix(".mp4") {
                Some(stem) => format!("{stem}.aac"),
                None => mp4,
            },
            Container::Mp4 | Container::AudioMp4 => mp4,
        }
    }
}

/// The jobs of a folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// In order of user id, main before aux.
    pub jobs: Vec<Job>,
    /// Playlists that are not this task's (or not of its mode).
    pub ignored: Vec<String>,
    /// Segments named by a playlist but not in the folder.
    pub missing: Vec<String>,
}

/// Groups a folder's playlists into output jobs. `files` is the folder's
/// listing (segments not in it are `missing`).
pub fn plan(request: &ConvertRequest, files: &[String], playlists: &[PlaylistFile]) -> Plan {
    let naming = request.naming();
    let present: HashSet<&str> = files.iter().map(String::as_str).collect();
    let mut out = Plan::default();
    // (user, media) → (has video, sources: (generation, rank, playlist)).
    type Sources<'a> = Vec<(u32, u8, &'a PlaylistFile)>;
    let mut groups: BTreeMap<(String, u8), (bool, Sources<'_>)> = BTreeMap::new();
    for pf in playlists {
        let Some((generation, source)) = classify(&pf.name, &naming) else {
            out.ignored.push(pf.name.clone());
            continue;
        };
        // Whether a stream that may hold video does: our playlists say so
        // with VIDEO-METADATA; without TRTC tags we cannot tell, so MP4.
        let video_tag = pf.playlist.video_size.is_some() || pf.playlist.start_rec_time_ms == 0;
        let (key, rank, video) = match (&source, request.mixed) {
            (Source::Mixed, true) => ((String::new(), 0), 0, video_tag),
            (
                Source::Single {
                    user_id,
                    media,
                    track_type,
                },
                false,
            ) => {
                let (rank, video) = match track_type {
                    TrackType::Audio => (0, false),
                    TrackType::Video => (1, true),
                    TrackType::AudioVideo => (2, video_tag),
                };
                let media_rank = match media {
                    Media::Main => 0,
                    Media::Aux => 1,
                };
                ((user_id.clone(), media_rank), rank, video)
            }
            _ => {
                out.ignored.push(pf.name.clone());
                continue;
            }
        };
        // AAC: only what carries audio.
        if request.format == ConvertFormat::Aac
            && matches!(
                source,
                Source::Single {
                    track_type: TrackType::Video,
                    ..
                }
            )
        {
            continue;
        }
        let g = groups.entry(key).or_insert((false, Vec::new()));
        g.0 |= video;
        g.1.push((generation, rank, pf));
    }
    for ((user_id, media_rank), (has_video, mut sources)) in groups {
        sources.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
        let mut keyed = Vec::new();
        let mut seen = HashSet::new();
        for (source_order, (generation, _, pf)) in sources.iter().enumerate() {
            let p = &pf.playlist;
            let mut inherited = (p.start_rec_time_ms > 0).then_some(p.start_rec_time_ms);
            for (position, s) in p.segments.iter().enumerate() {
                let start_ms = segment_start_ms(&s.file_name);
                inherited = start_ms.or(inherited);
                if !present.contains(s.file_name.as_str()) {
                    out.missing.push(s.file_name.clone());
                    continue;
                }
                if !seen.insert(s.file_name.as_str()) {
                    continue;
                }
                let seg = PlannedSegment {
                    file_name: s.file_name.clone(),
                    start_ms,
                    discontinuity: s.discontinuity,
                    generation: *generation,
                };
                keyed.push(((inherited, source_order, position), seg));
            }
        }
        keyed.sort_by_key(|a| a.0);
        let container = match request.format {
            ConvertFormat::Aac => Container::Adts,
            ConvertFormat::Mp4 if has_video => Container::Mp4,
            ConvertFormat::Mp4 => Container::AudioMp4,
        };
        out.jobs.push(Job {
            user_id,
            media: if media_rank == 0 {
                Media::Main
            } else {
                Media::Aux
            },
            mixed: request.mixed,
            container,
            playlists: sources.iter().map(|s| s.2.name.clone()).collect(),
            segments: keyed.into_iter().map(|(_, s)| s).collect(),
        });
    }
    out
}

/// A finished output file, handed to the sink as soon as it is closed.
#[derive(Debug)]
pub struct ConvertedFile {
    /// File name, no folder.
    pub name: String,
    /// The bytes: header in memory, payload in a scratch file (removed
    /// when this is dropped); `file.content()` is what a store writes.
    pub file: SpilledFile,
    /// Decoded; empty for mixed.
    pub user_id: String,
    /// `MediaId` (mixed: main).
    pub media: Media,
    /// What the file holds; [`TrackType::api_name`] gives callback 311's
    /// `audio` / `video` / `audio_video`.
    pub track_type: TrackType,
    /// 0 = not split, else 1, 2, ...
    pub index: u32,
    pub duration_ms: u64,
    /// Roughly when the file's media begins (Unix ms): the job's first
    /// segment name's `<UTC>` plus the file's offset; `None` without one.
    pub start_unix_ms: Option<u64>,
}

/// A file the sink took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveredFile {
    pub name: String,
    pub size: u64,
    pub duration_ms: u64,
}

/// What a conversion did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvertReport {
    /// Files the sink took, in order.
    pub files: Vec<DeliveredFile>,
    /// Files made that the sink refused.
    pub undelivered: Vec<String>,
    /// Human-readable problems (the first [`MAX_PROBLEMS`]).
    pub failed: Vec<String>,
    /// Problems past those.
    pub problems_omitted: u64,
    /// The folder could not be listed.
    pub listing_failed: bool,
    /// This task's playlists found, and those that did not parse.
    pub playlists: u64,
    pub bad_playlists: u64,
    /// Other `.m3u8` files in the folder.
    pub ignored_playlists: Vec<String>,
    pub jobs: u64,
    /// Jobs that produced no file.
    pub empty_jobs: u64,
    /// Segments read and packed, and those missing or unreadable.
    pub segments: u64,
    pub skipped_segments: u64,
    /// Damage the packer found and skipped.
    pub pack_errors: u64,
}

impl ConvertReport {
    /// Callback 310's `Status`: 2 when nothing came out although the task
    /// has playlists (or the folder could not be listed); 1 when something
    /// expected did not come out or was not delivered (a sink error, a
    /// playlist that did not parse, a job without output); else 0. Missing
    /// segments and damaged TS alone leave gaps, not a failed status.
    /// A folder without playlists is 0 with no files: nothing recorded.
    pub fn status(&self) -> u8 {
        let made = self.files.len() + self.undelivered.len();
        if self.listing_failed || (self.playlists > 0 && made == 0) {
            2
        } else if !self.undelivered.is_empty() || self.bad_playlists > 0 || self.empty_jobs > 0 {
            1
        } else {
            0
        }
    }

    fn problem(&mut self, line: String) {
        if self.failed.len() < MAX_PROBLEMS {
            self.failed.push(line);
        } else {
            self.problems_omitted += 1;
        }
    }
}

impl fmt::Display for ConvertReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.listing_failed {
            write!(f, "the recording folder could not be listed")?;
        } else if self.playlists == 0 {
            write!(f, "nothing to convert: no playlists of this task")?;
        } else {
            let bytes: u64 = self.files.iter().map(|d| d.size).sum();
            write!(
                f,
                "{} file(s), {bytes} bytes, from {} playlist(s) and {} segment(s)",
                self.files.len(),
                self.playlists,
                self.segments
            )?;
        }
        for (n, what) in [
            (self.undelivered.len() as u64, "not delivered"),
            (self.bad_playlists, "unreadable playlist(s)"),
            (self.skipped_segments, "segment(s) skipped"),
            (self.pack_errors, "damaged part(s) of segments skipped"),
            (self.empty_jobs, "stream(s) with no output"),
        ] {
            if n > 0 {
                write!(f, "; {n} {what}")?;
            }
        }
        if !self.failed.is_empty() {
            write!(f, ": {}", self.failed.join("; "))?;
            if self.problems_omitted > 0 {
                write!(f, "; and {} more", self.problems_omitted)?;
            }
        }
        Ok(())
    }
}

/// Converts the recording in `dir` (that folder only), handing each file
/// to `sink` as soon as it is closed. Never fails as a whole: what goes
/// wrong is in the report.
pub fn convert_folder(
    dir: &Path,
    request: &ConvertRequest,
    sink: &mut dyn FnMut(ConvertedFile) -> Result<(), String>,
) -> ConvertReport {
    let mut report = ConvertReport::default();
    let files = match list(dir) {
        Ok(f) => f,
        Err(e) => {
            report.listing_failed = true;
            report.problem(format!("cannot list {}: {e}", dir.display()));
            return report;
        }
    };
    let naming = request.naming();
    let mut playlists = Vec::new();
    for name in files.iter().filter(|n| n.ends_with(".m3u8")) {
        let ours = match classify(name, &naming) {
            Some((_, Source::Mixed)) => request.mixed,
            Some((_, Source::Single { .. })) => !request.mixed,
            None => false,
        };
        if !ours {
            report.ignored_playlists.push(name.clone());
            continue;
        }
        report.playlists += 1;
        let parsed = std::fs::read(dir.join(name))
            .map_err(|e| e.to_string())
            .and_then(|b| String::from_utf8(b).map_err(|_| "not UTF-8".to_owned()))
            .and_then(|t| Playlist::parse(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(playlist) => playlists.push(PlaylistFile {
                name: name.clone(),
                playlist,
            }),
            Err(e) => {
                report.bad_playlists += 1;
                report.problem(format!("playlist {name} skipped: {e}"));
            }
        }
    }
    let plan = plan(request, &files, &playlists);
    if plan.jobs.is_empty() && !playlists.is_empty() {
        let what = match request.format {
            ConvertFormat::Aac => "no playlist of this task carries audio",
            ConvertFormat::Mp4 => "no playlist of this task could be used",
        };
        report.problem(what.to_owned());
    }
    for name in &plan.missing {
        report.skipped_segments += 1;
        report.problem(format!("segment {name} is missing"));
    }
    for job in &plan.jobs {
        report.jobs += 1;
        let made = run_job(dir, job, &naming, request, sink, &mut report);
        if made == 0 {
            report.empty_jobs += 1;
            let who = if job.mixed {
                "the mixed stream".to_owned()
            } else {
                format!("user {:?} {}", job.user_id, job.media.as_str())
            };
            report.problem(format!("{who}: nothing could be packed"));
        }
    }
    report
}

/// The folder's plain files, by name.
fn list(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let is_file = std::fs::metadata(entry.path()).is_ok_and(|m| m.is_file());
        if let (true, Ok(name)) = (is_file, entry.file_name().into_string()) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Packs one job, delivering files as they close; returns how many were
/// made.
fn run_job(
    dir: &Path,
    job: &Job,
    naming: &Naming,
    request: &ConvertRequest,
    sink: &mut dyn FnMut(ConvertedFile) -> Result<(), String>,
    report: &mut ConvertReport,
) -> u64 {
    let name = job.output_name(naming, 0);
    let stem = format!("{:08x}", rand::random::<u32>());
    let mut spill = match Spill::new(&request.scratch, &stem) {
        Ok(s) => s,
        Err(e) => {
            report.problem(format!(
                "{name}: cannot spill to {}: {e}",
                request.scratch.display()
            ));
            return 0;
        }
    };
    let mut packer = Mp4Packer::new(request.limits, job.container);
    let first_ms = job.segments.iter().find_map(|s| s.start_ms);
    let mut made = 0;
    let mut deliver = |spilled: SpilledFile, report: &mut ConvertReport| {
        made += 1;
        let facts = &spilled.facts;
        let track_type = match (facts.has_video, facts.has_audio) {
            (true, true) => TrackType::AudioVideo,
            (true, false) => TrackType::Video,
            (false, _) => TrackType::Audio,
        };
        let file = ConvertedFile {
            name: job.output_name(naming, facts.index),
            user_id: job.user_id.clone(),
            media: job.media,
            track_type,
            index: facts.index,
            duration_ms: facts.duration_ms,
            start_unix_ms: first_ms.map(|t| t + facts.start_ms),
            file: spilled,
        };
        let size = file.file.len().unwrap_or(0);
        let (name, duration_ms) = (file.name.clone(), file.duration_ms);
        match sink(file) {
            Ok(()) => report.files.push(DeliveredFile {
                name,
                size,
                duration_ms,
            }),
            Err(e) => {
                report.problem(format!("{name} not delivered: {e}"));
                report.undelivered.push(name);
            }
        }
    };
    let mut spill_failed = None;
    let mut spilled = |outputs, report: &mut ConvertReport| {
        if spill_failed.is_some() {
            return;
        }
        match spill.take(outputs) {
            Ok(files) => files.into_iter().for_each(|f| deliver(f, report)),
            Err(e) => spill_failed = Some(e),
        }
    };
    for s in &job.segments {
        let data = match std::fs::read(dir.join(&s.file_name)) {
            Ok(d) => d,
            Err(e) => {
                report.skipped_segments += 1;
                report.problem(format!("segment {} unreadable: {e}", s.file_name));
                continue;
            }
        };
        report.segments += 1;
        // No discontinuity flag: one timeline per task (module doc).
        spilled(packer.push_segment(&data, false), report);
    }
    let done = packer.finish();
    spilled(done.outputs, report);
    if let Some(e) = spill_failed {
        report.problem(format!(
            "{name}: spilling to {} failed: {e}",
            request.scratch.display()
        ));
        report.undelivered.push(name.clone());
    }
    report.pack_errors += done.stats.errors;
    if done.stats.errors > 0 {
        let first: Vec<String> = done
            .stats
            .first_errors
            .iter()
            .take(4)
            .map(|e| e.to_string())
            .collect();
        report.problem(format!(
            "{name}: {} damaged part(s) skipped ({}; segments numbered in push order)",
            done.stats.errors,
            first.join("; ")
        ));
    }
    made
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hls::playlist::Segment;
    use crate::hls::stream::BASE_90K;
    use crate::media::aac::OpusToAac;
    use crate::media::mp4::PackedFile;
    use crate::media::ts::TsMuxer;
    use crate::publish::source::{AudioConfig, AudioSource, VideoConfig, VideoSource};
    use std::path::PathBuf;
    use std::sync::OnceLock;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    const SDK: u32 = 1_400_000_001;
    /// The task's epoch (Unix ms): PTS `BASE_90K`.
    const EPOCH_MS: i64 = 2_001_145_551_000;
    const FPS: u64 = 15;
    const SECONDS: u64 = 12;
    const S: u64 = 90_000;

    fn naming(ha: u8) -> Naming {
        Naming::new(&[], "t", SDK, &RoomId::Int(7), ha)
    }

    fn request(format: ConvertFormat, mixed: bool) -> ConvertRequest {
        ConvertRequest {
            format,
            limits: SplitLimits::default(),
            mixed,
            sdk_app_id: SDK,
            room: RoomId::Int(7),
            scratch: std::env::temp_dir()
                .join(format!("kiroku-convert-{}-scratch", std::process::id())),
        }
    }

    /// A converted file's bytes.
    fn data(f: &ConvertedFile) -> Vec<u8> {
        f.file.content().to_vec().expect("the converted file")
    }

    // ---- media: 12 s of real H.264 (key frame every 2 s) and AAC on the
    // task timeline, as the recorder places them.

    struct Av {
        /// PTS, key, access unit.
        video: Vec<(u64, bool, Vec<u8>)>,
        /// PTS, one ADTS frame.
        audio: Vec<(u64, Vec<u8>)>,
    }

    fn av() -> &'static Av {
        static AV: OnceLock<Av> = OnceLock::new();
        AV.get_or_init(|| {
            let mut src = VideoSource::new(VideoConfig {
                width: 320,
                height: 180,
                fps: FPS as u32,
                bitrate_bps: 200_000,
                keyframe_interval_frames: 30,
                ..VideoConfig::default()
            })
            .expect("video source");
            let mut video = Vec::new();
            for i in 0..SECONDS * FPS {
                let f = src
                    .next_frame(Duration::from_millis(i * 1000 / FPS))
                    .expect("frame");
                video.push((BASE_90K + i * S / FPS, f.keyframe, f.data));
            }
            let mut tone = AudioSource::new(AudioConfig {
                channels: 2,
                ..AudioConfig::default()
            })
            .expect("audio source");
            let mut aac = OpusToAac::new(2, 64_000).expect("aac");
            let mut frames = Vec::new();
            for _ in 0..SECONDS * 50 {
                let p = tone.next_frame().expect("opus");
                frames.extend(
                    aac.push(&p.data, BASE_90K * 48 / 90 + p.pts_48khz)
                        .expect("aac"),
                );
            }
            frames.extend(aac.finish().expect("finish"));
            let audio = frames.into_iter().map(|f| (f.pts_90k, f.adts)).collect();
            Av { video, audio }
        })
    }

    fn wall(pts: u64) -> SystemTime {
        let us = EPOCH_MS * 1000 + (pts as i64 - BASE_90K as i64) * 1000 / 90;
        UNIX_EPOCH + Duration::from_micros(us as u64)
    }

    /// A part of the recording: `[from_s, to_s)` of the task (the first
    /// part also takes the audio before 0), after a discontinuity or not.
    type Part = (u64, u64, bool);

    /// One stream's segments (cut at key frames with video, every
    /// `audio_cut_s` without) and its playlist.
    fn build(
        video: bool,
        audio: bool,
        parts: &[Part],
        audio_cut_s: u64,
        name: &dyn Fn(SystemTime) -> String,
    ) -> (Playlist, Vec<Vec<u8>>) {
        let media = av();
        let mut events: Vec<(u64, Option<bool>, &[u8])> = Vec::new();
        if video {
            events.extend(
                media
                    .video
                    .iter()
                    .map(|(t, k, d)| (*t, Some(*k), d.as_slice())),
            );
        }
        if audio {
            events.extend(media.audio.iter().map(|(t, d)| (*t, None, d.as_slice())));
        }
        events.sort_by_key(|(t, k, _)| (*t, k.is_none()));
        let mut muxer = TsMuxer::new(video, audio);
        let first = events.first().map_or(0, |e| e.0);
        let mut playlist = Playlist::new(0, video.then_some((320, 180)));
        let mut segments = Vec::new();
        for &(from, to, discontinuity) in parts {
            let lo = if from == 0 { 0 } else { BASE_90K + from * S };
            let hi = BASE_90K + to * S;
            let mut open: Option<(u64, u64, Vec<u8>)> = None;
            let mut disc = discontinuity;
            let mut close =
                |open: Option<(u64, u64, Vec<u8>)>, playlist: &mut Playlist, disc: &mut bool| {
                    if let Some((start, last, buf)) = open {
                        playlist.push(Segment {
                            file_name: name(wall(start)),
                            duration_seconds: (last + S / FPS - start) as f64 / S as f64,
                            discontinuity: std::mem::take(disc),
                        });
                        segments.push(buf);
                    }
                };
            for &(t, key, data) in events.iter().filter(|e| (lo..hi).contains(&e.0)) {
                let cut = match key {
                    Some(k) => k,
                    None => !video && open.as_ref().is_some_and(|o| t >= o.0 + audio_cut_s * S),
                };
                if cut || open.is_none() {
                    close(open.take(), &mut playlist, &mut disc);
                    let mut buf = Vec::new();
                    muxer.write_tables(&mut buf);
                    open = Some((t, t, buf));
                }
                if let Some((_, last, buf)) = open.as_mut() {
                    *last = t;
                    match key {
                        Some(k) => muxer.write_video(buf, t, t, k, data),
                        None => muxer.write_audio(buf, t, data),
                    }
                }
            }
            close(open.take(), &mut playlist, &mut disc);
        }
        playlist.start_rec_time_ms = wall(first)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        playlist.ended = true;
        (playlist, segments)
    }

    struct Folder(PathBuf);

    impl Folder {
        fn new(tag: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("kiroku-convert-{}-{tag}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp folder");
            Self(dir)
        }

        /// Writes a single-stream playlist and its segments.
        fn single(
            &self,
            ha: u8,
            user: &str,
            media: Media,
            ty: TrackType,
            parts: &[Part],
        ) -> Playlist {
            let n = naming(ha);
            let (video, audio) = match ty {
                TrackType::Audio => (false, true),
                TrackType::Video => (true, false),
                TrackType::AudioVideo => (true, true),
            };
            let seg = |t: SystemTime| n.single_segment(user, media, ty, t);
            self.write(
                &n.single_playlist(user, media, ty),
                video,
                audio,
                parts,
                &seg,
            )
        }

        fn mixed(&self, ha: u8, parts: &[Part]) -> Playlist {
            let n = naming(ha);
            let seg = |t: SystemTime| n.mixed_segment(t);
            self.write(&n.mixed_playlist(), true, true, parts, &seg)
        }

        fn write(
            &self,
            playlist_name: &str,
            video: bool,
            audio: bool,
            parts: &[Part],
            name: &dyn Fn(SystemTime) -> String,
        ) -> Playlist {
            let (playlist, segments) = build(video, audio, parts, 3, name);
            for (s, data) in playlist.segments.iter().zip(&segments) {
                std::fs::write(self.0.join(&s.file_name), data).expect("segment");
            }
            std::fs::write(self.0.join(playlist_name), playlist.render()).expect("playlist");
            playlist
        }

        fn convert(&self, request: &ConvertRequest) -> (Vec<ConvertedFile>, ConvertReport) {
            let mut got = Vec::new();
            let report = convert_folder(&self.0, request, &mut |f| {
                got.push(f);
                Ok(())
            });
            (got, report)
        }
    }

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The same media as one merged A/V stream, packed with no flags: how
    /// the MP4 must come out when audio and video stay aligned.
    fn reference(parts: &[Part], limits: SplitLimits, container: Container) -> Vec<PackedFile> {
        let (_, segments) = build(true, true, parts, 3, &|_| String::new());
        let done = crate::media::mp4::pack(
            segments.iter().map(|s| (s.as_slice(), false)),
            limits,
            container,
        );
        assert_eq!(done.stats.errors, 0, "{:?}", done.stats.first_errors);
        done.files
    }

    fn names(files: &[ConvertedFile]) -> Vec<&str> {
        files.iter().map(|f| f.name.as_str()).collect()
    }

    const ALICE: &str = "alice";
    const STEM_ALICE: &str = "1400000001_7__UserId_s_YWxpY2U.__UserId_e_";

    // ---- planning

    #[test]
    fn names_are_classified_with_their_generation() {
        let n = naming(0);
        assert_eq!(classify("1400000001_7.m3u8", &n), Some((0, Source::Mixed)));
        assert_eq!(
            classify("ha2_1400000001_7.m3u8", &n),
            Some((2, Source::Mixed))
        );
        assert_eq!(
            classify(&format!("ha1_{STEM_ALICE}aux_video.m3u8"), &n),
            Some((
                1,
                Source::Single {
                    user_id: ALICE.into(),
                    media: Media::Aux,
                    track_type: TrackType::Video
                }
            ))
        );
        assert_eq!(
            classify(&format!("{STEM_ALICE}main_av.m3u8"), &n),
            Some((
                0,
                Source::Single {
                    user_id: ALICE.into(),
                    media: Media::Main,
                    track_type: TrackType::AudioVideo
                }
            ))
        );
        for other in [
            "1400000001_8.m3u8",
            "1400000002_7.m3u8",
            "hax_1400000001_7.m3u8",
            "1400000001_7.m3u8.bak",
            &format!("{STEM_ALICE}main_data.m3u8"),
            &format!("{STEM_ALICE}side_video.m3u8"),
            "1400000001_7__UserId_s_%%%__UserId_e_main_video.m3u8",
        ] {
            assert_eq!(classify(other, &n), None, "{other}");
        }
        // The segment times of the names the recorder writes.
        let t = UNIX_EPOCH + Duration::from_millis(2_001_145_551_825);
        let seg = n.single_segment(ALICE, Media::Main, TrackType::Video, t);
        assert_eq!(segment_start_ms(&seg), Some(2_001_145_551_825));
        assert_eq!(segment_start_ms("x_19700101000000005.ts"), Some(5));
        for bad in [
            "x.ts",
            "x_2033053109455182.ts",
            "x_20331331094551825.ts",
            "x_20330531094551825.m4s",
        ] {
            assert_eq!(segment_start_ms(bad), None, "{bad}");
        }
    }

    fn listed(p: &[PlaylistFile]) -> Vec<String> {
        let mut files: Vec<String> = p.iter().map(|p| p.name.clone()).collect();
        for pf in p {
            files.extend(pf.playlist.segments.iter().map(|s| s.file_name.clone()));
        }
        files
    }

    fn playlist(name: String, segments: &[(String, bool)], video: bool) -> PlaylistFile {
        let mut playlist = Playlist::new(1, video.then_some((320, 180)));
        for (file_name, discontinuity) in segments {
            playlist.push(Segment {
                file_name: file_name.clone(),
                duration_seconds: 2.0,
                discontinuity: *discontinuity,
            });
        }
        PlaylistFile { name, playlist }
    }

    #[test]
    fn plans_interleave_by_start_across_generations() {
        let at = |s: u64| UNIX_EPOCH + Duration::from_millis(2_001_145_551_000 + s * 1000);
        let seg = |ha: u8, ty: TrackType, s: u64| {
            (
                naming(ha).single_segment(ALICE, Media::Main, ty, at(s)),
                false,
            )
        };
        let (a, v) = (TrackType::Audio, TrackType::Video);
        let pl = |ha: u8, ty: TrackType, segs: Vec<(String, bool)>| {
            playlist(
                naming(ha).single_playlist(ALICE, Media::Main, ty),
                &segs,
                ty == v,
            )
        };
        let mut back = seg(0, v, 8);
        back.1 = true;
        let playlists = vec![
            pl(1, a, vec![seg(1, a, 10)]),
            pl(0, v, vec![seg(0, v, 0), seg(0, v, 2), back]),
            pl(0, a, vec![seg(0, a, 0), seg(0, a, 3), seg(0, a, 8)]),
            pl(1, v, vec![seg(1, v, 10)]),
            pl(0, TrackType::Video, vec![]),
            playlist(
                naming(0).single_playlist(ALICE, Media::Aux, v),
                &[seg(0, v, 1)],
                true,
            ),
            playlist("1400000001_7.m3u8".into(), &[], true),
            playlist("notes.m3u8".into(), &[], true),
        ];
        let mut files = listed(&playlists);
        let gone = seg(0, a, 3).0;
        files.retain(|f| *f != gone);
        let p = plan(&request(ConvertFormat::Mp4, false), &files, &playlists);
        assert_eq!(p.ignored, ["1400000001_7.m3u8", "notes.m3u8"]);
        assert_eq!(p.missing, [gone]);
        assert_eq!(p.jobs.len(), 2);
        let main = &p.jobs[0];
        assert_eq!((main.user_id.as_str(), main.media), (ALICE, Media::Main));
        assert_eq!(main.container, Container::Mp4);
        let order: Vec<(u64, u32, bool, bool)> = main
            .segments
            .iter()
            .map(|s| {
                let t = (s.start_ms.expect("time") - 2_001_145_551_000) / 1000;
                (
                    t,
                    s.generation,
                    s.file_name.contains("_video_"),
                    s.discontinuity,
                )
            })
            .collect();
        assert_eq!(
            order,
            [
                (0, 0, false, false),
                (0, 0, true, false),
                (2, 0, true, false),
                (8, 0, false, false),
                (8, 0, true, true),
                (10, 1, false, false),
                (10, 1, true, false),
            ]
        );
        assert_eq!(
            main.output_name(&naming(0), 0),
            format!("{STEM_ALICE}main.mp4")
        );
        assert_eq!(
            main.output_name(&naming(0), 2),
            format!("{STEM_ALICE}main_2.mp4")
        );
        let aux = &p.jobs[1];
        assert_eq!((aux.media, aux.segments.len()), (Media::Aux, 1));
        assert_eq!(
            aux.output_name(&naming(0), 0),
            format!("{STEM_ALICE}aux.mp4")
        );

        // AAC: audio only, so no aux job; audio-only MP4 for an audio user.
        let p = plan(&request(ConvertFormat::Aac, false), &files, &playlists);
        assert_eq!(p.jobs.len(), 1);
        assert_eq!(p.jobs[0].container, Container::Adts);
        assert!(p.jobs[0]
            .segments
            .iter()
            .all(|s| s.file_name.contains("_audio_")));
        assert_eq!(
            p.jobs[0].output_name(&naming(0), 0),
            format!("{STEM_ALICE}main.aac")
        );
        assert_eq!(
            p.jobs[0].output_name(&naming(0), 1),
            format!("{STEM_ALICE}main_1.aac")
        );
        let audio_only: Vec<PlaylistFile> = playlists
            .iter()
            .filter(|p| p.name.ends_with("_audio.m3u8"))
            .cloned()
            .collect();
        let p = plan(&request(ConvertFormat::Mp4, false), &files, &audio_only);
        assert_eq!(p.jobs[0].container, Container::AudioMp4);
        // Without names' times, playlist order (the START-REC-TIME first).
        let plain = vec![playlist(
            naming(0).mixed_playlist(),
            &[("b.ts".into(), false), ("a.ts".into(), true)],
            false,
        )];
        let p = plan(&request(ConvertFormat::Mp4, true), &listed(&plain), &plain);
        let segs: Vec<&str> = p.jobs[0]
            .segments
            .iter()
            .map(|s| s.file_name.as_str())
            .collect();
        assert_eq!(segs, ["b.ts", "a.ts"]);
        assert_eq!(
            p.jobs[0].container,
            Container::AudioMp4,
            "our tags say: no video"
        );
        assert_eq!(p.jobs[0].output_name(&naming(0), 0), "1400000001_7.mp4");
    }

    // ---- conversion

    #[test]
    fn separate_audio_and_video_with_a_return_and_ha_stay_aligned() {
        let dir = Folder::new("single");
        // Alice: 0-4 s, away 4-8 s, back 8-10 s (discontinuity), then the
        // daemon restarts and ha1_ continues 10-12 s. Audio is cut every
        // 3 s, video at its 2 s key frames: the playlists interleave.
        let gen0: &[Part] = &[(0, 4, false), (8, 10, true)];
        let gen1: &[Part] = &[(10, 12, false)];
        let mut written = 0;
        for ty in [TrackType::Audio, TrackType::Video] {
            written += dir.single(0, ALICE, Media::Main, ty, gen0).segments.len();
            written += dir.single(1, ALICE, Media::Main, ty, gen1).segments.len();
        }
        // Bob: audio only.
        written += dir
            .single(0, "bob", Media::Main, TrackType::Audio, &[(0, 6, false)])
            .segments
            .len();
        let (files, report) = dir.convert(&request(ConvertFormat::Mp4, false));
        assert_eq!(report.status(), 0, "{report}");
        assert_eq!(
            (report.pack_errors, report.skipped_segments),
            (0, 0),
            "{report}"
        );
        assert_eq!(
            names(&files),
            [
                format!("{STEM_ALICE}main.mp4"),
                "1400000001_7__UserId_s_Ym9i__UserId_e_main.mp4".to_owned()
            ]
        );
        let alice = &files[0];
        assert_eq!(
            (
                alice.user_id.as_str(),
                alice.media,
                alice.track_type,
                alice.index
            ),
            (ALICE, Media::Main, TrackType::AudioVideo, 0)
        );
        // Exactly what one merged A/V stream of the same media gives: no
        // sample lost or shifted by the interleaving, the return or HA.
        let all = [(0, 4, false), (8, 10, true), (10, 12, false)];
        let expected = reference(&all, SplitLimits::default(), Container::Mp4);
        assert_eq!(expected.len(), 1);
        assert_eq!(alice.duration_ms, expected[0].duration_ms);
        assert!(
            data(alice) == expected[0].data,
            "the MP4 differs from the merged stream's"
        );
        assert!(
            alice.duration_ms > 11_900,
            "the 4 s away are kept: {}",
            alice.duration_ms
        );
        let bob = &files[1];
        assert_eq!(bob.track_type, TrackType::Audio);
        assert_eq!(&data(bob)[8..12], b"M4A ");
        assert_eq!(
            report.files.iter().map(|f| f.size).collect::<Vec<_>>(),
            files
                .iter()
                .map(|f| data(f).len() as u64)
                .collect::<Vec<_>>()
        );
        assert_eq!(report.segments, written as u64);
        assert!(alice
            .start_unix_ms
            .is_some_and(|t| t.abs_diff(EPOCH_MS as u64) < 50));
    }

    #[test]
    fn av_merge_and_aux_make_one_file_each() {
        let dir = Folder::new("aux");
        dir.single(
            0,
            ALICE,
            Media::Main,
            TrackType::AudioVideo,
            &[(0, 6, false)],
        );
        dir.single(
            1,
            ALICE,
            Media::Main,
            TrackType::AudioVideo,
            &[(6, 12, false)],
        );
        dir.single(0, ALICE, Media::Aux, TrackType::Video, &[(0, 4, false)]);
        let (files, report) = dir.convert(&request(ConvertFormat::Mp4, false));
        assert_eq!(report.status(), 0, "{report}");
        assert_eq!(
            names(&files),
            [
                format!("{STEM_ALICE}main.mp4"),
                format!("{STEM_ALICE}aux.mp4")
            ]
        );
        let expected = reference(&[(0, 12, false)], SplitLimits::default(), Container::Mp4);
        assert!(data(&files[0]) == expected[0].data);
        assert_eq!(files[1].track_type, TrackType::Video);
        assert_eq!(files[1].media, Media::Aux);
        assert!(
            (3_900..=4_100).contains(&files[1].duration_ms),
            "{}",
            files[1].duration_ms
        );
    }

    #[test]
    fn mixed_with_a_resumed_task_is_one_file() {
        let dir = Folder::new("mixed");
        dir.mixed(0, &[(0, 6, false)]);
        dir.mixed(1, &[(6, 12, false)]);
        // A single-stream playlist in a mixed task's folder is not read.
        dir.single(0, ALICE, Media::Main, TrackType::Audio, &[(0, 2, false)]);
        let (files, report) = dir.convert(&request(ConvertFormat::Mp4, true));
        assert_eq!(report.status(), 0, "{report}");
        assert_eq!(
            report.ignored_playlists,
            [format!("{STEM_ALICE}main_audio.m3u8")]
        );
        assert_eq!(names(&files), ["1400000001_7.mp4"]);
        assert_eq!(
            (files[0].user_id.as_str(), files[0].media),
            ("", Media::Main)
        );
        let expected = reference(&[(0, 12, false)], SplitLimits::default(), Container::Mp4);
        assert!(data(&files[0]) == expected[0].data);
    }

    /// The ADTS frames of the media in `parts`, back to back.
    fn adts(parts: &[Part]) -> Vec<u8> {
        av().audio
            .iter()
            .filter(|(t, _)| {
                parts.iter().any(|&(from, to, _)| {
                    (from == 0 || *t >= BASE_90K + from * S) && *t < BASE_90K + to * S
                })
            })
            .flat_map(|(_, d)| d.iter().copied())
            .collect()
    }

    #[test]
    fn aac_comes_from_audio_and_av_playlists() {
        let dir = Folder::new("aac");
        dir.single(
            0,
            ALICE,
            Media::Main,
            TrackType::Audio,
            &[(0, 4, false), (8, 10, true)],
        );
        dir.single(1, ALICE, Media::Main, TrackType::Audio, &[(10, 12, false)]);
        dir.single(0, ALICE, Media::Main, TrackType::Video, &[(0, 4, false)]);
        dir.single(0, ALICE, Media::Aux, TrackType::Video, &[(0, 4, false)]);
        dir.single(
            0,
            "carol",
            Media::Main,
            TrackType::AudioVideo,
            &[(0, 6, false)],
        );
        let (files, report) = dir.convert(&request(ConvertFormat::Aac, false));
        assert_eq!(report.status(), 0, "{report}");
        assert_eq!(
            names(&files),
            [
                format!("{STEM_ALICE}main.aac"),
                "1400000001_7__UserId_s_Y2Fyb2w.__UserId_e_main.aac".to_owned()
            ]
        );
        assert!(files.iter().all(|f| f.track_type == TrackType::Audio));
        assert!(data(&files[0]) == adts(&[(0, 4, false), (8, 10, true), (10, 12, false)]));
        assert!(
            data(&files[1]) == adts(&[(0, 6, false)]),
            "audio of an A/V stream"
        );
        // Mixed: <SdkAppId>_<RoomId>.aac.
        let dir = Folder::new("aac-mixed");
        dir.mixed(0, &[(0, 3, false)]);
        let (files, report) = dir.convert(&request(ConvertFormat::Aac, true));
        assert_eq!(report.status(), 0, "{report}");
        assert_eq!(names(&files), ["1400000001_7.aac"]);
        assert!(data(&files[0]) == adts(&[(0, 3, false)]));
    }

    #[test]
    fn a_small_limit_splits_into_numbered_files() {
        let dir = Folder::new("split");
        dir.single(0, ALICE, Media::Main, TrackType::Audio, &[(0, 12, false)]);
        dir.single(0, ALICE, Media::Main, TrackType::Video, &[(0, 12, false)]);
        let mut req = request(ConvertFormat::Mp4, false);
        req.limits = SplitLimits {
            max_duration_ms: 5_000,
            max_bytes: u64::MAX,
        };
        let (files, report) = dir.convert(&req);
        assert_eq!(report.status(), 0, "{report}");
        let expected = reference(&[(0, 12, false)], req.limits, Container::Mp4);
        assert!(expected.len() >= 3, "{}", expected.len());
        let want: Vec<String> = (1..=expected.len())
            .map(|i| format!("{STEM_ALICE}main_{i}.mp4"))
            .collect();
        assert_eq!(names(&files), want);
        for (f, e) in files.iter().zip(&expected) {
            assert_eq!(f.index, e.index);
            assert!(data(f) == e.data);
            assert!(f.duration_ms <= 5_000);
        }
    }

    #[test]
    fn damage_is_reported_and_skipped() {
        let dir = Folder::new("damage");
        let video = dir.single(0, ALICE, Media::Main, TrackType::Video, &[(0, 8, false)]);
        dir.single(0, ALICE, Media::Main, TrackType::Audio, &[(0, 8, false)]);
        // A missing segment, a truncated one, a playlist that is not one,
        // a playlist of someone else's task.
        let gone = &video.segments[1].file_name;
        std::fs::remove_file(dir.0.join(gone)).expect("remove");
        let cut = dir.0.join(&video.segments[2].file_name);
        let data = std::fs::read(&cut).expect("read");
        std::fs::write(&cut, &data[..data.len() / 2 + 77]).expect("truncate");
        let bob = naming(0).single_playlist("bob", Media::Main, TrackType::Audio);
        std::fs::write(dir.0.join(&bob), "<html>nope</html>").expect("write");
        std::fs::write(dir.0.join("1400000009_7.m3u8"), "#EXTM3U\n").expect("write");
        let (files, report) = dir.convert(&request(ConvertFormat::Mp4, false));
        assert_eq!(names(&files), [format!("{STEM_ALICE}main.mp4")]);
        assert_eq!(report.status(), 1, "a playlist was lost: {report}");
        assert_eq!((report.playlists, report.bad_playlists), (3, 1));
        assert_eq!(report.ignored_playlists, ["1400000009_7.m3u8"]);
        assert_eq!(report.skipped_segments, 1);
        assert!(report.pack_errors > 0);
        let text = report.to_string();
        for needle in [
            gone.as_str(),
            bob.as_str(),
            "not an HLS playlist",
            "damaged",
        ] {
            assert!(text.contains(needle), "{needle} in {text}");
        }
        // The missing 2 s of video are a gap; audio runs on.
        assert!(files[0].duration_ms > 7_900, "{}", files[0].duration_ms);
    }

    #[test]
    fn nothing_to_read_nothing_delivered_and_empty_folders() {
        // Empty folder: nothing recorded, nothing to do.
        let dir = Folder::new("empty");
        let (files, report) = dir.convert(&request(ConvertFormat::Mp4, false));
        assert!(files.is_empty());
        assert_eq!(report.status(), 0);
        assert_eq!(
            report.to_string(),
            "nothing to convert: no playlists of this task"
        );
        // Likewise in the other mode and format.
        let (files, report) =
            Folder::new("empty-mixed").convert(&request(ConvertFormat::Aac, true));
        assert!(files.is_empty());
        assert_eq!(report.status(), 0);
        // No folder at all: the HLS could not be read.
        let missing = convert_folder(
            &std::env::temp_dir().join("kiroku-convert-no-such-folder"),
            &request(ConvertFormat::Mp4, false),
            &mut |_| Ok(()),
        );
        assert!(missing.listing_failed);
        assert_eq!(missing.status(), 2, "{missing}");
        assert!(missing.to_string().contains("could not be listed"));
        // Playlists whose segments are all gone.
        let dir = Folder::new("all-gone");
        let p = dir.single(0, ALICE, Media::Main, TrackType::Audio, &[(0, 4, false)]);
        for s in &p.segments {
            std::fs::remove_file(dir.0.join(&s.file_name)).expect("remove");
        }
        let (files, report) = dir.convert(&request(ConvertFormat::Mp4, false));
        assert!(files.is_empty());
        assert_eq!(report.status(), 2, "{report}");
        assert_eq!(report.skipped_segments, p.segments.len() as u64);
        assert!(report.to_string().contains("nothing could be packed"));
        // AAC from video alone: nothing to make.
        let dir = Folder::new("aac-video");
        dir.single(0, ALICE, Media::Main, TrackType::Video, &[(0, 2, false)]);
        let (files, report) = dir.convert(&request(ConvertFormat::Aac, false));
        assert!(files.is_empty());
        assert_eq!(report.status(), 2, "{report}");
        assert!(report.to_string().contains("carries audio"), "{report}");
        // A sink that refuses: status 1, the name reported.
        let dir = Folder::new("sink");
        dir.single(0, ALICE, Media::Main, TrackType::Audio, &[(0, 2, false)]);
        dir.single(0, "bob", Media::Main, TrackType::Audio, &[(0, 2, false)]);
        let mut n = 0;
        let report = convert_folder(&dir.0, &request(ConvertFormat::Mp4, false), &mut |_| {
            n += 1;
            if n == 1 {
                Err("disk full".into())
            } else {
                Ok(())
            }
        });
        assert_eq!(report.status(), 1, "{report}");
        assert_eq!(report.undelivered, [format!("{STEM_ALICE}main.mp4")]);
        assert_eq!(report.files.len(), 1);
        assert!(report.to_string().contains("disk full"));
    }
}
