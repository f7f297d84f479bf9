//! Ingest capacity benchmark: N WHIP publishers (`kiroku publish --count N`)
//! into one daemon. Prints, per N: packets/s and frames/s received, the
//! daemon's CPU per publisher, and — side by side in the same run — the
//! publisher process's CPU (str0m sending the same media: packetising,
//! SRTP, pacing), a reference for what the daemon costs per peer.
//!
//! CPU comes from /proc/<pid>/stat (utime + stime) over a steady window
//! that starts after every session is connected.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;

mod common;
use common::{cpu_seconds, metric, BenchDaemon, Killer};

#[derive(Parser)]
#[command(about = "kiroku WHIP ingest benchmark")]
struct Args {
    #[arg(long, default_value = "target/release/kiroku")]
    kiroku: PathBuf,
    /// Publisher counts to run, comma separated.
    #[arg(long, default_value = "10,50,100", value_delimiter = ',')]
    counts: Vec<usize>,
    /// Seconds of the measured window per count.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 320)]
    width: u32,
    #[arg(long, default_value_t = 180)]
    height: u32,
    #[arg(long, default_value_t = 15)]
    fps: u32,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let daemon = BenchDaemon::start(&a.kiroku, "ingest-bench", "")?;
    let port = daemon.port;
    println!(
        "kiroku ingest: N publishers x (Opus 50 pkt/s + H.264 {}x{}@{}), {} s window, machine: {} CPUs",
        a.width,
        a.height,
        a.fps,
        a.seconds,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "{:>5} {:>10} {:>10} {:>9} {:>12} {:>14} {:>14} {:>8}",
        "N",
        "packets/s",
        "frames/s",
        "Mbit/s",
        "daemon CPU%",
        "daemon %/pub",
        "publisher %/pub",
        "ratio"
    );
    for &n in &a.counts {
        let settle = 3 + n as u64 / 25;
        let publisher = Killer(
            Command::new(&a.kiroku)
                .args([
                    "publish",
                    "--url",
                    &format!("http://127.0.0.1:{port}"),
                    "--room",
                    "9000",
                    "--user",
                    "bench",
                ])
                .args([
                    "--count",
                    &n.to_string(),
                    "--duration",
                    &(a.seconds + settle + 2).to_string(),
                ])
                .args([
                    "--width",
                    &a.width.to_string(),
                    "--height",
                    &a.height.to_string(),
                    "--fps",
                    &a.fps.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let connected_by = Instant::now() + Duration::from_secs(settle + 20);
        while metric(port, "kiroku_ingest_peers")? < n as f64 {
            if Instant::now() > connected_by {
                bail!(
                    "only {} of {n} publishers connected",
                    metric(port, "kiroku_ingest_peers")?
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_secs(2));
        let (p0, f0, b0) = (
            metric(port, "kiroku_ingest_packets_received_total")?,
            metric(port, "kiroku_ingest_frames_total")?,
            metric(port, "kiroku_ingest_received_bytes_total")?,
        );
        let (d0, s0, w0) = (
            cpu_seconds(daemon.pid())?,
            cpu_seconds(publisher.0.id())?,
            Instant::now(),
        );
        std::thread::sleep(Duration::from_secs(a.seconds));
        let wall = w0.elapsed().as_secs_f64();
        let (d1, s1) = (cpu_seconds(daemon.pid())?, cpu_seconds(publisher.0.id())?);
        let (p1, f1, b1) = (
            metric(port, "kiroku_ingest_packets_received_total")?,
            metric(port, "kiroku_ingest_frames_total")?,
            metric(port, "kiroku_ingest_received_bytes_total")?,
        );
        let daemon_pct = (d1 - d0) / wall * 100.0;
        let pub_pct = (s1 - s0) / wall * 100.0;
        println!(
            "{n:>5} {:>10.0} {:>10.0} {:>9.2} {:>12.1} {:>14.3} {:>14.3} {:>8.2}",
            (p1 - p0) / wall,
            (f1 - f0) / wall,
            (b1 - b0) * 8.0 / wall / 1e6,
            daemon_pct,
            daemon_pct / n as f64,
            pub_pct / n as f64,
            daemon_pct / pub_pct.max(1e-9)
        );
        drop(publisher);
        let gone_by = Instant::now() + Duration::from_secs(20);
        while metric(port, "kiroku_ingest_peers")? > 0.0 && Instant::now() < gone_by {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(daemon);
    Ok(())
}
