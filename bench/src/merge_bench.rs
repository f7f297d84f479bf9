//! `kiroku merge` speed, in media seconds merged per wall second, side by
//! side with ffmpeg doing the same job in the same run:
//!
//! - **remux** (`kiroku merge -m 0`): one user's separate audio and video
//!   TS segments into one MP4, against `ffmpeg -c copy` over the same
//!   segments (concat demuxer, both streams, faststart);
//! - **re-encode** (`kiroku merge -m 0 -p 15 -r W H`, OpenH264): against
//!   `ffmpeg` decoding the same segments and encoding with libx264
//!   `veryfast` at the same size and rate (audio copied in both).
//!
//! The input is made once with ffmpeg (testsrc2 + sine, H.264 baseline
//! with a 2 s GOP, AAC 48 kHz stereo, 10 s segments) and named as kiroku's
//! single-stream recordings are (spec §3a). Build with `--release`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser)]
#[command(about = "kiroku merge benchmark (remux and re-encode vs ffmpeg)")]
struct Args {
    #[arg(long, default_value = "target/release/kiroku")]
    kiroku: PathBuf,
    /// Media seconds of the recording.
    #[arg(long, default_value_t = 600)]
    seconds: u32,
    #[arg(long, default_value_t = 640)]
    width: u32,
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Runs per case and tool, alternating (the best is reported).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
}

const SEGMENT_S: u32 = 10;
/// 2026-11-21 00:00:00 UTC.
const BASE_UTC17_DAY: &str = "20261121";

fn run(cmd: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let wall = start.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(2000)
                .collect::<String>()
        );
    }
    Ok(wall)
}

fn utc17(seconds_into_day: u32) -> String {
    let (h, m, s) = (
        seconds_into_day / 3600,
        seconds_into_day / 60 % 60,
        seconds_into_day % 60,
    );
    format!("{BASE_UTC17_DAY}{h:02}{m:02}{s:02}000")
}

/// The recording: `<n>` video and audio segments named like kiroku's.
fn make_recording(args: &Args, dir: &Path) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    let size = format!("{}x{}", args.width, args.height);
    let seconds = args.seconds.to_string();
    run(Command::new("ffmpeg").current_dir(dir).args([
        "-v",
        "error",
        "-y",
        // -t on each input: both outputs end with them.
        "-f",
        "lavfi",
        "-t",
        &seconds,
        "-i",
        &format!("testsrc2=size={size}:rate=15"),
        "-f",
        "lavfi",
        "-t",
        &seconds,
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-map",
        "0:v",
        "-c:v",
        "libx264",
        "-profile:v",
        "baseline",
        "-preset",
        "veryfast",
        "-g",
        "30",
        "-keyint_min",
        "30",
        "-sc_threshold",
        "0",
        "-b:v",
        "600k",
        "-f",
        "segment",
        "-segment_time",
        &SEGMENT_S.to_string(),
        "-reset_timestamps",
        "0",
        "v%04d.ts",
        "-map",
        "1:a",
        "-c:a",
        "aac",
        "-ac",
        "2",
        "-b:a",
        "64k",
        "-f",
        "segment",
        "-segment_time",
        &SEGMENT_S.to_string(),
        "-reset_timestamps",
        "0",
        "a%04d.ts",
    ]))?;
    let base = "1400000001_1234__UserId_s_YmVuY2g.__UserId_e_main";
    let mut pairs = Vec::new();
    let mut i = 0;
    loop {
        let (v, a) = (
            dir.join(format!("v{i:04}.ts")),
            dir.join(format!("a{i:04}.ts")),
        );
        if !v.exists() || !a.exists() {
            break;
        }
        let t = utc17(3600 + i * SEGMENT_S);
        let vn = dir.join(format!("{base}_video_{t}.ts"));
        let an = dir.join(format!("{base}_audio_{t}.ts"));
        std::fs::rename(&v, &vn)?;
        std::fs::rename(&a, &an)?;
        pairs.push((vn, an));
        i += 1;
    }
    if pairs.is_empty() {
        bail!("ffmpeg made no segments");
    }
    Ok(pairs)
}

