//! Mixed-stream pipeline throughput, offline: kiroku's mixed recorder
//! (per-input OpenH264 decode, nine-grid layout, CPU compositor, OpenH264
//! encode, Opus decode + mix + AAC, TS muxing) run as fast as it goes on
//! recorded inputs, side by side with ffmpeg producing the same picture
//! from the same inputs (`xstack` + `libx264 -preset veryfast`).
//!
//! Prints media-seconds per CPU-second for both and the ratio. kiroku's
//! figure includes the audio mix (N Opus decodes, mixing, AAC encode) and
//! the TS muxing; ffmpeg's is video only, so the comparison favours ffmpeg.
//!
//! `--quality` adds picture quality beside speed (issue 19): the mixed
//! recorder's uncompressed canvas is captured to a raw YUV file, encoded by
//! kiroku's encoder (one row per `--openh264` setting) and by x264
//! `veryfast` at the same bitrate and GOP, and each result is compared with
//! the raw canvas by ffmpeg's `psnr` and `ssim` filters. `--match` then
//! raises the first setting's bitrate until it reaches x264's PSNR and
//! times the whole pipeline there: the throughput ratio at equal quality.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
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
use kiroku::media::h264_codec::{Complexity, EncoderTuning, OpenH264Encoder, RateControlMode};
use kiroku::publish::source::{AudioConfig, AudioSource, Pattern, Rgb, VideoConfig, VideoSource};
use kiroku::record::action::Action;
use kiroku::record::mixed::{MixedRecorder, MixedSettings, StageTimes};
use kiroku::record::single::OfferedTrack;
use kiroku::room::{Codec, MediaFrame, TrackKind};
use kiroku_gpu::{EncodeError, EncodedFrame, EncoderSettings, Picture, VideoEncoder};

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
    /// Input pictures: `bars` (kiroku publish's scrolling colour bars:
    /// mostly flat colours) or `texture` (fractal noise panned at sub-pixel
    /// steps with a textured square moving over it: detail at every scale,
    /// like a camera). Default: bars, or texture with --quality.
    #[arg(long)]
    content: Option<Content>,
    /// OpenH264 settings of kiroku's encoder, comma-separated, applied in
    /// order over kiroku's defaults: `old` (the settings before issue 19),
    /// `complexity=low|medium|high`, `rc=bitrate|quality|timestamp|bufferbased`,
    /// `bgd=on|off` (background detection), `aq=on|off`, `scd=on|off`
    /// (scene change detection), `ltr=on|off`, `skip=on|off` (frame
    /// skipping), `qp=MIN-MAX`, `scale=F` (bitrate × F). Repeat the option
    /// for a sweep (--quality); the pipeline runs with the first.
    #[arg(long = "openh264", value_name = "SETTINGS")]
    openh264: Vec<String>,
    /// Measure picture quality against x264 veryfast (needs ffmpeg).
    #[arg(long)]
    quality: bool,
    /// With --quality: find the bitrate at which the first --openh264
    /// setting reaches x264's mean PSNR-Y, and time the pipeline there.
    #[arg(long = "match")]
    match_x264: bool,
    /// Threads of x264 in the quality encode (1: a per-core figure).
    #[arg(long, default_value_t = 1)]
    x264_threads: u32,
    /// Keep the work files (raw canvas, encodes, per-frame stats) here.
    #[arg(long)]
    keep: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Content {
    Bars,
    Texture,
}

const FPS: u32 = 15;
const IN_W: u32 = 640;
const IN_H: u32 = 360;
const GOP_SECONDS: u32 = 2;

/// The canvas bitrate of a case (the figures docs/performance.md uses).
fn case_bitrate(out_h: u32) -> u32 {
    if out_h >= 1080 {
        3_000_000
    } else {
        1_500_000
    }
}

/// One `--openh264` setting.
#[derive(Clone)]
struct Variant {
    label: String,
    tuning: EncoderTuning,
    scale: f64,
}

/// The settings kiroku used before issue 19. The measurements kept them as
/// the defaults (docs/performance.md "Quality beside speed"); should the
/// defaults move, write the old ones out here so that they stay measurable.
fn old_tuning() -> EncoderTuning {
    EncoderTuning::default()
}

