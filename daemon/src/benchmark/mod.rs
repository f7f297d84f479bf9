//! `kiroku bench capacity`: measures what this box records in real time
//! and writes the capacity profile admission uses (`capacity`).
//!
//! For each task shape it creates N tasks through the real API, feeds them
//! over real WHIP on loopback from one `kiroku publish --rooms` process
//! (one encoder, N rooms), waits until every task has media, then judges a
//! window of `/metrics` counters: every published frame recorded, no drop
//! (at the socket, the room or the recorder), every segment stored within
//! 1 s of its cut, no recorder more than 1 s behind. The API's latency
//! under that load (the p99 this command sees, and the share the daemon
//! answered within 10 ms) is reported beside each window. The count doubles until a window
//! breaks, then bisects (`ramp`). The daemon is one this command starts
//! (a throw-away data folder, loopback, dev mode) or a running one
//! (`--url`, with API credentials).
//!
//! Everything is read from the daemon's own metrics (its CPU and memory
//! too), so a remote daemon is measured the same way.
//!
//! Out of scope: deciding admission (`capacity`), and GPU figures (the
//! bench measures whatever compositor the daemon runs).

pub mod ramp;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;

use crate::api::tc3;
use crate::capacity::profile::{
    named_shapes, CapacityProfile, Host, ProfileResult, ShapeMode, ShapeSpec, PROFILE_VERSION,
};
use ramp::{judge, Expectation, Limit, Ramp, Sample, StepResult};

/// One shape the bench measures.
#[derive(Debug, Clone, Copy)]
pub struct BenchShape {
    pub name: &'static str,
    pub spec: ShapeSpec,
    /// Tasks the ramp starts at.
    pub start: u32,
}