fn clean_outputs(dir: &Path) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if matches!(p.extension().and_then(|e| e.to_str()), Some("mp4" | "m4a")) {
            std::fs::remove_file(p)?;
        }
    }
    Ok(())
}

fn concat_list(dir: &Path, files: &[&PathBuf], name: &str) -> anyhow::Result<PathBuf> {
    let list = dir.join(name);
    let text: String = files
        .iter()
        .map(|f| format!("file '{}'\n", f.display()))
        .collect();
    std::fs::write(&list, text)?;
    Ok(list)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("kiroku-merge-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let pairs = make_recording(&args, &dir)?;
    let kiroku = std::fs::canonicalize(&args.kiroku).context("--kiroku")?;
    let media_s = f64::from(args.seconds);
    println!(
        "merge-bench: {} s of {}x{}@15 H.264 + AAC in {} × {} s audio and video segments",
        args.seconds,
        args.width,
        args.height,
        pairs.len(),
        SEGMENT_S
    );
    let videos: Vec<&PathBuf> = pairs.iter().map(|p| &p.0).collect();
    let audios: Vec<&PathBuf> = pairs.iter().map(|p| &p.1).collect();
    let vlist = concat_list(&dir, &videos, "v.txt")?;
    let alist = concat_list(&dir, &audios, "a.txt")?;
    let size = [args.width.to_string(), args.height.to_string()];
    let ffmpeg_inputs = |c: &mut Command| {
        c.args(["-v", "error", "-y", "-f", "concat", "-safe", "0", "-i"])
            .arg(&vlist)
            .args(["-f", "concat", "-safe", "0", "-i"])
            .arg(&alist)
            .args(["-map", "0:v", "-map", "1:a"]);
    };
    let mut best = [[Duration::MAX; 2]; 2];
    for _ in 0..args.rounds.max(1) {
        // Remux.
        clean_outputs(&dir)?;
        best[0][0] = best[0][0].min(run(Command::new(&kiroku).arg("merge").arg("-f").arg(&dir))?);
        clean_outputs(&dir)?;
        let mut c = Command::new("ffmpeg");
        ffmpeg_inputs(&mut c);
        c.args(["-c", "copy", "-movflags", "+faststart"])
            .arg(dir.join("ffmpeg.mp4"));
        best[0][1] = best[0][1].min(run(&mut c)?);
        // Re-encode.
        clean_outputs(&dir)?;
        best[1][0] = best[1][0].min(run(Command::new(&kiroku)
            .arg("merge")
            .arg("-f")
            .arg(&dir)
            .args(["-p", "15", "-r"])
            .args(&size))?);
        clean_outputs(&dir)?;
        let mut c = Command::new("ffmpeg");
        ffmpeg_inputs(&mut c);
        c.args(["-c:v", "libx264", "-preset", "veryfast", "-r", "15", "-s"])
            .arg(format!("{}x{}", args.width, args.height))
            .args(["-threads", "1", "-c:a", "copy", "-movflags", "+faststart"])
            .arg(dir.join("ffmpeg.mp4"));
        best[1][1] = best[1][1].min(run(&mut c)?);
    }
    println!(
        "{:>10} {:>22} {:>22} {:>10}",
        "case", "kiroku media-s/s", "ffmpeg media-s/s", "ratio"
    );
    for (i, case) in ["remux", "re-encode"].iter().enumerate() {
        let k = media_s / best[i][0].as_secs_f64();
        let f = media_s / best[i][1].as_secs_f64();
        println!("{case:>10} {k:>22.1} {f:>22.1} {:>9.2}×", k / f);
    }
    println!("(re-encode: kiroku OpenH264 on one thread vs ffmpeg libx264 veryfast -threads 1)");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