fn parse_variant(spec: &str) -> anyhow::Result<Variant> {
    let mut tuning = EncoderTuning::default();
    let mut scale = 1.0;
    let on_off = |key: &str, v: &str| match v {
        "on" | "true" | "1" => Ok(true),
        "off" | "false" | "0" => Ok(false),
        _ => bail!("{key}={v}: expected on or off"),
    };
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once('=').unwrap_or((item, ""));
        match key {
            "default" => tuning = EncoderTuning::default(),
            "old" => tuning = old_tuning(),
            "complexity" => {
                tuning.complexity = match value {
                    "low" => Complexity::Low,
                    "medium" => Complexity::Medium,
                    "high" => Complexity::High,
                    _ => bail!("complexity={value}: expected low, medium or high"),
                }
            }
            "rc" => {
                tuning.rate_control = match value {
                    "bitrate" => RateControlMode::Bitrate,
                    "quality" => RateControlMode::Quality,
                    "timestamp" => RateControlMode::Timestamp,
                    "bufferbased" => RateControlMode::Bufferbased,
                    _ => bail!("rc={value}: expected bitrate, quality, timestamp or bufferbased"),
                }
            }
            "bgd" => tuning.background_detection = on_off(key, value)?,
            "aq" => tuning.adaptive_quantization = on_off(key, value)?,
            "scd" => tuning.scene_change_detect = on_off(key, value)?,
            "ltr" => tuning.long_term_reference = on_off(key, value)?,
            "skip" => tuning.skip_frames = on_off(key, value)?,
            "qp" => {
                let (lo, hi) = value
                    .split_once('-')
                    .with_context(|| format!("qp={value}: expected MIN-MAX"))?;
                let (lo, hi): (u8, u8) = (lo.parse()?, hi.parse()?);
                if hi > 51 || lo > hi {
                    bail!("qp={value}: expected MIN <= MAX <= 51");
                }
                (tuning.qp_min, tuning.qp_max) = (lo, hi);
            }
            "scale" => {
                scale = value
                    .parse()
                    .with_context(|| format!("scale={value}: expected a number"))?;
                if !(0.1..=10.0).contains(&scale) {
                    bail!("scale={value}: expected 0.1..=10");
                }
            }
            _ => bail!("unknown OpenH264 setting {item:?} (see --help)"),
        }
    }
    let label = if spec.trim().is_empty() {
        "default".to_owned()
    } else {
        spec.trim().to_owned()
    };
    Ok(Variant {
        label,
        tuning,
        scale,
    })
}

struct Input {
    video: Vec<(Duration, Vec<u8>, bool)>,
    audio: Vec<(u64, Vec<u8>)>,
}

/// Fractal value noise, panned: the `texture` content. Everything is a
/// function of the frame's media time, like kiroku publish's pattern.
struct Texture {
    /// Planes of a picture twice the input's size; each frame shows a
    /// window of it.
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
    phase: f64,
}

const TEX_W: usize = 2 * IN_W as usize;
const TEX_H: usize = 2 * IN_H as usize;

