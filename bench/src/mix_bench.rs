//! Mixed-stream pipeline throughput, offline: kiroku's mixed recorder
//! (per-input OpenH264 decode, nine-grid layout, CPU compositor, OpenH264
//! encode, Opus decode + mix + AAC, TS muxing) run as fast as it goes on
//! recorded inputs, side by side with ffmpeg producing the same picture
//! from the same inputs (`xstack` + `libx264 -preset veryfast`).
//!
//! Prints media-seconds per CPU-second for both and the ratio. kiroku's
//! figure includes the audio mix (N Opus decodes, mixing, AAC encode) and
//! the TS muxing; ffmpeg's is video only, so the comparison favours ffmpeg.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use kiroku::domain::params::{
    AudioParams, FillType, MediaSelection, MixLayout, MixTranscode, RoomId, StreamType,
    Subscription, VideoParams,
};
use kiroku::hls::naming::Naming;
use kiroku::hls::segmenter::SegmenterConfig;
use kiroku::media::h264_codec::OpenH264Encoder;
use kiroku::publish::source::{AudioConfig, AudioSource, Pattern, Rgb, VideoConfig, VideoSource};
use kiroku::record::action::Action;
use kiroku::record::mixed::{MixedRecorder, MixedSettings, StageTimes};
use kiroku::record::single::OfferedTrack;
use kiroku::room::{Codec, MediaFrame, TrackKind};

// Only `cpu_seconds` is used here; the rest serves the daemon benchmarks.
#[allow(dead_code)]
mod common;

#[derive(Parser)]
struct Args {
    /// Cases as INPUTSxOUTPUT_HEIGHT, e.g. 4x720,25x1080.
    #[arg(long, default_value = "4x720,25x1080")]
    cases: String,
    /// Seconds of media per input.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Skip the ffmpeg side.
    #[arg(long)]
    no_ffmpeg: bool,
}

const FPS: u32 = 15;
const IN_W: u32 = 640;
const IN_H: u32 = 360;

struct Input {
    video: Vec<(Duration, Vec<u8>, bool)>,
    audio: Vec<(u64, Vec<u8>)>,
}

fn make_inputs(n: usize, seconds: f64, dir: &Path) -> anyhow::Result<Vec<Input>> {
    let frames = (seconds * f64::from(FPS)) as u64;
    let mut inputs = Vec::new();
    for i in 0..n {
        let hue = (i * 47 % 255) as u8;
        let mut video = VideoSource::new(VideoConfig {
            width: IN_W,
            height: IN_H,
            fps: FPS,
            bitrate_bps: 600_000,
            color: Rgb(hue, 255 - hue, 128),
            pattern: Pattern::Bars,
            label: format!("in{i}"),
            keyframe_interval_frames: 30,
            ..VideoConfig::default()
        })?;
        let mut audio = AudioSource::new(AudioConfig {
            frequency_hz: 300.0 + 40.0 * i as f32,
            ..AudioConfig::default()
        })?;
        let mut v = Vec::new();
        let mut annexb = Vec::new();
        for k in 0..frames {
            let t = Duration::from_nanos(k * 1_000_000_000 / u64::from(FPS));
            let f = video.next_frame(t)?;
            annexb.extend_from_slice(&f.data);
            v.push((t, f.data, f.keyframe));
        }
        std::fs::write(dir.join(format!("in{i}.h264")), &annexb)?;
        let mut a = Vec::new();
        for _ in 0..(seconds * 50.0) as u64 {
            let f = audio.next_frame()?;
            a.push((f.pts_48khz, f.data));
        }
        inputs.push(Input { video: v, audio: a });
    }
    Ok(inputs)
}

fn frame(
    codec: Codec,
    data: &[u8],
    rtp: u64,
    rate: u32,
    key: bool,
    wall: SystemTime,
) -> MediaFrame {
    MediaFrame {
        codec,
        data: Arc::from(data),
        keyframe: key,
        rtp_time: rtp,
        clock_rate: rate,
        ntp_time: None,
        received_at: Instant::now(),
        received_wall: wall,
        contiguous: true,
    }
}

