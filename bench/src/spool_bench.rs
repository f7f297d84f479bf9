//! Spool write benchmark: N files of S bytes (default 2000 × 256 KiB, about
//! the size of HLS segments) put into the local spool, each durable when
//! its put returns (write, fdatasync, rename, directory fsync), through the
//! io_uring backend and through plain writes, side by side in the same run.
//!
//! For each writer-thread count in `--threads`, both backends run on a
//! fresh spool directory (under `--dir`, so on the same filesystem), in
//! alternating order over `--rounds`; the figures are MB/s and files/s
//! over the wall time of all puts, put latency percentiles, and for
//! io_uring the puts carried per submission. The spool is emptied after
//! each run (not timed). Build with `--release` for figures worth quoting.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use kiroku::output::spool::{BackendChoice, Spool, SpoolOptions};

#[derive(Parser)]
#[command(about = "kiroku spool write benchmark (io_uring vs plain writes)")]
struct Args {
    /// Files per run.
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 256 * 1024)]
    size: usize,
    /// Writer thread counts to run (comma-separated), like concurrent
    /// recording tasks.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    threads: Vec<usize>,
    /// Runs per backend and thread count (the best one is reported).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Where to create the spool directories (default: the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

struct Run {
    wall: Duration,
    latencies: Vec<Duration>,
    batches: (u64, u64),
}

fn run(args: &Args, dir: &PathBuf, backend: BackendChoice, threads: usize) -> anyhow::Result<Run> {
    let _ = std::fs::remove_dir_all(dir);
    let total = (args.files * (args.size + 256)) as u64;
    let opts = SpoolOptions::new(total * 2).backend(backend);
    let spool = Arc::new(Spool::open_with(dir, opts).context("opening the spool")?);
    let data: Arc<Vec<u8>> = Arc::new((0..args.size).map(|i| (i * 131 % 251) as u8).collect());
    let per_thread = args.files.div_ceil(threads);
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (spool, data) = (spool.clone(), data.clone());
            let n = per_thread.min(args.files.saturating_sub(t * per_thread));
            std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
                let task = format!("bench-task-{t}");
                let mut lat = Vec::with_capacity(n);
                for i in 0..n {
                    let key = format!("bench/{task}/seg_{i}.ts");
                    let t0 = Instant::now();
                    spool.put(&task, &key, &data)?;
                    lat.push(t0.elapsed());
                }
                Ok(lat)
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(args.files);
    for h in handles {
        match h.join() {
            Ok(r) => latencies.extend(r?),
            Err(_) => bail!("a writer thread panicked"),
        }
    }
    let wall = start.elapsed();
    let batches = spool.batching();
    for e in spool.entries() {
        spool.remove(e.id)?;
    }
    drop(spool);
    let _ = std::fs::remove_dir_all(dir);
    latencies.sort_unstable();
    Ok(Run {
        wall,
        latencies,
        batches,
    })
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.files == 0 || args.threads.contains(&0) || args.rounds == 0 {
        bail!("--files, --threads and --rounds must be positive");
    }
    let base = args
        .dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("kiroku-spool-bench-{}", std::process::id()));

    // Is io_uring usable here at all?
    let probe_dir = base.join("probe");
    let uring = match Spool::open_with(
        &probe_dir,
        SpoolOptions::new(1).backend(BackendChoice::IoUring),
    ) {
        Ok(_) => true,
        Err(e) => {
            println!("io_uring unavailable here ({e}): plain writes only");
            false
        }
    };
    let _ = std::fs::remove_dir_all(&probe_dir);

    println!(
        "spool write benchmark: {} files × {} KiB per run, fsync per file, dir {}",
        args.files,
        args.size / 1024,
        base.display()
    );
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "threads", "backend", "MB/s", "files/s", "p50 ms", "p99 ms", "puts/subm"
    );
    for &threads in &args.threads {
        let mut best: [Option<Run>; 2] = [None, None];
        for round in 0..args.rounds {
            let mut order = vec![(0, BackendChoice::Plain)];
            if uring {
                order.push((1, BackendChoice::IoUring));
            }
            if round % 2 == 1 {
                order.reverse();
            }
            for (slot, backend) in order {
                let r = run(&args, &base.join(format!("{slot}")), backend, threads)?;
                if best[slot].as_ref().is_none_or(|b| r.wall < b.wall) {
                    best[slot] = Some(r);
                }
            }
        }
        let mut mbps = [0.0f64; 2];
        for (slot, name) in [(0, "plain"), (1, "io_uring")] {
            let Some(r) = &best[slot] else { continue };
            let secs = r.wall.as_secs_f64();
            mbps[slot] = (args.files * args.size) as f64 / secs / 1e6;
            let per_submit = if r.batches.0 > 0 {
                format!("{:.1}", r.batches.1 as f64 / r.batches.0 as f64)
            } else {
                "-".to_owned()
            };
            println!(
                "{:>7} {:>9} {:>9.1} {:>9.1} {:>9.2} {:>9.2} {:>10}",
                threads,
                name,
                mbps[slot],
                args.files as f64 / secs,
                pct(&r.latencies, 0.5),
                pct(&r.latencies, 0.99),
                per_submit
            );
        }
        if mbps[0] > 0.0 && mbps[1] > 0.0 {
            println!(
                "{:>7} io_uring / plain throughput: {:.2}×",
                threads,
                mbps[1] / mbps[0]
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}
