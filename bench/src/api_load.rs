//! API load benchmark: starts a kiroku daemon with authentication on, then
//! drives CreateCloudRecording and DescribeCloudRecording (TC3-signed, as
//! Tencent's SDKs send them) and prints throughput and latency.
//!
//! Phases:
//! 1. `sustained`: an open loop at `--rate` requests/s per action for
//!    `--seconds` (the service's documented 20 requests/s), latency of each
//!    request measured from send to full response.
//! 2. `ceiling`: a closed loop with `--concurrency` workers, Describe only,
//!    for `--seconds`, to show the headroom.
//!
//! As a side-by-side reference in the same run, `GET /healthz` is timed the
//! same way: the HTTP floor of this machine, against which the API's own
//! cost (signature check, validation, a durable store commit for Create)
//! can be read.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use kiroku::api::tc3;

#[derive(Parser)]
#[command(about = "kiroku REST API load benchmark")]
struct Args {
    /// The kiroku binary to benchmark.
    #[arg(long, default_value = "target/release/kiroku")]
    kiroku: PathBuf,
    /// Requests per second per action in the sustained phase.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Workers in the ceiling phase.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Port for the daemon (0 = pick a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Run the daemon in fleet mode on this PostgreSQL database
    /// (`[cluster] postgres_url`) instead of the embedded store
    /// (bench/fleet_bench.py starts a throw-away cluster for it).
    #[arg(long)]
    postgres_url: Option<String>,
}

const SECRET_ID: &str = "AKIDbench";
const SECRET_KEY: &str = "bench-secret-key-2026";
const APP: u32 = 1_400_000_001;

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_daemon(bin: &PathBuf, port: u16, postgres_url: Option<&str>) -> anyhow::Result<Daemon> {
    if !bin.exists() {
        bail!(
            "{} does not exist: build it first (cargo build --release -p kiroku) or pass --kiroku",
            bin.display()
        );
    }
    let dir = std::env::temp_dir().join(format!("kiroku-bench-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cluster = postgres_url
        .map(|url| format!("[cluster]\npostgres_url = \"{url}\"\nnode_id = \"api-load\"\n"))
        .unwrap_or_default();
    let config = format!(
        "data_dir = \"{data}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n[limits]\nmax_tasks = 1000000\napi_rate_per_second = 1000000\n\
         [log]\nlevel = \"warn\"\n[[credentials]]\nsecret_id = \"{SECRET_ID}\"\nsecret_key = \"{SECRET_KEY}\"\n[[apps]]\nsdk_app_id = {APP}\n{cluster}",
        data = dir.join("data").display()
    );
    let cfg = dir.join("kiroku.toml");
    std::fs::write(&cfg, config)?;
    let child = Command::new(bin)
        .arg("serve")
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(Daemon { child, dir })
}

struct Client {
    http: reqwest::Client,
    host: String,
}

impl Client {
    async fn call(&self, action: &str, body: String) -> anyhow::Result<serde_json::Value> {
        let ts = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
        let auth =
            tc3::json_post_authorization(SECRET_ID, SECRET_KEY, &self.host, body.as_bytes(), ts);
        let resp = self
            .http
            .post(format!("http://{}/", self.host))
            .header("Content-Type", "application/json")
            .header("Authorization", auth)
            .header("X-TC-Action", action)
            .header("X-TC-Version", "2019-07-22")
            .header("X-TC-Timestamp", ts.to_string())
            .body(body)
            .send()
            .await?;
        let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await?)?;
        if let Some(err) = v.pointer("/Response/Error") {
            bail!("{action}: {err}");
        }
        Ok(v)
    }

    async fn healthz(&self) -> anyhow::Result<()> {
        let r = self
            .http
            .get(format!("http://{}/healthz", self.host))
            .send()
            .await?;
        r.bytes().await?;
        Ok(())
    }
}

fn create_body(i: u64) -> String {
    serde_json::json!({
        "SdkAppId": APP, "RoomId": (1000 + i).to_string(), "UserId": format!("bot_{i}"), "UserSig": "sig",
        "RecordParams": {"RecordMode": 1, "MaxIdleTime": 86400},
    })
    .to_string()
}

#[derive(Default)]
struct Stats {
    latencies: Vec<Duration>,
    errors: u64,
}

impl Stats {
    fn record(&mut self, r: anyhow::Result<Duration>) {
        match r {
            Ok(d) => self.latencies.push(d),
            Err(e) => {
                if self.errors == 0 {
                    eprintln!("first error: {e:#}");
                }
                self.errors += 1;
            }
        }
    }

    fn print(&mut self, phase: &str, what: &str, wall: Duration) {
        self.latencies.sort();
        let n = self.latencies.len();
        let q = |p: f64| -> f64 {
            if n == 0 {
                return f64::NAN;
            }
            let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            self.latencies[idx].as_secs_f64() * 1000.0
        };
        println!(
            "{phase:<10} {what:<24} {n:>7} {:>9.1} {:>8.2} {:>8.2} {:>8.2} {:>6}",
            n as f64 / wall.as_secs_f64(),
            q(0.50),
            q(0.99),
            q(1.0),
            self.errors
        );
    }
}

async fn timed<F, T>(f: F) -> anyhow::Result<Duration>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let t = Instant::now();
    f.await?;
    Ok(t.elapsed())
}