/// Runs kiroku's mixed recorder over the inputs; returns (CPU s, bytes out,
/// frames out, time per stage as the recorder measured it).
fn run_kiroku(
    inputs: &[Input],
    out_w: u32,
    out_h: u32,
    seconds: f64,
) -> anyhow::Result<(f64, u64, u64, StageTimes)> {
    let epoch = SystemTime::now();
    let epoch_us = epoch.duration_since(UNIX_EPOCH)?.as_micros() as i64;
    let transcode = MixTranscode {
        video: VideoParams {
            width: out_w,
            height: out_h,
            fps: FPS,
            bitrate_bps: if out_h >= 1080 { 3_000_000 } else { 1_500_000 },
            gop_seconds: 2,
        },
        audio: AudioParams::default(),
    };
    let settings = MixedSettings {
        naming: Arc::new(Naming::new(&[], "bench", 1_400_000_001, &RoomId::Int(1), 0)),
        segment: SegmenterConfig::default(),
        stream_type: StreamType::AudioVideo,
        media: MediaSelection::Main,
        fill: FillType::LastFrame,
        epoch_us,
        transcode,
        latency_us: 3_000_000,
        stopwatch: std::time::Instant::now,
    };
    let encoder = OpenH264Encoder::open(MixedRecorder::encoder_settings(&transcode))?;
    let compositor = Box::new(kiroku_gpu::cpu::CpuCompositor::new());
    let mut rec = MixedRecorder::new(
        settings,
        Subscription::default(),
        MixLayout::default(),
        compositor,
        Some(Box::new(encoder)),
    )?;
    let offered: Vec<OfferedTrack> = (0..inputs.len())
        .flat_map(|i| {
            [TrackKind::MainVideo, TrackKind::Audio].map(|kind| OfferedTrack {
                user_id: format!("user{i}"),
                kind,
                session_id: format!("s{i}"),
            })
        })
        .collect();
    let mut tags: HashMap<(String, TrackKind), u64> = HashMap::new();
    for a in rec.reconcile(&offered) {
        if let Action::Subscribe {
            tag, user_id, kind, ..
        } = a
        {
            tags.insert((user_id, kind), tag);
        }
    }
    let mut bytes = 0u64;
    let mut count = |actions: Vec<Action>| {
        for a in actions {
            if let Action::Store { data, .. } = a {
                bytes += data.len() as u64;
            }
        }
    };
    let pid = std::process::id();
    let cpu0 = common::cpu_seconds(pid)?;
    let frames = (seconds * f64::from(FPS)) as usize;
    let mut audio_next = vec![0usize; inputs.len()];
    for k in 0..frames {
        for (i, input) in inputs.iter().enumerate() {
            let (t, data, key) = &input.video[k];
            let wall = epoch + *t;
            let tag = tags[&(format!("user{i}"), TrackKind::MainVideo)];
            count(rec.on_frame(
                tag,
                frame(
                    Codec::H264,
                    data,
                    t.as_micros() as u64 * 9 / 100,
                    90_000,
                    *key,
                    wall,
                ),
            ));
            let atag = tags[&(format!("user{i}"), TrackKind::Audio)];
            while let Some((pts, pkt)) = input.audio.get(audio_next[i]) {
                let at = Duration::from_micros(pts * 1000 / 48);
                if at > *t {
                    break;
                }
                count(rec.on_frame(
                    atag,
                    frame(Codec::Opus, pkt, *pts, 48_000, true, epoch + at),
                ));
                audio_next[i] += 1;
            }
        }
        let now = epoch_us + (k as i64) * 1_000_000 / i64::from(FPS) + 3_000_000;
        count(rec.tick(now));
    }
    let end = epoch_us + (seconds * 1e6) as i64 + 3_000_000;
    count(rec.finish(end));
    let cpu = common::cpu_seconds(pid)? - cpu0;
    Ok((cpu, bytes, rec.mix_stats.ticks, rec.mix_stats.stages))
}

