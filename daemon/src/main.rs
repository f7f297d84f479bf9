//! The `kiroku` command.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kiroku::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "kiroku",
    version,
    about = "On-premises recording appliance with a Tencent TRTC-compatible cloud-recording API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (embedded defaults without --config).
    Serve {
        /// TOML configuration file (see docs/configuration.md).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and exit (0 = valid).
    CheckConfig {
        /// TOML configuration file.
        file: PathBuf,
    },
    /// Publish a synthetic test pattern and tone into a room over WHIP.
    Publish(Box<PublishArgs>),
    /// Measure this box (docs/performance.md "Capacity").
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Merge a folder of single-stream recordings into one MP4 (or M4A)
    /// per user and section, like TRTC_Merge.py (docs/merge.md).
    Merge(MergeArgs),
    /// Fleet mode: hand this box's rooms to the other boxes and let it exit
    /// (for an upgrade or a reboot; docs/fleet.md). Prints what went where.
    Drain {
        /// The box's configuration: its `public_url` and `admin_token` say
        /// where to ask and with what.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The box's URL, instead of the configuration's `public_url`.
        #[arg(long)]
        url: Option<String>,
    },
    /// Check an installation and say how to fix what is wrong: the
    /// configuration, ports, public_url, UDP, data_dir, io_uring, GPU and
    /// NVENC, S3 buckets, callback URLs, the clock. Works beside a running
    /// daemon too. Exit code 1 if anything will not work (docs/operations.md).
    Doctor {
        /// The configuration to check (without: the embedded defaults).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// A file holding a CloudStorage object as CreateCloudRecording
        /// takes it (Vendor, Region, Bucket, AccessKey, SecretKey): a probe
        /// object is put, read and deleted there. Repeatable.
        #[arg(long = "s3", value_name = "FILE")]
        s3: Vec<PathBuf>,
        /// Print the findings as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Ramp each task shape over real WHIP until real time breaks; print
    /// a table and write the capacity profile that admission uses
    /// (data_dir/capacity.json). Starts its own daemon unless --url.
    Capacity(Box<CapacityArgs>),
}

#[derive(clap::Args)]
struct CapacityArgs {
    /// The box's configuration: the profile goes to its data_dir (or
    /// limits.capacity_profile) and its recording.compositor is measured.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Where to write the profile (overrides --config's).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure a running daemon instead of starting one (give API
    /// credentials with --secret-id/--secret-key unless it runs in dev mode).
    #[arg(long)]
    url: Option<String>,
    #[arg(long)]
    secret_id: Option<String>,
    #[arg(long)]
    secret_key: Option<String>,
    #[arg(long, default_value_t = 1_400_000_001)]
    sdk_app_id: u32,
    /// Shapes to measure, comma separated (default: all): single-1av,
    /// single-5av, single-25av, mixed-4x360p-720p15, mixed-9x360p-720p15,
    /// mixed-25x360p-1080p15, mixed-audio-4.
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// Seconds every task must have had media before a window starts.
    #[arg(long, default_value_t = 6)]
    warmup: u64,
    /// Seconds of each measured window.
    #[arg(long, default_value_t = 20)]
    window: u64,
    /// The most tasks a ramp tries.
    #[arg(long, default_value_t = 400)]
    max_tasks: u32,
    /// Bisection stops within this share of the count that held.
    #[arg(long, default_value_t = 0.1)]
    precision: f64,
    /// The API's p99 under load (DescribeCloudRecording) as this command
    /// sees it, ms, above which a window is reported `api_slow` (reported
    /// beside the verdict, which is about the media).
    #[arg(long, default_value_t = 100.0)]
    api_p99_ms: f64,
    /// Short windows and a coarse ramp (minutes instead of half an hour).
    #[arg(long)]
    quick: bool,
    /// Print the outcome as JSON (after the table).
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct MergeArgs {
    /// Folder of recordings; every UserId in it is processed. Outputs are
    /// written into it.
    #[arg(short = 'f', value_name = "DIR")]
    folder: PathBuf,
    /// 0: one file per section (a gap over 15 s starts a new one);
    /// 1: one file per user, gaps filled with black and silence.
    #[arg(short = 'm', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    mode: u8,
    /// With -m 1: drop the gaps instead of filling them.
    #[arg(short = 's')]
    drop_gaps: bool,
    /// 0: main video + audio; 1: main if present, else aux; 2: aux + audio.
    #[arg(short = 'a', default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    av: u8,
    /// Output frame rate (5..120, clamped); re-encodes the video. Without
    /// it the recorded rate is kept (15 fps when a re-encode is needed).
    #[arg(short = 'p', value_name = "FPS")]
    fps: Option<u32>,
    /// Output size; re-encodes the video (letterboxed to keep the aspect).
    #[arg(short = 'r', num_args = 2, value_names = ["W", "H"])]
    size: Option<Vec<u32>>,
    /// Replace output files that already exist.
    #[arg(long)]
    overwrite: bool,
    /// Print a JSON summary as the last line.
    #[arg(long)]
    json: bool,
}

/// Progress bars on a terminal: one per output file, labelled with its user.
struct Bars {
    bar: Option<indicatif::ProgressBar>,
}

impl kiroku::merge::Progress for Bars {
    fn start(&mut self, file: &str, user_id: &str, total_ms: u64) {
        let bar = indicatif::ProgressBar::new(total_ms.max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>12} {bar:30} {percent:>3}% {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_prefix(user_id.to_owned());
        bar.set_message(file.to_owned());
        self.bar = Some(bar);
    }
    fn advance(&mut self, done_ms: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done_ms);
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn merge(args: MergeArgs) -> ExitCode {
    let av = match args.av {
        1 => kiroku::merge::AvChoice::Auto,
        2 => kiroku::merge::AvChoice::Aux,
        _ => kiroku::merge::AvChoice::Main,
    };
    let options = kiroku::merge::MergeOptions {
        dir: args.folder,
        merge_user: args.mode == 1,
        drop_gaps: args.drop_gaps,
        av,
        fps: args.fps,
        size: args.size.as_deref().and_then(|s| match s {
            [w, h] => Some((*w, *h)),
            _ => None,
        }),
        overwrite: args.overwrite,
    };
    if args.drop_gaps && !options.merge_user {
        eprintln!(
            "kiroku merge: note: -s only changes -m 1 (sections are separate files with -m 0)"
        );
    }
    let report = match kiroku::merge::run(&options, &mut Bars { bar: None }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiroku merge: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &report.warnings {
        eprintln!("kiroku merge: warning: {w}");
    }
    for o in &report.outputs {
        println!(
            "{} {:.3} {} ({})",
            o.file,
            o.duration_ms as f64 / 1000.0,
            o.method,
            o.detail
        );
    }
    for (file, why) in &report.failed {
        eprintln!("kiroku merge: {file} could not be made: {why}");
    }
    if args.json {
        match serde_json::to_string(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => eprintln!("kiroku merge: JSON summary: {e}"),
        }
    }
    if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[derive(clap::Args)]
struct PublishArgs {
    /// Base URL of the kiroku daemon.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// SdkAppId of the room.
    #[arg(long, default_value_t = 1_400_000_001)]
    sdk_app_id: u32,
    /// Room id (an integer room unless --string-room).
    #[arg(long, required_unless_present = "rooms", conflicts_with = "rooms")]
    room: Option<String>,
    /// Publish the same users into every room FIRST-LAST (integer room
    /// ids, at most 1000 rooms), encoding once: a density load generator.
    #[arg(long, value_name = "FIRST-LAST")]
    rooms: Option<String>,
    /// The room id is a string room id (RoomIdType 0).
    #[arg(long)]
    string_room: bool,
    /// User id; with --count N the users are <user>_1 .. <user>_N.
    #[arg(long, default_value = "publisher")]
    user: String,
    /// Number of users to publish (one encoder, sent N times).
    #[arg(long, default_value_t = 1)]
    count: usize,
    /// Also publish an aux (screen share) stream per user.
    #[arg(long)]
    aux: bool,
    /// Seconds to publish.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// UserSig to send as Bearer token.
    #[arg(long)]
    user_sig: Option<String>,
    /// Key to issue a UserSig per user (TLS-Sig-API v2), instead of --user-sig.
    #[arg(long)]
    user_sig_key: Option<String>,
    #[arg(long, default_value_t = 640)]
    width: u32,
    #[arg(long, default_value_t = 360)]
    height: u32,
    #[arg(long, default_value_t = 15)]
    fps: u32,
    /// Video bitrate in bits/s.
    #[arg(long, default_value_t = 600_000)]
    bitrate: u32,
    /// Base colour, #RRGGBB.
    #[arg(long, default_value = "#2060c0")]
    color: String,
    /// bars (moving colour bars) or solid (one colour, for layout tests).
    #[arg(long, default_value = "bars")]
    pattern: String,
    /// Tone frequency in Hz.
    #[arg(long, default_value_t = 440.0)]
    tone: f32,
    /// Key frame interval in frames.
    #[arg(long, default_value_t = 30)]
    keyframe_interval: u32,
    #[arg(long)]
    no_audio: bool,
    #[arg(long)]
    no_video: bool,
    /// Local IP to send from.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Vanish at the end without a WHIP DELETE (tests consent timeouts).
    #[arg(long)]
    no_delete: bool,
    /// Publish again (backoff 0.5 s doubling to 5 s) when a session fails,
    /// e.g. when its box dies and another takes the room over.
    #[arg(long)]
    reconnect: bool,
    /// Connect with audio and video negotiated but send no media.
    #[arg(long)]
    mute: bool,
    /// Print the final report as JSON.
    #[arg(long)]
    json: bool,
    /// A/V sync marks every SECONDS of media time: a white video frame and
    /// a 100 ms louder beep at the same instant (for checking recordings).
    #[arg(long, value_name = "SECONDS")]
    sync_marks: Option<f64>,
}

/// `kiroku drain`: `POST /v1/drain` on the box, with its admin token
/// (from the configuration, else `KIROKU_ADMIN_TOKEN`).
fn doctor(config: Option<PathBuf>, s3_targets: Vec<PathBuf>, json: bool) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiroku doctor: {e}");
            return ExitCode::from(2);
        }
    };
    let args = kiroku::doctor::DoctorArgs { config, s3_targets };
    let report = runtime.block_on(kiroku::doctor::run(&args));
    if json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render_text());
    }
    ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(1))
}