async fn run(args: Args) -> anyhow::Result<()> {
    let port = if args.port == 0 {
        free_port()?
    } else {
        args.port
    };
    let _daemon = start_daemon(&args.kiroku, port, args.postgres_url.as_deref())?;
    let client = std::sync::Arc::new(Client {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()?,
        host: format!("127.0.0.1:{port}"),
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while client.healthz().await.is_err() {
        if Instant::now() > deadline {
            bail!("the daemon did not answer /healthz within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "kiroku API load ({}): {} req/s per action for {} s, then {} workers for {} s",
        if args.postgres_url.is_some() {
            "state on PostgreSQL"
        } else {
            "embedded state store"
        },
        args.rate,
        args.seconds,
        args.concurrency,
        args.seconds
    );
    println!(
        "{:<10} {:<24} {:>7} {:>9} {:>8} {:>8} {:>8} {:>6}",
        "phase", "request", "count", "req/s", "p50 ms", "p99 ms", "max ms", "errors"
    );

    // Sustained: Create, Describe (of the task just created) and healthz, each at `rate`.
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let total = u64::from(args.rate) * args.seconds;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u8, anyhow::Result<Duration>)>();
    let started = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let c = client.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let created = c.call("CreateCloudRecording", create_body(i)).await;
            let _ = tx.send((
                0,
                created
                    .as_ref()
                    .map(|_| t.elapsed())
                    .map_err(|e| anyhow::anyhow!("{e:#}")),
            ));
            if let Ok(v) = created {
                let task = v
                    .pointer("/Response/TaskId")
                    .and_then(|t| t.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let body = serde_json::json!({"SdkAppId": APP, "TaskId": task}).to_string();
                let _ = tx.send((1, timed(c.call("DescribeCloudRecording", body)).await));
            }
            let _ = tx.send((2, timed(c.healthz()).await));
        });
    }
    drop(tx);
    let mut stats: [Stats; 3] = Default::default();
    while let Some((kind, r)) = rx.recv().await {
        stats[usize::from(kind)].record(r);
    }
    let wall = started.elapsed();
    stats[0].print("sustained", "CreateCloudRecording", wall);
    stats[1].print("sustained", "DescribeCloudRecording", wall);
    stats[2].print("sustained", "GET /healthz (floor)", wall);

    // Ceiling: closed loop of Describe against one task.
    let v = client
        .call("CreateCloudRecording", create_body(4_000_000_000 - 1000))
        .await?;
    let task = v
        .pointer("/Response/TaskId")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_owned();
    let stop_at = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let c = client.clone();
        let body = serde_json::json!({"SdkAppId": APP, "TaskId": task}).to_string();
        workers.push(tokio::spawn(async move {
            let mut s = Stats::default();
            while Instant::now() < stop_at {
                s.record(timed(c.call("DescribeCloudRecording", body.clone())).await);
            }
            s
        }));
    }
    let mut all = Stats::default();
    for w in workers {
        let s = w.await?;
        all.latencies.extend(s.latencies);
        all.errors += s.errors;
    }
    all.print("ceiling", "DescribeCloudRecording", started.elapsed());
    let total_errors = stats.iter().map(|s| s.errors).sum::<u64>() + all.errors;
    if total_errors > 0 {
        bail!("{total_errors} requests failed");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("api-load: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("api-load: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