/// The shapes of docs/performance.md "Capacity", in the order they run.
pub fn shapes() -> Vec<BenchShape> {
    named_shapes()
        .into_iter()
        .map(|(name, spec)| BenchShape {
            name,
            spec,
            // Small shapes start higher: the ramp doubles from here.
            start: match (spec.mode, spec.users) {
                (ShapeMode::Single, 1) => 16,
                (ShapeMode::Single, 5) => 8,
                (ShapeMode::MixedAudio, _) => 4,
                _ => 1,
            },
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The kiroku binary that serves (own daemon) and publishes.
    pub kiroku: PathBuf,
    /// A running daemon to measure instead of starting one.
    pub url: Option<String>,
    pub secret_id: Option<String>,
    pub secret_key: Option<String>,
    pub sdk_app_id: u32,
    /// Shape names (all when empty).
    pub shapes: Vec<String>,
    pub warmup: Duration,
    pub window: Duration,
    pub max_tasks: u32,
    /// Bisection stops within this share of the count that held.
    pub precision: f64,
    pub api_p99_ms: f64,
    /// `recording.compositor` of the daemon this command starts.
    pub compositor: String,
    pub out: PathBuf,
    pub progress: bool,
}

/// What the bench found for one shape.
#[derive(Debug, Clone, Serialize)]
pub struct ShapeOutcome {
    pub name: String,
    pub held_tasks: u32,
    pub limit: String,
    pub steps: Vec<StepResult>,
    pub cpu_cores_per_task: f64,
    pub rss_bytes_per_task: f64,
    pub streams_per_task: u32,
}

/// The daemon under test.
struct Target {
    base: String,
    credentials: Option<(String, String)>,
    own: Option<OwnDaemon>,
    http: reqwest::Client,
}

struct OwnDaemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A publisher process that is killed when dropped.
struct Publisher(Child);

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Target {
    async fn start(o: &BenchOptions) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        if let Some(url) = &o.url {
            let credentials = o.secret_id.clone().zip(o.secret_key.clone());
            return Ok(Self {
                base: url.trim_end_matches('/').to_owned(),
                credentials,
                own: None,
                http,
            });
        }
        let dir = std::env::temp_dir().join(format!("kiroku-capacity-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let cfg = dir.join("kiroku.toml");
        // Dev mode (no credentials) on loopback; limits out of the way: the
        // bench finds the box's limit, not the configuration's.
        std::fs::write(
            &cfg,
            format!(
                "data_dir = \"{data}\"\n\
                 [server]\nlisten = \"127.0.0.1:{port}\"\n\
                 [ingest]\nudp_listen = \"127.0.0.1:0\"\n\
                 offers_per_minute_per_address = 1000000\noffers_per_minute_per_app = 1000000\n\
                 offers_per_minute_per_room = 1000000\nmax_pending_sessions = 100000\n\
                 [limits]\nmax_tasks = 100000\napi_rate_per_second = 1000000\nadmit_by_cost = false\n\
                 [recording]\nsegment_seconds = 2\ncompositor = \"{compositor}\"\n\
                 [log]\nlevel = \"warn\"\n",
                data = dir.join("data").display(),
                compositor = o.compositor,
            ),
        )?;
        let log = std::fs::File::create(dir.join("kiroku.log"))?;
        let child = Command::new(&o.kiroku)
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", o.kiroku.display()))?;
        let target = Self {
            base: format!("http://127.0.0.1:{port}"),
            credentials: None,
            own: Some(OwnDaemon { child, dir }),
            http,
        };
        let t0 = Instant::now();
        while target.metrics_text().await.is_err() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!("the daemon did not start (see its log)");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(target)
    }

    async fn metrics_text(&self) -> anyhow::Result<String> {
        let r = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("GET /metrics: {}", r.status());
        }
        Ok(r.text().await?)
    }

    /// One API call; `Err` carries Tencent's error code and message.
    async fn call(
        &self,
        action: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let body = body.to_string();
        let host = self
            .base
            .split("://")
            .nth(1)
            .unwrap_or(&self.base)
            .to_owned();
        let mut req = self
            .http
            .post(format!("{}/", self.base))
            .header("Content-Type", "application/json")
            .header("X-TC-Action", action)
            .header("X-TC-Version", "2019-07-22");
        if let Some((id, key)) = &self.credentials {
            let ts = crate::clock::unix_ms() as i64 / 1000;
            let auth = tc3::json_post_authorization(id, key, &host, body.as_bytes(), ts);
            req = req
                .header("Authorization", auth)
                .header("X-TC-Timestamp", ts.to_string());
        }
        let bytes = req.body(body).send().await?.bytes().await?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{action}: the answer is not JSON"))?;
        if let Some(e) = v["Response"]["Error"].as_object() {
            bail!(
                "{action}: {} {}",
                e.get("Code").and_then(|c| c.as_str()).unwrap_or("?"),
                e.get("Message").and_then(|c| c.as_str()).unwrap_or("")
            );
        }
        Ok(v)
    }
}

/// Sum of a metric family's samples in Prometheus text (every label set,
/// or those carrying `label="value"`).
pub fn metric_sum(text: &str, name: &str, label: Option<(&str, &str)>) -> f64 {
    let want = label.map(|(k, v)| format!("{k}=\"{v}\""));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once('}')?;
                    (labels, value)
                }
                None if rest.starts_with(' ') => ("", rest),
                None => return None,
            };
            if let Some(w) = &want {
                if !labels.split(',').any(|kv| kv == w) {
                    return None;
                }
            }
            value.trim().split(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Sum of a metric family's samples carrying every one of `labels`.
pub fn metric_sum_where(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.split_once('}')?;
            let have: Vec<&str> = set.split(',').collect();
            want.iter()
                .all(|w| have.contains(&w.as_str()))
                .then(|| value.trim().split(' ').next()?.parse::<f64>().ok())?
        })
        .sum()
}

/// The largest sample of a metric family (0 without samples).
pub fn metric_max(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, f64::max)
}

fn process_cpu_seconds(pid: u32) -> f64 {
    // utime + stime in clock ticks (100 Hz on Linux).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = after.split_whitespace().collect();
            let u: f64 = f.get(11)?.parse().ok()?;
            let k: f64 = f.get(12)?.parse().ok()?;
            Some((u + k) / 100.0)
        })
        .unwrap_or(0.0)
}