/// ffmpeg: the same grid from the same H.264 inputs; returns CPU seconds.
fn run_ffmpeg(dir: &Path, n: usize, out_w: u32, out_h: u32) -> anyhow::Result<f64> {
    let cols = (1..=5).find(|c| c * c >= n).unwrap_or(5);
    let (tw, th) = ((out_w / cols as u32) & !1, (out_h / cols as u32) & !1);
    let mut args: Vec<String> = ["-benchmark", "-hide_banner", "-nostats", "-y"]
        .map(String::from)
        .to_vec();
    for i in 0..n {
        args.extend(["-framerate".into(), FPS.to_string(), "-i".into()]);
        args.push(dir.join(format!("in{i}.h264")).display().to_string());
    }
    let mut filter = String::new();
    let mut layout = Vec::new();
    for i in 0..n {
        filter.push_str(&format!(
            "[{i}:v]scale={tw}:{th}:force_original_aspect_ratio=increase,crop={tw}:{th}[v{i}];"
        ));
        layout.push(format!(
            "{}_{}",
            (i % cols) as u32 * tw,
            (i / cols) as u32 * th
        ));
    }
    for i in 0..n {
        filter.push_str(&format!("[v{i}]"));
    }
    filter.push_str(&format!(
        "xstack=inputs={n}:layout={}:fill=black,pad={out_w}:{out_h}[out]",
        layout.join("|")
    ));
    let bitrate = if out_h >= 1080 { "3000k" } else { "1500k" };
    args.extend(
        [
            "-filter_complex",
            &filter,
            "-map",
            "[out]",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-b:v",
            bitrate,
            "-g",
            "30",
            "-r",
            "15",
            "-f",
            "mpegts",
            "/dev/null",
        ]
        .map(String::from),
    );
    let out = Command::new("ffmpeg")
        .args(&args)
        .output()
        .context("running ffmpeg")?;
    if !out.status.success() {
        bail!("ffmpeg failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let field = |name: &str| -> anyhow::Result<f64> {
        let at = text
            .find(name)
            .with_context(|| format!("no {name} in ffmpeg -benchmark output: {text}"))?;
        let rest = &text[at + name.len()..];
        let end = rest.find('s').unwrap_or(rest.len());
        Ok(rest[..end].parse()?)
    };
    Ok(field("utime=")? + field("stime=")?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("kiroku-mix-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    println!(
        "mixed pipeline, {:.0} s of {IN_W}x{IN_H}@{FPS} inputs per case (media-seconds per CPU-second; higher is better)",
        args.seconds
    );
    println!(
        "{:<16} {:>12} {:>12} {:>8} {:>10}",
        "case", "kiroku", "ffmpeg", "ratio", "kiroku MB"
    );
    for case in args.cases.split(',') {
        let (n, h) = case
            .split_once('x')
            .with_context(|| format!("case {case:?} is not INPUTSxHEIGHT"))?;
        let n: usize = n.parse()?;
        let out_h: u32 = h.parse()?;
        let out_w = out_h * 16 / 9;
        let inputs = make_inputs(n, args.seconds, &dir)?;
        let (cpu, bytes, ticks, stages) = run_kiroku(&inputs, out_w, out_h, args.seconds)?;
        let expected = (args.seconds * f64::from(FPS)) as u64;
        if ticks + 2 < expected {
            bail!("kiroku rendered {ticks} frames, expected about {expected}");
        }
        let ours = args.seconds / cpu;
        let theirs = if args.no_ffmpeg {
            None
        } else {
            Some(args.seconds / run_ffmpeg(&dir, n, out_w, out_h)?)
        };
        println!(
            "{:<16} {:>12.2} {:>12} {:>8} {:>10.1}",
            format!("{n}x360p->{out_h}p{FPS}"),
            ours,
            theirs.map_or("-".into(), |t| format!("{t:.2}")),
            theirs.map_or("-".into(), |t| format!("{:.2}x", ours / t)),
            bytes as f64 / 1e6
        );
        let total: f64 = stages.seconds().iter().map(|(_, s)| s).sum();
        let shares: Vec<String> = stages
            .seconds()
            .iter()
            .map(|(stage, s)| format!("{stage} {:.0}%", 100.0 * s / total.max(1e-9)))
            .collect();
        println!("{:<16} stages: {}", "", shares.join(", "));
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
