//! Single-stream recording capacity: N audio+video streams recorded by
//! concurrent RecordMode 1 tasks (25 streams per task, one room each), fed
//! by `kiroku publish --count` (one publisher process per room, encoding
//! once and sending to every user of its room).
//!
//! Prints, per N: the daemon's CPU per recorded stream (ingest + recording:
//! SRTP, depacketising, Opus → AAC, TS muxing, segment writes), the
//! publishers' CPU per stream side by side (str0m sending the same media),
//! frames recorded per second against frames published, and every drop
//! the daemon counted (subscriber overflow at the room, timeline overflow,
//! failed writes). "Real time" means: recorded frames/s ≈ published
//! frames/s and zero drops.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

mod common;
use common::{cpu_seconds, http, metric, BenchDaemon, Killer};

#[derive(Parser)]
#[command(about = "kiroku single-stream recording benchmark")]
struct Args {
    #[arg(long, default_value = "target/release/kiroku")]
    kiroku: PathBuf,
    /// Stream counts (audio+video each) to run, comma separated.
    #[arg(long, default_value = "25,100,250", value_delimiter = ',')]
    streams: Vec<usize>,
    /// Seconds of the measured window per count.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    #[arg(long, default_value_t = 320)]
    width: u32,
    #[arg(long, default_value_t = 180)]
    height: u32,
    #[arg(long, default_value_t = 15)]
    fps: u32,
}

const PER_TASK: usize = 25;

/// Calls the API (dev mode: no signature) and returns the JSON response.
fn api(port: u16, action: &str, body: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let body = body.to_string();
    let req = format!(
        "POST / HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nX-TC-Action: {action}\r\nX-TC-Version: 2019-07-22\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let v: serde_json::Value = serde_json::from_str(&http(port, &req)?)?;
    if v["Response"]["Error"].is_object() {
        bail!("{action}: {}", v["Response"]["Error"]);
    }
    Ok(v)
}

struct Snapshot {
    daemon_cpu: f64,
    publisher_cpu: f64,
    recorded: f64,
    ingest_frames: f64,
    drops: f64,
    clock_overflow: f64,
    write_failures: f64,
    at: Instant,
}

fn snapshot(port: u16, daemon: u32, publishers: &[Killer]) -> anyhow::Result<Snapshot> {
    let mut publisher_cpu = 0.0;
    for p in publishers {
        publisher_cpu += cpu_seconds(p.0.id())?;
    }
    Ok(Snapshot {
        daemon_cpu: cpu_seconds(daemon)?,
        publisher_cpu,
        recorded: metric(port, "kiroku_recorder_frames_total")?,
        ingest_frames: metric(port, "kiroku_ingest_frames_total")?,
        drops: metric(port, "kiroku_ingest_frame_drops_total")?,
        clock_overflow: metric(
            port,
            "kiroku_recorder_clock_events_total{event=\"overflow\"}",
        )?,
        write_failures: metric(port, "kiroku_recorder_write_failures_total")?,
        at: Instant::now(),
    })
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let daemon = BenchDaemon::start(
        &a.kiroku,
        "record-bench",
        "[limits]\napi_rate_per_second = 1000\n",
    )?;
    let port = daemon.port;
    println!(
        "kiroku single-stream recording: N streams (Opus 50 pkt/s → AAC, H.264 {}x{}@{} passed through), {} per task, {} s window, machine: {} CPUs",
        a.width,
        a.height,
        a.fps,
        PER_TASK,
        a.seconds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "{:>5} {:>6} {:>11} {:>12} {:>14} {:>16} {:>7} {:>11} {:>7}",
        "N",
        "tasks",
        "frames/s",
        "daemon CPU%",
        "daemon %/str",
        "publisher %/str",
        "ratio",
        "recorded %",
        "drops"
    );
    let mut room_base = 20_000;
    for &n in &a.streams {
        let rooms = n.div_ceil(PER_TASK);
        let mut tasks = Vec::new();
        for r in 0..rooms {
            let v = api(
                port,
                "CreateCloudRecording",
                serde_json::json!({
                    "SdkAppId": 1_400_000_001u32, "RoomId": (room_base + r).to_string(),
                    "UserId": format!("bench_rec_{r}"), "UserSig": "x",
                    "RecordParams": {"RecordMode": 1, "MaxIdleTime": 300}
                }),
            )?;
            tasks.push(
                v["Response"]["TaskId"]
                    .as_str()
                    .context("TaskId")?
                    .to_owned(),
            );
        }
        let settle = 4 + n as u64 / 25;
        let mut publishers = Vec::new();
        for r in 0..rooms {
            let count = PER_TASK.min(n - r * PER_TASK);
            publishers.push(Killer(
                Command::new(&a.kiroku)
                    .args(["publish", "--url", &format!("http://127.0.0.1:{port}")])
                    .args(["--room", &(room_base + r).to_string(), "--user", "u"])
                    .args(["--count", &count.to_string()])
                    .args(["--duration", &(a.seconds + settle + 10).to_string()])
                    .args(["--width", &a.width.to_string()])
                    .args(["--height", &a.height.to_string()])
                    .args(["--fps", &a.fps.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()?,
            ));
        }
        let connected_by = Instant::now() + Duration::from_secs(settle + 30);
        while metric(port, "kiroku_recorder_streams")? < n as f64 {
            if Instant::now() > connected_by {
                bail!(
                    "only {} of {n} streams are being recorded",
                    metric(port, "kiroku_recorder_streams")?
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Past the timeline's confirmation wait (5.5 s) so frames flow steadily.
        std::thread::sleep(Duration::from_secs(7));
        let s0 = snapshot(port, daemon.pid(), &publishers)?;
        std::thread::sleep(Duration::from_secs(a.seconds));
        let s1 = snapshot(port, daemon.pid(), &publishers)?;
        let wall = s1.at.duration_since(s0.at).as_secs_f64();
        let daemon_pct = (s1.daemon_cpu - s0.daemon_cpu) / wall * 100.0;
        let pub_pct = (s1.publisher_cpu - s0.publisher_cpu) / wall * 100.0;
        let recorded = (s1.recorded - s0.recorded) / wall;
        let ingest = (s1.ingest_frames - s0.ingest_frames) / wall;
        let drops = (s1.drops - s0.drops)
            + (s1.clock_overflow - s0.clock_overflow)
            + (s1.write_failures - s0.write_failures);
        println!(
            "{n:>5} {rooms:>6} {recorded:>11.0} {daemon_pct:>12.1} {:>14.3} {:>16.3} {:>7.2} {:>11.1} {drops:>7}",
            daemon_pct / n as f64,
            pub_pct / n as f64,
            daemon_pct / pub_pct.max(1e-9),
            recorded / ingest.max(1e-9) * 100.0,
        );
        for t in &tasks {
            api(
                port,
                "DeleteCloudRecording",
                serde_json::json!({"SdkAppId": 1_400_000_001u32, "TaskId": t}),
            )?;
        }
        drop(publishers);
        let gone_by = Instant::now() + Duration::from_secs(30);
        while (metric(port, "kiroku_recorders")? > 0.0
            || metric(port, "kiroku_ingest_peers")? > 0.0)
            && Instant::now() < gone_by
        {
            std::thread::sleep(Duration::from_millis(200));
        }
        room_base += rooms + 10;
    }
    drop(daemon);
    Ok(())
}