/// A deterministic hash of a lattice point, 0..1.
fn lattice(seed: u64, x: i64, y: i64) -> f64 {
    let mut h = seed
        ^ (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 33;
    h = h.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    h ^= h >> 33;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Sum of value-noise octaves of the given cell sizes over a w×h plane,
/// octave `c` weighted by `c^slope`, normalised to 0..=1.
fn noise_plane(seed: u64, w: usize, h: usize, cells: &[usize], slope: f64) -> Vec<f64> {
    let mut acc = vec![0f64; w * h];
    for (o, &cell) in cells.iter().enumerate() {
        let weight = (cell as f64).powf(slope);
        let s = seed.wrapping_add(o as u64 * 0x1000_0001);
        for y in 0..h {
            let gy = (y / cell) as i64;
            let fy = (y % cell) as f64 / cell as f64;
            let sy = fy * fy * (3.0 - 2.0 * fy);
            for x in 0..w {
                let gx = (x / cell) as i64;
                let fx = (x % cell) as f64 / cell as f64;
                let sx = fx * fx * (3.0 - 2.0 * fx);
                let top = lattice(s, gx, gy) * (1.0 - sx) + lattice(s, gx + 1, gy) * sx;
                let bottom = lattice(s, gx, gy + 1) * (1.0 - sx) + lattice(s, gx + 1, gy + 1) * sx;
                acc[y * w + x] += weight * (top * (1.0 - sy) + bottom * sy);
            }
        }
    }
    let (min, max) = acc
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let span = (max - min).max(1e-9);
    acc.iter().map(|v| (v - min) / span).collect()
}

fn to_u8(plane: &[f64], lo: f64, hi: f64) -> Vec<u8> {
    plane
        .iter()
        .map(|v| (lo + (hi - lo) * v.clamp(0.0, 1.0)).round() as u8)
        .collect()
}

impl Texture {
    fn new(index: usize) -> Self {
        let seed = 0x6b69_726f_6b75 + index as u64 * 7919;
        let (w, h) = (TEX_W, TEX_H);
        // Luma: fine-grained fractal noise (a nearly flat spectrum down to
        // 2-pixel detail, like foliage or fabric) plus hard-edged regions
        // (a mid-scale noise field thresholded: edges in every direction,
        // like object outlines).
        let grain = noise_plane(seed, w, h, &[64, 32, 16, 8, 4, 2], 0.3);
        let regions = noise_plane(seed ^ 3, w, h, &[96, 48, 24], 1.0);
        let y: Vec<f64> = grain
            .iter()
            .zip(&regions)
            .map(|(g, r)| 0.15 + 0.55 * g + if *r > 0.5 { 0.3 } else { 0.0 })
            .collect();
        let (cw, ch) = (w / 2, h / 2);
        Self {
            y: to_u8(&y, 16.0, 235.0),
            u: to_u8(
                &noise_plane(seed ^ 1, cw, ch, &[128, 32, 8], 0.8),
                98.0,
                158.0,
            ),
            v: to_u8(
                &noise_plane(seed ^ 2, cw, ch, &[128, 32, 8], 0.8),
                98.0,
                158.0,
            ),
            phase: index as f64 * 0.77,
        }
    }

    /// The picture at media time `t` (seconds): the window pans on a
    /// Lissajous path (up to ~110 px/s, at sub-pixel positions, so every
    /// frame needs interpolation to predict), and a 160-pixel square cut
    /// from the texture crosses it on another path (occlusions).
    fn render(&self, t: f64, pic: &mut Picture) {
        use std::f64::consts::TAU;
        let (w, h) = (IN_W as usize, IN_H as usize);
        let x0 = (TEX_W - w) as f64 * (0.5 + 0.48 * (TAU * t / 17.0 + self.phase).sin());
        let y0 = (TEX_H - h) as f64 * (0.5 + 0.48 * (TAU * t / 13.0 + 2.0 * self.phase).sin());
        sample(&self.y, TEX_W, x0, y0, &mut pic.y, w, h);
        let (cw, ch) = (w / 2, h / 2);
        sample(&self.u, TEX_W / 2, x0 / 2.0, y0 / 2.0, &mut pic.u, cw, ch);
        sample(&self.v, TEX_W / 2, x0 / 2.0, y0 / 2.0, &mut pic.v, cw, ch);
        let side = 160usize;
        let bx =
            ((w - side) as f64 * (0.5 - 0.5 * (TAU * t / 5.0 + self.phase).cos())) as usize & !1;
        let by = ((h - side) as f64 * (0.5 - 0.5 * (TAU * t / 3.7).cos())) as usize & !1;
        // The square shows a fixed part of the texture (chroma planes
        // swapped, so it stands out): it moves rigidly.
        let (sx, sy) = (TEX_W - side, TEX_H - side);
        for row in 0..side {
            let src = (sy + row) * TEX_W + sx;
            let dst = (by + row) * w + bx;
            pic.y[dst..dst + side].copy_from_slice(&self.y[src..src + side]);
        }
        for row in 0..side / 2 {
            let src = (sy / 2 + row) * (TEX_W / 2) + sx / 2;
            let dst = (by / 2 + row) * cw + bx / 2;
            pic.u[dst..dst + side / 2].copy_from_slice(&self.v[src..src + side / 2]);
            pic.v[dst..dst + side / 2].copy_from_slice(&self.u[src..src + side / 2]);
        }
    }
}

/// Bilinear window of `src` (row length `stride`) at (x0, y0) into `dst`
/// (w×h): one fractional offset for the whole window.
fn sample(src: &[u8], stride: usize, x0: f64, y0: f64, dst: &mut [u8], w: usize, h: usize) {
    let (ix, iy) = (x0.floor() as usize, y0.floor() as usize);
    let fx = ((x0 - x0.floor()) * 256.0) as u32;
    let fy = ((y0 - y0.floor()) * 256.0) as u32;
    let (a, b, c, d) = (
        (256 - fx) * (256 - fy),
        fx * (256 - fy),
        (256 - fx) * fy,
        fx * fy,
    );
    for (row, out) in dst.chunks_exact_mut(w).take(h).enumerate() {
        let top = &src[(iy + row) * stride + ix..];
        let bottom = &src[(iy + row + 1) * stride + ix..];
        for (x, px) in out.iter_mut().enumerate() {
            let v = a * u32::from(top[x])
                + b * u32::from(top[x + 1])
                + c * u32::from(bottom[x])
                + d * u32::from(bottom[x + 1]);
            *px = ((v + 32_768) >> 16) as u8;
        }
    }
}

fn make_inputs(n: usize, seconds: f64, content: Content, dir: &Path) -> anyhow::Result<Vec<Input>> {
    let frames = (seconds * f64::from(FPS)) as u64;
    let mut inputs = Vec::new();
    for i in 0..n {
        let hue = (i * 47 % 255) as u8;
        let mut audio = AudioSource::new(AudioConfig {
            frequency_hz: 300.0 + 40.0 * i as f32,
            ..AudioConfig::default()
        })?;
        let mut v = Vec::new();
        let mut annexb = Vec::new();
        let at = |k: u64| Duration::from_nanos(k * 1_000_000_000 / u64::from(FPS));
        match content {
            Content::Bars => {
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
                for k in 0..frames {
                    let f = video.next_frame(at(k))?;
                    annexb.extend_from_slice(&f.data);
                    v.push((at(k), f.data, f.keyframe));
                }
            }
            Content::Texture => {
                // A publisher's camera: the picture encoded at 600 kbit/s
                // like `kiroku publish` does, with the settings pinned so
                // that the inputs do not change when kiroku's defaults do.
                let texture = Texture::new(i);
                let mut pic = Picture::filled(IN_W, IN_H, kiroku_gpu::Yuv::BLACK);
                let mut enc = OpenH264Encoder::open_tuned(
                    EncoderSettings {
                        width: IN_W,
                        height: IN_H,
                        fps: FPS,
                        bitrate_bps: 600_000,
                        gop_frames: 30,
                    },
                    old_tuning(),
                )?;
                for k in 0..frames {
                    texture.render(at(k).as_secs_f64(), &mut pic);
                    let f = enc
                        .encode(&pic, false)?
                        .context("the input encoder skipped a frame")?;
                    annexb.extend_from_slice(&f.data);
                    v.push((at(k), f.data, f.keyframe));
                }
            }
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
        report_stamp: None,
        contiguous: true,
    }
}

/// kiroku's encoder that also writes every canvas it is given to a raw
/// YUV 4:2:0 file: the uncompressed composite, exactly as the recorder
/// hands it to the encoder.
struct Capture {
    inner: OpenH264Encoder,
    raw: BufWriter<File>,
}

impl VideoEncoder for Capture {
    fn name(&self) -> &'static str {
        "capture"
    }

    fn encode(
        &mut self,
        picture: &Picture,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, EncodeError> {
        for plane in [&picture.y, &picture.u, &picture.v] {
            self.raw
                .write_all(plane)
                .map_err(|e| EncodeError::Codec(format!("raw canvas capture: {e}")))?;
        }
        self.inner.encode(picture, force_keyframe)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        // Checked by the caller: the file must hold every tick's canvas.
        let _ = self.raw.flush();
    }
}

/// What one run of the mixed recorder gave.
struct PipelineRun {
    cpu: f64,
    bytes: u64,
    ticks: u64,
    stages: StageTimes,
}

/// Runs kiroku's mixed recorder over the inputs with the given encoder
/// tuning and bitrate; with `capture`, also writes the raw canvas there.
fn run_kiroku(
    inputs: &[Input],
    out_w: u32,
    out_h: u32,
    seconds: f64,
    variant: &Variant,
    capture: Option<&Path>,
) -> anyhow::Result<PipelineRun> {
    let epoch = SystemTime::now();
    let epoch_us = epoch.duration_since(UNIX_EPOCH)?.as_micros() as i64;
    let transcode = MixTranscode {
        video: VideoParams {
            width: out_w,
            height: out_h,
            fps: FPS,
            bitrate_bps: (f64::from(case_bitrate(out_h)) * variant.scale) as u32,
            gop_seconds: GOP_SECONDS,
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
    let encoder =
        OpenH264Encoder::open_tuned(MixedRecorder::encoder_settings(&transcode), variant.tuning)?;
    let encoder: Box<dyn VideoEncoder> = match capture {
        Some(path) => Box::new(Capture {
            inner: encoder,
            raw: BufWriter::with_capacity(1 << 22, File::create(path)?),
        }),
        None => Box::new(encoder),
    };
    let compositor = Box::new(kiroku_gpu::cpu::CpuCompositor::new());
    let mut rec = MixedRecorder::new(
        settings,
        Subscription::default(),
        MixLayout::default(),
        compositor,
        Some(encoder),
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
        // The wall clock is the media's arrival time: frame k arrives at
        // its media time and is rendered once the latency has passed, as
        // in a live task (the timeline may hold a track's first frames a
        // while for sender reports; the latency covers that). As the
        // worker does, tick again while a frame is due: one call renders
        // at most one picture.
        let now = epoch_us + (k as i64) * 1_000_000 / i64::from(FPS);
        loop {
            count(rec.tick(now));
            if rec.next_due_us().is_none_or(|due| due > now) {
                break;
            }
        }
    }
    // The task ends with the media: `finish` renders what the latency
    // still holds, up to the media's end.
    count(rec.finish(epoch_us + (seconds * 1e6) as i64));
    let cpu = common::cpu_seconds(pid)? - cpu0;
    let stats = &rec.mix_stats;
    // Offline the recorder is never behind its (simulated) clock: a frame
    // dropped or skipped here would be work not done, and a wrong figure.
    if stats.output_frames_dropped > 0 || stats.ticks_skipped > 0 {
        bail!(
            "the recorder dropped {} and skipped {} output frames",
            stats.output_frames_dropped,
            stats.ticks_skipped
        );
    }
    let (ticks, stages) = (stats.ticks, stats.stages);
    // Dropping the recorder flushes the capture.
    drop(rec);
    Ok(PipelineRun {
        cpu,
        bytes,
        ticks,
        stages,
    })
}

/// utime + stime from ffmpeg's `-benchmark` report.
fn benchmark_cpu(stderr: &str) -> anyhow::Result<f64> {
    let field = |name: &str| -> anyhow::Result<f64> {
        let at = stderr
            .find(name)
            .with_context(|| format!("no {name} in ffmpeg -benchmark output: {stderr}"))?;
        let rest = &stderr[at + name.len()..];
        let end = rest.find('s').unwrap_or(rest.len());
        Ok(rest[..end].parse()?)
    };
    Ok(field("utime=")? + field("stime=")?)
}

/// Runs ffmpeg in `dir`; its stderr.
fn ffmpeg(dir: &Path, args: &[String]) -> anyhow::Result<String> {
    let out = Command::new("ffmpeg")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running ffmpeg")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        bail!("ffmpeg {} failed: {stderr}", args.join(" "));
    }
    Ok(stderr)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// ffmpeg: the same grid from the same H.264 inputs; returns CPU seconds.
fn run_ffmpeg(dir: &Path, n: usize, out_w: u32, out_h: u32) -> anyhow::Result<f64> {
    let cols = (1..=5).find(|c| c * c >= n).unwrap_or(5);
    let (tw, th) = ((out_w / cols as u32) & !1, (out_h / cols as u32) & !1);
    let mut args = strings(&["-benchmark", "-hide_banner", "-nostats", "-y"]);
    for i in 0..n {
        args.extend(["-framerate".into(), FPS.to_string(), "-i".into()]);
        args.push(format!("in{i}.h264"));
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
    let bitrate = format!("{}k", case_bitrate(out_h) / 1000);
    let gop = (GOP_SECONDS * FPS).to_string();
    args.extend(strings(&[
        "-filter_complex",
        &filter,
        "-map",
        "[out]",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-b:v",
        &bitrate,
        "-g",
        &gop,
        "-r",
        "15",
        "-f",
        "mpegts",
        "/dev/null",
    ]));
    benchmark_cpu(&ffmpeg(dir, &args)?)
}

/// The raw canvas of one case.
struct Raw {
    path: PathBuf,
    w: u32,
    h: u32,
    frames: usize,
}

impl Raw {
    fn frame_len(&self) -> usize {
        let (cw, ch) = kiroku_gpu::chroma_size(self.w, self.h);
        (self.w * self.h + 2 * cw * ch) as usize
    }

    /// ffmpeg's input options for this file.
    fn input_args(&self, path: &str) -> Vec<String> {
        strings(&[
            "-f",
            "rawvideo",
            "-pix_fmt",
            "yuv420p",
            "-s",
            &format!("{}x{}", self.w, self.h),
            "-framerate",
            &FPS.to_string(),
            "-i",
            path,
        ])
    }

    fn media_seconds(&self) -> f64 {
        self.frames as f64 / f64::from(FPS)
    }
}

/// One encode of the raw canvas and how close it came to it.
struct Scored {
    cpu: f64,
    kbps: f64,
    skipped: usize,
    psnr_y: f64,
    psnr_y_p10: f64,
    psnr_yuv: f64,
    ssim: f64,
}

/// Encodes the raw canvas with kiroku's encoder (timed: reading the file
/// and encoding, like ffmpeg's side) into `out`; the CPU seconds and the
/// indices of frames the encoder skipped.
fn encode_openh264(
    raw: &Raw,
    bitrate_bps: u32,
    tuning: EncoderTuning,
    out: &Path,
) -> anyhow::Result<(f64, Vec<usize>)> {
    let mut enc = OpenH264Encoder::open_tuned(
        EncoderSettings {
            width: raw.w,
            height: raw.h,
            fps: FPS,
            bitrate_bps,
            gop_frames: GOP_SECONDS * FPS,
        },
        tuning,
    )?;
    let mut pic = Picture::filled(raw.w, raw.h, kiroku_gpu::Yuv::BLACK);
    let mut reader = BufReader::with_capacity(1 << 22, File::open(&raw.path)?);
    let mut writer = BufWriter::new(File::create(out)?);
    let mut skipped = Vec::new();
    let pid = std::process::id();
    let cpu0 = common::cpu_seconds(pid)?;
    for k in 0..raw.frames {
        reader.read_exact(&mut pic.y)?;
        reader.read_exact(&mut pic.u)?;
        reader.read_exact(&mut pic.v)?;
        match enc.encode(&pic, false)? {
            Some(f) => writer.write_all(&f.data)?,
            None => skipped.push(k),
        }
    }
    writer.flush()?;
    Ok((common::cpu_seconds(pid)? - cpu0, skipped))
}

/// Encodes the raw canvas with x264 veryfast at the same bitrate and GOP;
/// the CPU seconds ffmpeg reports.
fn encode_x264(raw: &Raw, dir: &Path, bitrate_bps: u32, threads: u32) -> anyhow::Result<f64> {
    let mut args = strings(&["-benchmark", "-hide_banner", "-nostats", "-y"]);
    args.extend(raw.input_args("canvas.yuv"));
    args.extend(strings(&[
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-b:v",
        &format!("{}k", bitrate_bps / 1000),
        "-g",
        &(GOP_SECONDS * FPS).to_string(),
        "-threads",
        &threads.to_string(),
        "-f",
        "h264",
        "x264.h264",
    ]));
    benchmark_cpu(&ffmpeg(dir, &args)?)
}

/// PSNR and SSIM of the H.264 file `encoded` (in `dir`) against the raw
/// canvas, frame by frame, with ffmpeg's filters. Frames the encoder
/// skipped are shown as the previous frame again, as a player would.
fn score(
    raw: &Raw,
    dir: &Path,
    encoded: &str,
    skipped: &[usize],
) -> anyhow::Result<(f64, f64, f64, f64)> {
    let mut args = strings(&["-hide_banner", "-nostats", "-y"]);
    if skipped.is_empty() {
        args.extend(strings(&["-f", "h264", "-framerate", "15", "-i", encoded]));
    } else {
        // Decode, then repeat the frame before each skipped one.
        ffmpeg(
            dir,
            &strings(&[
                "-hide_banner",
                "-nostats",
                "-y",
                "-f",
                "h264",
                "-i",
                encoded,
                "-f",
                "rawvideo",
                "-pix_fmt",
                "yuv420p",
                "decoded.yuv",
            ]),
        )?;
        let len = raw.frame_len();
        let mut reader = BufReader::new(File::open(dir.join("decoded.yuv"))?);
        let mut writer = BufWriter::new(File::create(dir.join("shown.yuv"))?);
        let mut frame = vec![0u8; len];
        let mut next_skip = skipped.iter().peekable();
        for k in 0..raw.frames {
            if next_skip.peek() == Some(&&k) {
                next_skip.next();
            } else {
                reader.read_exact(&mut frame)?;
            }
            writer.write_all(&frame)?;
        }
        writer.flush()?;
        args.extend(raw.input_args("shown.yuv"));
    }
    args.extend(raw.input_args("canvas.yuv"));
    // Both inputs get frame numbers as timestamps, so the filters pair
    // frame k with frame k whatever the demuxers guessed.
    args.extend(strings(&[
        "-lavfi",
        "[0:v]settb=1/15,setpts=N[d];[1:v]settb=1/15,setpts=N,split[r1][r2];\
         [d][r1]psnr=stats_file=psnr.log:shortest=1[m];[m][r2]ssim=stats_file=ssim.log:shortest=1",
        "-f",
        "null",
        "-",
    ]));
    ffmpeg(dir, &args)?;
    let stats = |file: &str, keys: &[&str]| -> anyhow::Result<Vec<Vec<f64>>> {
        let text = std::fs::read_to_string(dir.join(file))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                keys.iter()
                    .map(|key| {
                        let value = line
                            .split_whitespace()
                            .find_map(|f| f.strip_prefix(&format!("{key}:")))
                            .with_context(|| format!("no {key} in {file} line {line:?}"))?;
                        // Identical frames give `inf`; 100 dB stands for them.
                        Ok(value.parse::<f64>()?.min(100.0))
                    })
                    .collect()
            })
            .collect()
    };
    let psnr = stats("psnr.log", &["psnr_y", "psnr_avg"])?;
    let ssim = stats("ssim.log", &["All"])?;
    if psnr.len() != raw.frames || ssim.len() != raw.frames {
        bail!(
            "{encoded}: {} PSNR and {} SSIM frames, expected {}",
            psnr.len(),
            ssim.len(),
            raw.frames
        );
    }
    let n = raw.frames as f64;
    let mut y: Vec<f64> = psnr.iter().map(|p| p[0]).collect();
    y.sort_by(f64::total_cmp);
    let p10 = y[(y.len() - 1) / 10];
    Ok((
        y.iter().sum::<f64>() / n,
        p10,
        psnr.iter().map(|p| p[1]).sum::<f64>() / n,
        ssim.iter().map(|s| s[0]).sum::<f64>() / n,
    ))
}

fn score_openh264(raw: &Raw, dir: &Path, bitrate_bps: u32, v: &Variant) -> anyhow::Result<Scored> {
    let file = "openh264.h264";
    let (cpu, skipped) = encode_openh264(raw, bitrate_bps, v.tuning, &dir.join(file))?;
    let bytes = std::fs::metadata(dir.join(file))?.len();
    let (psnr_y, psnr_y_p10, psnr_yuv, ssim) = score(raw, dir, file, &skipped)?;
    Ok(Scored {
        cpu,
        kbps: bytes as f64 * 8.0 / raw.media_seconds() / 1000.0,
        skipped: skipped.len(),
        psnr_y,
        psnr_y_p10,
        psnr_yuv,
        ssim,
    })
}

fn print_quality_header() {
    println!(
        "  {:<44} {:>7} {:>7} {:>7} {:>8} {:>7} {:>5} {:>13} {:>8}",
        "encoder",
        "kbit/s",
        "PSNR-Y",
        "p10-Y",
        "PSNR-avg",
        "SSIM",
        "skip",
        "media-s/CPU-s",
        "vs x264"
    );
}

fn print_quality_row(raw: &Raw, label: &str, s: &Scored, x264_speed: Option<f64>) {
    let speed = raw.media_seconds() / s.cpu.max(1e-9);
    println!(
        "  {:<44} {:>7.0} {:>7.2} {:>7.2} {:>8.2} {:>7.4} {:>5} {:>13.2} {:>8}",
        label,
        s.kbps,
        s.psnr_y,
        s.psnr_y_p10,
        s.psnr_yuv,
        s.ssim,
        s.skipped,
        speed,
        x264_speed.map_or("-".into(), |x| format!("{:.2}x", speed / x)),
    );
}

/// The mixed pipeline's throughput row of one case.
fn print_pipeline(case: &str, seconds: f64, run: &PipelineRun, theirs: Option<f64>) {
    let ours = seconds / run.cpu;
    println!(
        "{:<16} {:>12.2} {:>12} {:>8} {:>10.1}",
        case,
        ours,
        theirs.map_or("-".into(), |t| format!("{t:.2}")),
        theirs.map_or("-".into(), |t| format!("{:.2}x", ours / t)),
        run.bytes as f64 / 1e6
    );
    let total: f64 = run.stages.seconds().iter().map(|(_, s)| s).sum();
    let shares: Vec<String> = run
        .stages
        .seconds()
        .iter()
        .map(|(stage, s)| format!("{stage} {:.0}%", 100.0 * s / total.max(1e-9)))
        .collect();
    println!("{:<16} stages: {}", "", shares.join(", "));
}

/// Quality at bitrate × scale for the first variant, remembered so that
/// the search never encodes the same point twice.
struct Search<'a> {
    raw: &'a Raw,
    dir: &'a Path,
    base_bps: u32,
    variant: &'a Variant,
    points: Vec<(f64, Scored)>,
}

impl Search<'_> {
    fn at(&mut self, scale: f64) -> anyhow::Result<f64> {
        let scale = (scale * 100.0).round() / 100.0;
        if let Some((_, s)) = self.points.iter().find(|(x, _)| (*x - scale).abs() < 1e-9) {
            return Ok(s.psnr_y);
        }
        let bps = (f64::from(self.base_bps) * scale) as u32;
        let s = score_openh264(self.raw, self.dir, bps, self.variant)?;
        print_quality_row(
            self.raw,
            &format!("  {} at {:.2}x", self.variant.label, scale),
            &s,
            None,
        );
        let psnr = s.psnr_y;
        self.points.push((scale, s));
        Ok(psnr)
    }

    /// The smallest bitrate scale (to 0.01) whose mean PSNR-Y reaches
    /// `target`, by secant steps on PSNR against log(bitrate); None when
    /// even 4× the bitrate does not.
    fn reach(&mut self, target: f64) -> anyhow::Result<Option<f64>> {
        let (mut x0, mut p0) = (1.0f64, self.at(1.0)?);
        // About 5 dB per doubling is typical at these rates: a first guess.
        let mut x1 = (x0 * 2f64.powf((target - p0) / 5.0)).clamp(0.25, 4.0);
        let mut p1 = self.at(x1)?;
        for _ in 0..6 {
            if (p1 - target).abs() < 0.03 || (x1 - x0).abs() < 0.011 {
                break;
            }
            let slope = (p1 - p0) / (x1.log2() - x0.log2());
            let next = if slope > 0.05 {
                x1 * 2f64.powf((target - p1) / slope)
            } else {
                x1 * 1.5
            };
            (x0, p0) = (x1, p1);
            x1 = next.clamp(0.25, 4.0);
            p1 = self.at(x1)?;
        }
        // Then halve the bracket down to 0.02 (PSNR is not strictly
        // monotonic in the bitrate: the smallest scale that measured at or
        // above the target wins).
        let above = |pts: &[(f64, Scored)]| {
            pts.iter()
                .filter(|(_, s)| s.psnr_y >= target)
                .map(|(x, _)| *x)
                .fold(f64::INFINITY, f64::min)
        };
        let below = |pts: &[(f64, Scored)], best: f64| {
            pts.iter()
                .filter(|(x, s)| s.psnr_y < target && *x < best)
                .map(|(x, _)| *x)
                .fold(0.0, f64::max)
        };
        let mut best = above(&self.points);
        // The secant may stop just short of the target: step up.
        let mut step = 0;
        while !best.is_finite() && step < 12 {
            let low = below(&self.points, f64::INFINITY);
            if low >= 4.0 {
                break;
            }
            self.at((low + 0.02).min(4.0))?;
            best = above(&self.points);
            step += 1;
        }
        for _ in 0..5 {
            let low = below(&self.points, best);
            if !best.is_finite() || low == 0.0 || best - low <= 0.025 {
                break;
            }
            self.at((best + low) / 2.0)?;
            best = above(&self.points);
        }
        Ok(best.is_finite().then_some((best * 100.0).round() / 100.0))
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let content = args.content.unwrap_or(if args.quality {
        Content::Texture
    } else {
        Content::Bars
    });
    let specs = if args.openh264.is_empty() {
        vec![String::new()]
    } else {
        args.openh264.clone()
    };
    let variants = specs
        .iter()
        .map(|s| parse_variant(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let first = &variants[0];
    let dir: PathBuf = match &args.keep {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("kiroku-mix-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let result = run(&args, content, &variants, first, &dir);
    if args.keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run(
    args: &Args,
    content: Content,
    variants: &[Variant],
    first: &Variant,
    dir: &Path,
) -> anyhow::Result<()> {
    println!(
        "mixed pipeline, {:.0} s of {IN_W}x{IN_H}@{FPS} {} inputs per case, kiroku's encoder: {} (media-seconds per CPU-second; higher is better)",
        args.seconds,
        match content {
            Content::Bars => "bars",
            Content::Texture => "texture",
        },
        first.label,
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
        let inputs = make_inputs(n, args.seconds, content, dir)?;
        let run = run_kiroku(&inputs, out_w, out_h, args.seconds, first, None)?;
        let expected = (args.seconds * f64::from(FPS)) as u64;
        if run.ticks + 2 < expected {
            bail!(
                "kiroku rendered {} frames, expected about {expected}",
                run.ticks
            );
        }
        let theirs = if args.no_ffmpeg {
            None
        } else {
            Some(args.seconds / run_ffmpeg(dir, n, out_w, out_h)?)
        };
        let name = format!("{n}x360p->{out_h}p{FPS}");
        print_pipeline(&name, args.seconds, &run, theirs);
        if args.quality {
            quality(args, &inputs, variants, dir, (out_w, out_h), &name, theirs)?;
        }
    }
    Ok(())
}

/// The quality part of one case (see the file's comment).
fn quality(
    args: &Args,
    inputs: &[Input],
    variants: &[Variant],
    dir: &Path,
    (out_w, out_h): (u32, u32),
    name: &str,
    ffmpeg_pipeline: Option<f64>,
) -> anyhow::Result<()> {
    let first = &variants[0];
    // The canvas, captured from an untimed run of the same pipeline.
    let path = dir.join("canvas.yuv");
    let run = run_kiroku(inputs, out_w, out_h, args.seconds, first, Some(&path))?;
    let mut raw = Raw {
        path,
        w: out_w,
        h: out_h,
        frames: 0,
    };
    let len = std::fs::metadata(&raw.path)?.len();
    raw.frames = (len / raw.frame_len() as u64) as usize;
    if raw.frames as u64 != run.ticks || len % raw.frame_len() as u64 != 0 {
        bail!(
            "raw canvas: {len} bytes for {} ticks of {} bytes",
            run.ticks,
            raw.frame_len()
        );
    }
    // The last ticks (rendered by `finish` after the inputs end) repeat
    // the last pictures: static frames would flatter both encoders.
    raw.frames = raw.frames.min((args.seconds * f64::from(FPS)) as usize);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&raw.path)?
        .set_len(raw.frames as u64 * raw.frame_len() as u64)?;
    let bps = case_bitrate(out_h);
    println!(
        "{name} quality: {} frames of the raw canvas, {} kbit/s, GOP {} frames; x264 with {} thread(s); PSNR-Y: mean and 10th percentile of the frames",
        raw.frames,
        bps / 1000,
        GOP_SECONDS * FPS,
        args.x264_threads
    );
    print_quality_header();
    let cpu = encode_x264(&raw, dir, bps, args.x264_threads)?;
    let bytes = std::fs::metadata(dir.join("x264.h264"))?.len();
    let (psnr_y, psnr_y_p10, psnr_yuv, ssim) = score(&raw, dir, "x264.h264", &[])?;
    let x264 = Scored {
        cpu,
        kbps: bytes as f64 * 8.0 / raw.media_seconds() / 1000.0,
        skipped: 0,
        psnr_y,
        psnr_y_p10,
        psnr_yuv,
        ssim,
    };
    let x264_speed = raw.media_seconds() / x264.cpu.max(1e-9);
    print_quality_row(&raw, "x264 veryfast", &x264, None);
    for v in variants {
        let bitrate = (f64::from(bps) * v.scale) as u32;
        let s = score_openh264(&raw, dir, bitrate, v)?;
        print_quality_row(&raw, &format!("openh264 {}", v.label), &s, Some(x264_speed));
    }
    if !args.match_x264 {
        return Ok(());
    }
    println!(
        "  searching the bitrate at which openh264 {} reaches x264's {:.2} dB",
        first.label, x264.psnr_y
    );
    let mut search = Search {
        raw: &raw,
        dir,
        base_bps: bps,
        variant: first,
        points: Vec::new(),
    };
    let Some(scale) = search.reach(x264.psnr_y)? else {
        println!("  not reached at 4x the bitrate");
        return Ok(());
    };
    let matched = Variant {
        scale,
        ..first.clone()
    };
    let run = run_kiroku(inputs, out_w, out_h, args.seconds, &matched, None)?;
    let ours = args.seconds / run.cpu;
    println!(
        "  equal quality: openh264 {} at {:.2}x ({} kbit/s) vs x264 at {} kbit/s; pipeline {ours:.2} media-s per CPU-s, ffmpeg {}, ratio {}",
        first.label,
        scale,
        (f64::from(bps) * scale / 1000.0).round(),
        bps / 1000,
        ffmpeg_pipeline.map_or("-".into(), |t| format!("{t:.2}")),
        ffmpeg_pipeline.map_or("-".into(), |t| format!("{:.2}x", ours / t)),
    );
    Ok(())
}
