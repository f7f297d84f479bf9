//! The packer's tests: real H.264/AAC in our own TS, packed and read back.

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
        let path =
            std::env::temp_dir().join(format!("kiroku-mp4-{}-{tag}-{n}.{ext}", std::process::id()));
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
        for item in d.segment(seg, 0, &mut Vec::new()) {
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
        .any(|e| matches!(e, PackError::Ts(TsError::PartialPacket { segment: 2, .. }))));
    assert!(s
        .first_errors
        .iter()
        .any(|e| matches!(e, PackError::Ts(TsError::LostSync { segment: 3, .. }))));
    assert!(s
        .first_errors
        .iter()
        .any(|e| matches!(e, PackError::Ts(TsError::NotTs { segment: 4 }))));
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
    let mut assembler = Assembler::default();
    let mut files = Vec::new();
    for (s, d) in input.pushes() {
        files.extend(assembler.files(packer.push_segment(s, d)));
    }
    let done = packer.finish();
    files.extend(assembler.files(done.outputs));
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
        d.segment(seg, 0, &mut Vec::new())
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