fn drain(config: Option<PathBuf>, url: Option<String>) -> anyhow::Result<()> {
    let config = match config {
        Some(path) => {
            Some(Config::load(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let base = url
        .or_else(|| config.as_ref().map(|c| c.server.public_url.clone()))
        .ok_or_else(|| anyhow::anyhow!("give --config or --url"))?;
    let token = config
        .as_ref()
        .and_then(|c| c.server.admin_token.as_ref().map(|t| t.expose().to_owned()))
        .or_else(|| std::env::var("KIROKU_ADMIN_TOKEN").ok());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // A drain waits for each room's recorders and uploads: minutes at
        // most (server.shutdown_grace_seconds a room).
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3600))
            .build()?;
        let mut req = http.post(format!("{}/v1/drain", base.trim_end_matches('/')));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let answer = req.send().await?;
        let status = answer.status();
        let body = answer.text().await?;
        if !status.is_success() {
            anyhow::bail!("{status}: {body}");
        }
        println!("{body}");
        Ok(())
    })
}

/// Logging of the tools (publish, bench capacity): warnings and up to
/// stderr, or what `KIROKU_LOG` asks for.
fn init_tool_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KIROKU_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn publish(a: PublishArgs) -> anyhow::Result<()> {
    use kiroku::publish::client::{self, PublishOptions};
    use kiroku::publish::source::{AudioConfig, Pattern, Rgb, VideoConfig};
    init_tool_logging();
    if a.count == 0 || a.count > 10_000 {
        anyhow::bail!("--count must be 1..=10000");
    }
    let rooms = match (&a.room, &a.rooms) {
        (Some(room), None) => vec![room.clone()],
        (None, Some(range)) => {
            client::room_range(range).map_err(|e| anyhow::anyhow!("--rooms: {e}"))?
        }
        _ => anyhow::bail!("give --room or --rooms"),
    };
    if rooms.len().saturating_mul(a.count) > 10_000 {
        anyhow::bail!("--rooms × --count must be at most 10000 users");
    }
    if !(a.duration.is_finite() && a.duration > 0.0) {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    let color: Rgb = a
        .color
        .parse()
        .map_err(|e| anyhow::anyhow!("--color: {e}"))?;
    let pattern: Pattern = a
        .pattern
        .parse()
        .map_err(|e| anyhow::anyhow!("--pattern: {e}"))?;
    let sync_marks = match a.sync_marks {
        Some(s) if s.is_finite() && (0.2..=3600.0).contains(&s) => {
            Some(std::time::Duration::from_secs_f64(s))
        }
        Some(_) => anyhow::bail!("--sync-marks must be 0.2..=3600 seconds"),
        None => None,
    };
    let video = (!a.no_video).then(|| VideoConfig {
        width: a.width,
        height: a.height,
        fps: a.fps,
        bitrate_bps: a.bitrate,
        label: a.user.clone(),
        color,
        pattern,
        keyframe_interval_frames: a.keyframe_interval,
        sync_marks,
    });
    let audio = (!a.no_audio).then(|| AudioConfig {
        frequency_hz: a.tone,
        sync_marks,
        ..AudioConfig::default()
    });
    let opts = PublishOptions {
        url: a.url,
        sdk_app_id: a.sdk_app_id,
        rooms,
        string_room: a.string_room,
        user: a.user,
        count: a.count,
        aux: a.aux,
        duration: std::time::Duration::from_secs_f64(a.duration),
        user_sig: a.user_sig,
        user_sig_key: a.user_sig_key,
        video,
        audio,
        bind: a.bind,
        no_delete: a.no_delete,
        reconnect: a.reconnect,
        mute: a.mute,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let report = runtime.block_on(async {
        let stop2 = stop.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop2.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        client::run(opts, stop).await
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&report).unwrap_or_default());
    } else {
        println!(
            "published {:.1} s: {} session(s), {} connected; {} video / {} audio frames encoded, {} / {} sent; {} key frame request(s); {} bytes",
            report.seconds,
            report.sessions,
            report.connected,
            report.video_frames_encoded,
            report.audio_frames_encoded,
            report.video_frames_sent,
            report.audio_frames_sent,
            report.keyframe_requests,
            report.bytes_sent
        );
    }
    if report.connected < report.sessions {
        anyhow::bail!(
            "{} of {} sessions never connected",
            report.sessions - report.connected,
            report.sessions
        );
    }
    Ok(())
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KIROKU_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config);
    if !kiroku::heap::map_large_blocks() {
        tracing::debug!("the C library's mmap threshold is its own (not glibc)");
    }
    if config.dev_mode() {
        tracing::warn!(
            listen = %config.server.listen,
            "OPEN DEV MODE: no [[credentials]] configured, API requests are NOT authenticated. \
             Allowed only on loopback; configure [[credentials]] for production."
        );
    }
    if config.apps.is_empty() && config.dev_mode() {
        tracing::warn!(
            "no [[apps]] configured: any SdkAppId is accepted and no callbacks are sent"
        );
    }
    let config = Arc::new(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiroku-io")
        .build()
        .context("starting the async runtime")?;
    // Draining takes at most the HTTP grace, then the recorders' grace
    // and the compositor's release (5 s); past that plus a margin the
    // process exits anyway, whatever is still pending (uploads stay in the
    // spool and resume at the next start).
    let grace = config.server.shutdown_grace;
    let deadline = grace
        .saturating_mul(2)
        .saturating_add(std::time::Duration::from_secs(15));
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (server.listen)", config.server.listen)
            })?;
        let shutdown = async move {
            shutdown_signal().await;
            exit_anyway_after(deadline);
        };
        kiroku::server::run(config, listener, shutdown)
            .await
            .context("server")
    });
    // Blocking work still running (a stuck disk, a slow upload) must not
    // hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    result
}

