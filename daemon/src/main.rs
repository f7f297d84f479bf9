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
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!("cannot listen on {} (server.listen)", config.server.listen)
            })?;
        kiroku::server::run(config, listener, shutdown_signal())
            .await
            .context("server")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(c) => {
                println!(
                    "{}: valid ({} mode, listen {}, data_dir {}, {} app(s))",
                    file.display(),
                    if c.dev_mode() {
                        "open dev"
                    } else {
                        "authenticated"
                    },
                    c.server.listen,
                    c.data_dir.display(),
                    c.apps.len()
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