async fn sample(t: &Target, publisher: Option<&Publisher>, t0: Instant) -> anyhow::Result<Sample> {
    let m = t.metrics_text().await?;
    let bucket = |le: &str| {
        metric_sum(
            &m,
            "kiroku_recorder_segment_latency_seconds_bucket",
            Some(("le", le)),
        )
    };
    let drops = metric_sum(&m, "kiroku_ingest_frame_drops_total", None)
        + metric_sum(&m, "kiroku_ingest_socket_drops_total", None)
        + metric_sum(
            &m,
            "kiroku_recorder_clock_events_total",
            Some(("event", "overflow")),
        )
        + metric_sum(
            &m,
            "kiroku_mix_events_total",
            Some(("event", "frame_dropped")),
        )
        + metric_sum(
            &m,
            "kiroku_mix_events_total",
            Some(("event", "tick_skipped")),
        );
    Ok(Sample {
        at: t0.elapsed().as_secs_f64(),
        recorded_frames: metric_sum(&m, "kiroku_recorder_frames_total", None),
        ingest_frames: metric_sum(&m, "kiroku_ingest_frames_total", None),
        drops,
        segments: bucket("+Inf"),
        segments_late: bucket("+Inf") - bucket("1"),
        daemon_cpu: metric_sum(&m, "kiroku_process_cpu_seconds_total", None),
        daemon_rss: metric_sum(&m, "kiroku_process_resident_memory_bytes", None),
        publisher_cpu: publisher.map_or(0.0, |p| process_cpu_seconds(p.0.id())),
        behind: metric_max(&m, "kiroku_task_behind_seconds"),
        api_requests: metric_sum(
            &m,
            "kiroku_api_request_duration_seconds_count",
            Some(("action", "DescribeCloudRecording")),
        ),
        api_within_10ms: metric_sum_where(
            &m,
            "kiroku_api_request_duration_seconds_bucket",
            &[("action", "DescribeCloudRecording"), ("le", "0.01")],
        ),
    })
}

fn create_body(shape: &BenchShape, sdk_app_id: u32, room: u32) -> serde_json::Value {
    let s = shape.spec;
    let mut body = serde_json::json!({
        "SdkAppId": sdk_app_id,
        "RoomId": room.to_string(),
        "UserId": format!("capacity_bot_{room}"),
        "UserSig": "capacity",
        "RecordParams": {
            "RecordMode": if s.mode == ShapeMode::Single { 1 } else { 2 },
            "MaxIdleTime": 120,
            "StreamType": if s.mode == ShapeMode::MixedAudio { 1 } else { 0 },
        },
    });
    if s.mode == ShapeMode::Mixed {
        let bitrate = if s.height > 720 { 2_500_000 } else { 1_500_000 };
        body["MixTranscodeParams"] = serde_json::json!({
            "VideoParams": {"Width": s.width, "Height": s.height, "Fps": s.fps, "BitRate": bitrate, "Gop": 2},
            "AudioParams": {"SampleRate": 1, "Channel": 2, "BitRate": 64000},
        });
        body["MixLayoutParams"] = serde_json::json!({"MixLayoutMode": 3});
    }
    body
}

/// Frames per second one task's publishers send.
fn frames_per_task(spec: &ShapeSpec) -> f64 {
    let per_user = if spec.mode == ShapeMode::MixedAudio {
        50.0
    } else {
        65.0
    };
    per_user * f64::from(spec.users)
}

