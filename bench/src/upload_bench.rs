//! Upload benchmark: N files of S bytes (default 200 × 1 MiB, HLS-segment
//! sized) taken from recorder-style puts to objects in an S3-compatible
//! server, through kiroku's whole path (durable spool put, persistent
//! queue, concurrent uploads, spool removal), side by side with boto3 (the
//! reference S3 client, `put_object` from a thread pool of the same
//! concurrency, files read from disk, nothing made durable) against the
//! same server in the same run.
//!
//! The server is moto's standalone server (`--moto`, default
//! `.venv/bin/moto_server`): a Python implementation, so it bounds both
//! clients alike; the ratio, not the absolute MB/s, is the figure to read.
//! kiroku's time runs from the first put to the last upload confirmed
//! (drained); boto3's from its first request to its last answer.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use kiroku::config::Config;
use kiroku::domain::params::{CloudStorage, RoomId, Vendor};
use kiroku::metrics::Metrics;
use kiroku::output::uploader::{CallbackContext, UploadService};

#[derive(Parser)]
#[command(about = "kiroku upload benchmark (spool + S3 uploads vs boto3, against moto)")]
struct Args {
    #[arg(long, default_value_t = 200)]
    files: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 1024 * 1024)]
    size: usize,
    /// Uploads in flight (kiroku's storage.upload_concurrency, boto3's pool).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Runs per client, alternating (the best is reported).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    #[arg(long)]
    moto: Option<PathBuf>,
    /// Python with boto3 (default `.venv/bin/python`).
    #[arg(long)]
    python: Option<PathBuf>,
}

struct Moto(Child, u16);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn workspace_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

fn start_moto(bin: &PathBuf) -> anyhow::Result<Moto> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let moto = Moto(child, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("moto_server did not start");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(moto)
}

const BOTO3: &str = r#"
import sys, time, boto3, concurrent.futures as cf
port, bucket, folder, n, conc = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                  aws_access_key_id="AK", aws_secret_access_key="SK")
def put(i):
    with open(f"{folder}/seg_{i}.ts", "rb") as f:
        s3.put_object(Bucket=bucket, Key=f"boto3/seg_{i}.ts", Body=f.read())
t0 = time.perf_counter()
with cf.ThreadPoolExecutor(conc) as ex:
    list(ex.map(put, range(n)))
print(time.perf_counter() - t0)
"#;

fn kiroku_run(
    args: &Args,
    port: u16,
    round: usize,
    rt: &tokio::runtime::Runtime,
) -> anyhow::Result<Duration> {
    let dir = std::env::temp_dir().join(format!(
        "kiroku-upload-bench-{}-{round}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let toml = format!(
        "[storage]\nupload_concurrency = {}\nspool_capacity_mb = {}\n[storage.s3]\naws_endpoint = \"http://127.0.0.1:{port}\"\nallow_http = true\npath_style = true\n",
        args.concurrency,
        (args.files * args.size / (1024 * 1024)) * 2 + 64,
    );
    let config = Config::parse(&toml).context("bench config")?;
    let data: Vec<u8> = (0..args.size).map(|i| (i * 131 % 251) as u8).collect();
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move { while rx.recv().await.is_some() {} });
        std::fs::create_dir_all(&dir)?;
        let sealer = std::sync::Arc::new(kiroku::sealing::Sealer::none());
        let state = std::sync::Arc::new(kiroku::state::StateStore::open(
            &dir.join("state.redb"),
            sealer.clone(),
        )?);
        let uploads = UploadService::open(
            &dir,
            &config.storage,
            &Metrics::new(),
            tx,
            sealer,
            kiroku::output::uploader::TargetBook::this_box(state),
        )?;
        let task = format!("bench{round}");
        let storage = CloudStorage {
            vendor: Vendor::AwsS3,
            region: "us-east-1".into(),
            bucket: "bench".into(),
            access_key: "AK".into(),
            secret_key: "SK".into(),
            file_name_prefix: vec![],
        };
        let context = CallbackContext {
            sdk_app_id: 1,
            room: RoomId::Int(1),
            bot_user_id: "bench".into(),
        };
        uploads.register(&task, context, &storage)?;
        let store = uploads.store(&task);
        let start = Instant::now();
        let writer = {
            let (task, n, data) = (task.clone(), args.files, data.clone());
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                for i in 0..n {
                    store.put(&format!("{task}/seg_{i}.ts"), &data)?;
                }
                Ok(())
            })
        };
        writer.await??;
        let drained = uploads.drain(&task, Duration::from_secs(600)).await;
        let wall = start.elapsed();
        if drained.stranded > 0 {
            bail!("{} files were not uploaded", drained.stranded);
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(wall)
    })
}

fn boto3_run(args: &Args, python: &PathBuf, port: u16) -> anyhow::Result<Duration> {
    let folder =
        std::env::temp_dir().join(format!("kiroku-upload-bench-src-{}", std::process::id()));
    std::fs::create_dir_all(&folder)?;
    let data: Vec<u8> = (0..args.size).map(|i| (i * 131 % 251) as u8).collect();
    for i in 0..args.files {
        std::fs::write(folder.join(format!("seg_{i}.ts")), &data)?;
    }
    let out = Command::new(python)
        .args(["-c", BOTO3, &port.to_string(), "bench"])
        .arg(&folder)
        .args([args.files.to_string(), args.concurrency.to_string()])
        .output()
        .context("running boto3")?;
    let _ = std::fs::remove_dir_all(&folder);
    if !out.status.success() {
        bail!("boto3 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let secs: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("boto3 timing")?;
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let moto_bin = args
        .moto
        .clone()
        .unwrap_or_else(|| workspace_file(".venv/bin/moto_server"));
    let python = args
        .python
        .clone()
        .unwrap_or_else(|| workspace_file(".venv/bin/python"));
    let moto = start_moto(&moto_bin)?;
    let port = moto.1;
    // moto does not check signatures: a bare PUT makes the bucket.
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        reqwest::Client::new()
            .put(format!("http://127.0.0.1:{port}/bench"))
            .send()
            .await?
            .error_for_status()
            .map(drop)
    })
    .context("creating the bucket")?;
    let mb = (args.files * args.size) as f64 / 1e6;
    println!(
        "upload-bench: {} files × {} KiB = {:.1} MB, concurrency {}, against moto_server",
        args.files,
        args.size / 1024,
        mb,
        args.concurrency
    );
    let (mut best_k, mut best_b) = (Duration::MAX, Duration::MAX);
    for round in 0..args.rounds.max(1) {
        let k = kiroku_run(&args, port, round, &rt)?;
        let b = boto3_run(&args, &python, port)?;
        println!(
            "  round {round}: kiroku {:.2} s, boto3 {:.2} s",
            k.as_secs_f64(),
            b.as_secs_f64()
        );
        best_k = best_k.min(k);
        best_b = best_b.min(b);
    }
    for (who, wall) in [
        ("kiroku (spool + upload)", best_k),
        ("boto3 put_object", best_b),
    ] {
        let s = wall.as_secs_f64();
        println!(
            "{who:>24}: {:>7.1} MB/s {:>7.1} files/s ({s:.2} s)",
            mb / s,
            args.files as f64 / s
        );
    }
    println!(
        "ratio kiroku/boto3 throughput: {:.2}×",
        best_b.as_secs_f64() / best_k.as_secs_f64()
    );
    Ok(())
}