/// Ends the process `after` from now unless it has ended by then: a
/// shutdown never hangs on something that does not finish.
fn exit_anyway_after(after: std::time::Duration) {
    let spawned = std::thread::Builder::new()
        .name("shutdown-deadline".into())
        .spawn(move || {
            std::thread::sleep(after);
            tracing::error!(
                after_s = after.as_secs(),
                "shutdown did not complete in time: exiting anyway"
            );
            std::process::exit(1);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no shutdown deadline thread");
    }
}

fn bench_capacity(a: CapacityArgs) -> anyhow::Result<()> {
    use kiroku::benchmark::{self, BenchOptions};
    init_tool_logging();
    let config = match &a.config {
        Some(path) => {
            Some(Config::load(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?)
        }
        None => None,
    };
    let out = a
        .out
        .clone()
        .or_else(|| config.as_ref().map(|c| c.limits.capacity_profile.clone()))
        .ok_or_else(|| {
            anyhow::anyhow!("give --config (the profile goes to its data_dir) or --out FILE")
        })?;
    let compositor = match config.as_ref().map(|c| c.recording.compositor) {
        Some(kiroku::config::CompositorPreference::Cpu) => "cpu",
        Some(kiroku::config::CompositorPreference::Gpu) => "gpu",
        _ => "auto",
    };
    if !(a.precision.is_finite() && (0.01..=1.0).contains(&a.precision)) {
        anyhow::bail!("--precision must be 0.01..=1");
    }
    let (warmup, window, precision) = if a.quick {
        (a.warmup.min(3), a.window.min(8), a.precision.max(0.25))
    } else {
        (a.warmup, a.window, a.precision)
    };
    let opts = BenchOptions {
        kiroku: std::env::current_exe().context("the path of this kiroku binary")?,
        url: a.url,
        secret_id: a.secret_id,
        secret_key: a.secret_key,
        sdk_app_id: a.sdk_app_id,
        shapes: a.shapes,
        warmup: std::time::Duration::from_secs(warmup),
        window: std::time::Duration::from_secs(window.max(2)),
        max_tasks: a.max_tasks.max(1),
        precision,
        api_p99_ms: a.api_p99_ms,
        compositor: compositor.to_owned(),
        out: out.clone(),
        progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // Interrupted, the run is dropped: its daemon and publishers are
    // killed and its folder removed on the way out.
    let outcomes = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = benchmark::run(opts) => r,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            _ = term.recv() => anyhow::bail!("terminated"),
        }
    })?;
    print!("{}", benchmark::render_table(&outcomes));
    println!("capacity profile written to {}", out.display());
    if a.json {
        println!("{}", serde_json::to_string(&outcomes)?);
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench(BenchCommand::Capacity(args)) => match bench_capacity(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiroku bench capacity: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Merge(args) => merge(args),
        Command::Doctor { config, s3, json } => doctor(config, s3, json),
        Command::Drain { config, url } => match drain(config, url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiroku drain: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Publish(args) => match publish(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("kiroku publish: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                // The certificate and key are read as the daemon would.
                if let Some(files) = &c.server.tls {
                    if let Err(e) = kiroku::tls::load(files) {
                        eprintln!("invalid configuration: server.tls_cert / server.tls_key: {e}");
                        return ExitCode::from(2);
                    }
                }
                if let Err(e) = kiroku::server::sealer_for(&c.secrets) {
                    eprintln!("invalid configuration: [secrets]: {e}");
                    return ExitCode::from(2);
                }
                println!(
                    "{}: valid ({} mode, listen {} ({}), data_dir {}, {} app(s), secrets at rest {})",
                    file.display(),
                    if c.dev_mode() {
                        "open dev"
                    } else {
                        "authenticated"
                    },
                    c.server.listen,
                    if c.server.tls.is_some() {
                        "TLS"
                    } else {
                        "plain HTTP"
                    },
                    c.data_dir.display(),
                    c.apps.len(),
                    if c.secrets.key_file.is_some() {
                        "sealed"
                    } else {
                        "plain (0600)"
                    }
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("invalid configuration: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let config = match config {
                Some(path) => match Config::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("invalid configuration: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => Config::embedded_defaults(),
            };
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("kiroku: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