/// Runs one step: `n` tasks of `shape`, fed, warmed up, judged, torn down.
async fn step(
    t: &Target,
    o: &BenchOptions,
    shape: &BenchShape,
    n: u32,
    first_room: u32,
) -> anyhow::Result<StepResult> {
    let last_room = first_room + n - 1;
    let mut tasks = Vec::new();
    let created = async {
        for room in first_room..=last_room {
            let v = t
                .call(
                    "CreateCloudRecording",
                    create_body(shape, o.sdk_app_id, room),
                )
                .await?;
            let id = v["Response"]["TaskId"]
                .as_str()
                .context("CreateCloudRecording answered without a TaskId")?;
            tasks.push(id.to_owned());
        }
        anyhow::Ok(())
    }
    .await;
    let outcome = match created {
        Ok(()) => feed_and_judge(t, o, shape, n, first_room, last_room, &tasks).await,
        Err(e) => Err(e),
    };
    for id in &tasks {
        let _ = t
            .call(
                "DeleteCloudRecording",
                serde_json::json!({"SdkAppId": o.sdk_app_id, "TaskId": id}),
            )
            .await;
    }
    wait_idle(t).await;
    outcome
}

async fn feed_and_judge(
    t: &Target,
    o: &BenchOptions,
    shape: &BenchShape,
    n: u32,
    first_room: u32,
    last_room: u32,
    tasks: &[String],
) -> anyhow::Result<StepResult> {
    let spec = shape.spec;
    let seconds = (o.warmup + o.window).as_secs_f64() + 30.0;
    let mut cmd = Command::new(&o.kiroku);
    cmd.args(["publish", "--url", &t.base])
        .args(["--sdk-app-id", &o.sdk_app_id.to_string()])
        .args(["--rooms", &format!("{first_room}-{last_room}")])
        .args(["--count", &spec.users.to_string(), "--user", "cap"])
        .args(["--duration", &format!("{seconds:.0}")])
        .args(["--width", "640", "--height", "360", "--fps", "15"])
        .args(["--bitrate", "500000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if spec.mode == ShapeMode::MixedAudio {
        cmd.arg("--no-video");
    }
    let publisher = Publisher(cmd.spawn().context("starting kiroku publish")?);
    let t0 = Instant::now();
    // Warm-up: every task has media, and then the configured settle time.
    let deadline = Instant::now() + o.warmup + Duration::from_secs(30);
    loop {
        let m = t.metrics_text().await?;
        let in_progress = metric_sum(&m, "kiroku_tasks", Some(("state", "in_progress")));
        if in_progress >= f64::from(n) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {in_progress} of {n} tasks had media {} s after publishing began",
                t0.elapsed().as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(o.warmup).await;
    let a = sample(t, Some(&publisher), t0).await?;
    let window_end = Instant::now() + o.window;
    let mut latencies = Vec::new();
    let mut i = 0usize;
    while Instant::now() < window_end {
        // The API under load: Describe, 10 a second.
        let id = &tasks[i % tasks.len()];
        i += 1;
        let started = Instant::now();
        t.call(
            "DescribeCloudRecording",
            serde_json::json!({"SdkAppId": o.sdk_app_id, "TaskId": id}),
        )
        .await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = sample(t, Some(&publisher), t0).await?;
    latencies.sort_by(f64::total_cmp);
    let p99 = latencies
        .get(((latencies.len() as f64) * 0.99).ceil() as usize)
        .or(latencies.last())
        .copied()
        .unwrap_or(0.0);
    let e = Expectation {
        tasks: n,
        frames_per_second: frames_per_task(&spec) * f64::from(n),
        api_p99_bound_ms: o.api_p99_ms,
        behind_bound_s: 1.0,
        frame_ratio: 0.97,
    };
    Ok(judge(&a, &b, &e, p99))
}

/// Waits until the daemon runs no recorder and no WHIP session (at most 60 s).
async fn wait_idle(t: &Target) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(m) = t.metrics_text().await {
            if metric_sum(&m, "kiroku_recorders", None) == 0.0
                && metric_sum(&m, "kiroku_ingest_peers", None) == 0.0
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs the whole bench; prints progress and a table; writes the profile.
pub async fn run(o: BenchOptions) -> anyhow::Result<Vec<ShapeOutcome>> {
    let all = shapes();
    let chosen: Vec<BenchShape> = if o.shapes.is_empty() {
        all
    } else {
        let mut v = Vec::new();
        for name in &o.shapes {
            let s = all.iter().find(|s| s.name == name).with_context(|| {
                let names: Vec<&str> = all.iter().map(|s| s.name).collect();
                format!("unknown shape {name:?}; shapes: {}", names.join(", "))
            })?;
            v.push(*s);
        }
        v
    };
    let target = Target::start(&o).await?;
    wait_idle(&target).await;
    let idle_rss = sample(&target, None, Instant::now()).await?.daemon_rss;
    let bar = o.progress.then(|| {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(Duration::from_millis(200));
        b
    });
    let mut outcomes = Vec::new();
    let mut room = 700_000u32;
    for shape in &chosen {
        let mut ramp = Ramp::new(shape.start, o.max_tasks, o.precision);
        let mut steps = Vec::new();
        while let Some(n) = ramp.next() {
            if let Some(b) = &bar {
                b.set_message(format!("{}: {n} task(s)…", shape.name));
            }
            let result = step(&target, &o, shape, n, room).await;
            room = room.saturating_add(n);
            let result = match result {
                Ok(r) => r,
                Err(e) => {
                    // A step that could not even start (tasks refused, media
                    // never came) broke the box as surely as a slow one.
                    tracing::warn!(shape = shape.name, tasks = n, error = %e, "step failed");
                    StepResult {
                        tasks: n,
                        recorded_fps: 0.0,
                        expected_fps: frames_per_task(&shape.spec) * f64::from(n),
                        ingest_fps: 0.0,
                        drops: 0.0,
                        segments: 0.0,
                        segments_late: 0.0,
                        behind_s: 0.0,
                        api_p99_ms: 0.0,
                        api_within_10ms: 0.0,
                        api_slow: false,
                        daemon_cores: 0.0,
                        daemon_rss: 0.0,
                        publisher_cores: 0.0,
                        broke: Some(Limit::Frames),
                    }
                }
            };
            let line = format!(
                "  {:<24} {:>4} task(s): {} ({:.2} cores, {:.0}/{:.0} frames/s, API p99 {:.1} ms, {:.1} % within 10 ms)",
                shape.name,
                n,
                result.broke.map_or("real time", Limit::label),
                result.daemon_cores,
                result.recorded_fps,
                result.expected_fps,
                result.api_p99_ms,
                100.0 * result.api_within_10ms
            );
            match &bar {
                Some(b) => b.println(line),
                // Not a terminal (a log, a pipe): one line per step.
                None => eprintln!("{line}"),
            }
            ramp.record(n, result.broke);
            steps.push(result);
        }
        let (held, limit) = ramp.outcome();
        let at_held = steps
            .iter()
            .rev()
            .find(|s| s.tasks == held && s.broke.is_none());
        let per = |v: f64| if held > 0 { v / f64::from(held) } else { 0.0 };
        outcomes.push(ShapeOutcome {
            name: shape.name.to_owned(),
            held_tasks: held,
            limit: limit
                .map_or("none (the ramp's ceiling)", Limit::label)
                .to_owned(),
            cpu_cores_per_task: per(at_held.map_or(0.0, |s| s.daemon_cores)),
            rss_bytes_per_task: per(at_held.map_or(0.0, |s| (s.daemon_rss - idle_rss).max(0.0))),
            streams_per_task: shape.spec.users,
            steps,
        });
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let compositor = match &target.own {
        Some(_) => o.compositor.clone(),
        None => "as configured on the target".to_owned(),
    };
    let profile = profile_of(&chosen, &outcomes, compositor);
    write_profile(&o.out, &profile)?;
    Ok(outcomes)
}

fn profile_of(
    shapes: &[BenchShape],
    outcomes: &[ShapeOutcome],
    compositor: String,
) -> CapacityProfile {
    let results = shapes
        .iter()
        .zip(outcomes)
        .map(|(s, o)| ProfileResult {
            name: s.name.to_owned(),
            shape: s.spec,
            held_tasks: o.held_tasks,
            cpu_cores_per_task: o.cpu_cores_per_task,
            rss_bytes_per_task: o.rss_bytes_per_task,
            limit: o.limit.clone(),
        })
        .collect();
    CapacityProfile {
        version: PROFILE_VERSION,
        measured_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        kiroku_version: env!("CARGO_PKG_VERSION").to_owned(),
        host: host(),
        compositor,
        encoder: "openh264".to_owned(),
        results,
    }
}

fn host() -> Host {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let memory_bytes = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: u64 = m
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            kb.checked_mul(1024)
        })
        .unwrap_or(0);
    Host {
        cpus: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        cpu_model,
        memory_bytes,
    }
}

/// Writes the profile atomically (temp file, fsync, rename).
fn write_profile(path: &Path, profile: &CapacityProfile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = serde_json::to_string_pretty(profile)?;
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))?;
    Ok(())
}

/// The table `kiroku bench capacity` prints.
pub fn render_table(outcomes: &[ShapeOutcome]) -> String {
    let mut s = format!(
        "{:<24} {:>6} {:>8} {:>14} {:>13}  {}\n",
        "shape", "tasks", "streams", "CPU/task", "RSS/task", "limit that broke first"
    );
    for o in outcomes {
        s.push_str(&format!(
            "{:<24} {:>6} {:>8} {:>9.3} cores {:>10.1} MB  {}\n",
            o.name,
            o.held_tasks,
            o.held_tasks.saturating_mul(o.streams_per_task),
            o.cpu_cores_per_task,
            o.rss_bytes_per_task / 1e6,
            o.limit
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_follow_labels_and_skip_comments_and_longer_names() {
        let text = "# HELP x\nkiroku_tasks{state=\"idle\"} 2\nkiroku_tasks{state=\"in_progress\"} 5\n\
                    kiroku_tasks_started_total 9\nkiroku_recorders 3\n\
                    kiroku_task_behind_seconds{task_id=\"a\"} 0.25\nkiroku_task_behind_seconds{task_id=\"b\"} 1.5\n";
        assert_eq!(metric_sum(text, "kiroku_tasks", None), 7.0);
        assert_eq!(
            metric_sum(text, "kiroku_tasks", Some(("state", "in_progress"))),
            5.0
        );
        assert_eq!(metric_sum(text, "kiroku_recorders", None), 3.0);
        assert_eq!(metric_sum(text, "kiroku_missing", None), 0.0);
        assert_eq!(metric_max(text, "kiroku_task_behind_seconds"), 1.5);
        let hist = "h_bucket{action=\"A\",le=\"0.01\"} 7\nh_bucket{action=\"B\",le=\"0.01\"} 5\nh_bucket{action=\"A\",le=\"0.1\"} 9\n";
        assert_eq!(
            metric_sum_where(hist, "h_bucket", &[("action", "A"), ("le", "0.01")]),
            7.0
        );
    }

    #[test]
    fn every_shape_has_a_unique_name_and_a_mixed_body_carries_its_canvas() {
        let all = shapes();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.dedup();
        assert_eq!(names.len(), 7);
        let mixed = all
            .iter()
            .find(|s| s.name == "mixed-25x360p-1080p15")
            .expect("shape");
        let body = create_body(mixed, 1_400_000_001, 7);
        assert_eq!(body["RecordParams"]["RecordMode"], 2);
        assert_eq!(body["MixTranscodeParams"]["VideoParams"]["Height"], 1080);
        let table = render_table(&[ShapeOutcome {
            name: "single-1av".into(),
            held_tasks: 10,
            limit: "frames".into(),
            steps: Vec::new(),
            cpu_cores_per_task: 0.01,
            rss_bytes_per_task: 2e6,
            streams_per_task: 1,
        }]);
        assert!(
            table.contains("single-1av") && table.contains("frames"),
            "{table}"
        );
    }
}
