//! Daemon configuration: TOML on disk → [`Config`], validated once.
//!
//! The file is parsed into `Raw*` structs that mirror the TOML exactly
//! (`deny_unknown_fields`, so a misspelt key is refused with its name), then
//! [`Config::from_raw`] checks the cross-field rules (dev mode only on
//! loopback, unique ids, a key for every callback URL) and produces the
//! values the rest of the daemon trusts. Every key is documented in
//! `docs/configuration.md` and in `packaging/kiroku.toml`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod cluster;
mod raw;
mod storage;

use cluster::cluster_config;
pub use cluster::ClusterConfig;
use raw::*;
use storage::storage_config;
pub use storage::{S3Config, StorageConfig};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: ServerConfig,
    pub limits: Limits,
    pub callbacks: CallbackConfig,
    pub log: LogConfig,
    pub ingest: IngestConfig,
    pub recording: RecordingConfig,
    pub storage: StorageConfig,
    /// Outbound fetches of layout images (docs/security.md, "Outbound
    /// fetches").
    pub fetch: FetchConfig,
    /// TC3-HMAC-SHA256 API keys. Empty = open dev mode (loopback only).
    pub credentials: Vec<Credential>,
    /// Known applications. Empty in dev mode = any SdkAppId is accepted.
    pub apps: Vec<AppConfig>,
    /// Keys that seal secrets at rest (docs/security.md).
    pub secrets: SecretsConfig,
    /// Fleet mode (docs/fleet.md).
    pub cluster: ClusterConfig,
}

/// `[secrets]`: the key files of [`crate::sealing`]; none: plain (0600).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecretsConfig {
    pub key_file: Option<PathBuf>,
    pub previous_key_files: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub public_url: String,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// Credential-scope services a TC3 signature may name; `None` accepts
    /// any (Tencent's Node.js and Java SDKs sign for the endpoint's first
    /// DNS label, e.g. `127` for `127.0.0.1:8080`). docs/api.md.
    pub signed_services: Option<Vec<String>>,
    /// The operator credential for the status and admin endpoints
    /// (`/v1/*`, `Authorization: Bearer <token>`); docs/security.md.
    pub admin_token: Option<Secret>,
    /// The HTTP edge (docs/security.md, "Connections").
    pub connections: ConnectionLimits,
    /// TLS on the listener (PEM files, reloaded on SIGHUP); `None`: plain
    /// HTTP.
    pub tls: Option<TlsFiles>,
    /// A second, plain-HTTP listener for `/metrics` and `/healthz`; when
    /// set, the main listener no longer serves `/metrics`.
    pub metrics_listen: Option<SocketAddr>,
}

/// The listener's certificate chain and private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Which otherwise-refused addresses layout images may be fetched from.
#[derive(Debug, Clone, Default)]
pub struct FetchConfig {
    /// Networks allowed although loopback, private, link-local etc.
    pub allow: Vec<ipnet::IpNet>,
}

/// Bounds on the HTTP listener's clients.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at once, over all clients.
    pub max: usize,
    /// Open connections at once from one client address.
    pub per_address: usize,
    /// How long a client may take to send a request's headers (also the
    /// idle time allowed between requests on a kept-alive connection).
    pub header_timeout: Duration,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
}

/// A secret from the configuration: compared in constant time, never
/// printed (its `Debug` is redacted).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Whether `candidate` is this secret, in time that does not depend on
    /// where they differ.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The value, for the one place that must use it (never a log).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The shortest secret the configuration accepts (API secret keys, the
/// admin token): 16 bytes, so that a guessed or example value cannot pass.
pub const MIN_SECRET_BYTES: usize = 16;

/// Values from examples and documentation that must never guard a box.
const PLACEHOLDER_SECRETS: &[&str] = &[
    "change-me",
    "changeme",
    "change-me-too",
    "change-me-three",
    "change-me-to-a-long-random-string",
];

/// Whether an `http://` URL's host is this machine's loopback.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    is_loopback_host(authority.rsplit_once('@').map_or(authority, |(_, h)| h))
}

/// Whether a host (as in a `Host` header or a URL's authority, with or
/// without a port) names this machine's loopback: `localhost`,
/// `127.x.y.z`, `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Refuses a secret that is short or a known placeholder.
fn check_secret(key: &str, value: &str) -> Result<(), ConfigError> {
    if PLACEHOLDER_SECRETS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(value.trim()))
    {
        return Err(invalid(
            key,
            "is an example placeholder: generate a real one (e.g. `openssl rand -hex 24`)",
        ));
    }
    if value.len() < MIN_SECRET_BYTES {
        return Err(invalid(
            key,
            format!("is shorter than {MIN_SECRET_BYTES} bytes: generate a longer one (e.g. `openssl rand -hex 24`)"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_tasks: usize,
    pub api_rate_per_second: u32,
    /// End-of-task packing jobs (HLS → MP4) at once; the others wait.
    pub packing_jobs: usize,
    /// Admission by cost: the share of measured capacity admitted.
    pub capacity_fraction: f64,
    pub admit_by_cost: bool,
    /// The capacity profile (`kiroku bench capacity` writes it).
    pub capacity_profile: PathBuf,
}

#[derive(Debug, Clone, Copy)]
pub struct CallbackConfig {
    /// How long an undelivered callback is retried before it is given up.
    pub retry_for: Duration,
    /// Per-attempt HTTP timeout.
    pub timeout: Duration,
    /// Callback POSTs in flight at once (over all tasks).
    pub max_in_flight: usize,
}

/// WebRTC ingest: the one UDP socket and the addresses put in ICE candidates.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub udp_listen: SocketAddr,
    /// Empty: advertise `udp_listen` itself.
    pub advertised_addresses: Vec<std::net::IpAddr>,
    /// WHIP offers accepted per minute (docs/security.md, "WHIP offers").
    pub offer_limits: OfferLimits,
}

/// How many WHIP offers are taken: each rate is a bucket of a minute's
/// worth that refills continuously; over it an offer gets 429 with
/// `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferLimits {
    pub per_address: u32,
    pub per_app: u32,
    pub per_room: u32,
    /// Sessions whose peer has not connected yet, at most (each for at most
    /// the engine's 30 s connect timeout); over it an offer gets 503.
    pub max_pending: usize,
}

impl Default for OfferLimits {
    fn default() -> Self {
        Self {
            per_address: 60,
            per_app: 1200,
            per_room: 120,
            max_pending: 256,
        }
    }
}

/// How recordings are cut into HLS segments.
#[derive(Debug, Clone)]
pub struct RecordingConfig {
    /// Target segment duration: segments are cut at the first key frame
    /// after it.
    pub segment: Duration,
    /// How far past the target a segment may run before the publisher is
    /// asked for a key frame.
    pub keyframe_grace: Duration,
    /// How long past `segment + keyframe_grace` a segment waits for a key
    /// frame before it is ended without one (a publisher ignoring PLIs).
    pub max_keyframe_wait: Duration,
    /// How far behind real time mixed-stream output frames are rendered,
    /// so that late media still makes its frame.
    pub mix_latency: Duration,
    /// Which compositor mixed-stream tasks use.
    pub compositor: CompositorPreference,
    /// Where open segments are made durable about once a second
    /// (`record::journal`; default `data_dir/journal`). On a filesystem
    /// the fleet shares, the box that takes a dead box's task over
    /// recovers them too (docs/fleet.md).
    pub journal_dir: PathBuf,
}

/// `recording.compositor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompositorPreference {
    /// A real GPU when one is found, else the CPU.
    Auto,
    Cpu,
    /// Any wgpu adapter, software rasterisers included (testing).
    Gpu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Clone)]
pub struct Credential {
    pub secret_id: String,
    pub secret_key: String,
    /// The SdkAppIds this key may act for; `None`: every configured app.
    pub apps: Option<Vec<u32>>,
}

impl Credential {
    pub fn may_act_for(&self, sdk_app_id: u32) -> bool {
        self.apps.as_ref().is_none_or(|a| a.contains(&sdk_app_id))
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("secret_id", &self.secret_id)
            .field("secret_key", &"<redacted>")
            .field("apps", &self.apps)
            .finish()
    }
}

#[derive(Clone)]
pub struct AppConfig {
    pub sdk_app_id: u32,
    pub user_sig_key: Option<String>,
    pub callback: Option<CallbackTarget>,
    /// Live tasks of this app at once, beside `limits.max_tasks`.
    pub max_tasks: Option<usize>,
}

impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("sdk_app_id", &self.sdk_app_id)
            .field(
                "user_sig_key",
                &self.user_sig_key.as_ref().map(|_| "<redacted>"),
            )
            .field("callback", &self.callback.as_ref().map(|c| &c.url))
            .field("max_tasks", &self.max_tasks)
            .finish()
    }
}

/// Where an app's callbacks go and the key that signs them.
#[derive(Clone)]
pub struct CallbackTarget {
    pub url: String,
    pub key: String,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA_DIR: &str = "./kiroku-data";
pub const DEFAULT_MAX_TASKS: usize = 100;
pub const DEFAULT_UDP_PORT: u16 = 8443;
pub const DEFAULT_API_RATE: u32 = 20;
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_CALLBACK_RETRY_FOR_SECONDS: u64 = 24 * 3600;

impl Config {
    /// The embedded defaults (`kiroku serve` without `--config`).
    pub fn embedded_defaults() -> Self {
        // The raw default has no required fields, so this cannot fail; a
        // failure would be a bug in the defaults themselves.
        Self::from_raw(RawConfig::default()).expect("embedded defaults are valid")
    }

    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        Self::from_raw(raw)
    }

    /// True when no API credentials are configured: requests are not
    /// signature-checked. Only allowed on a loopback listen address.
    pub fn dev_mode(&self) -> bool {
        self.credentials.is_empty()
    }

    pub fn app(&self, sdk_app_id: u32) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.sdk_app_id == sdk_app_id)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let listen_text = raw
            .server
            .listen
            .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            invalid(
                "server.listen",
                format!("`{listen_text}` is not an IP:port address (e.g. 127.0.0.1:8080)"),
            )
        })?;
        let tls = match (raw.server.tls_cert, raw.server.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "server.tls_cert",
                    "tls_cert and tls_key go together: give both (TLS) or neither (plain HTTP)",
                ))
            }
        };
        let public_url = match raw.server.public_url {
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(invalid(
                        "server.public_url",
                        format!("`{url}` must start with http:// or https://"),
                    ));
                }
                if tls.is_some() && url.starts_with("http://") {
                    return Err(invalid(
                        "server.public_url",
                        format!("`{url}`: the listener serves TLS (server.tls_cert), so its public URL starts with https://"),
                    ));
                }
                url.trim_end_matches('/').to_owned()
            }
            None if tls.is_some() => format!("https://{listen}"),
            None => format!("http://{listen}"),
        };
        let metrics_listen = match raw.server.metrics_listen {
            Some(text) => {
                let addr: SocketAddr = text.parse().map_err(|_| {
                    invalid(
                        "server.metrics_listen",
                        format!("`{text}` is not an IP:port address (e.g. 127.0.0.1:9464)"),
                    )
                })?;
                if addr == listen {
                    return Err(invalid(
                        "server.metrics_listen",
                        "must differ from server.listen (leave it out to serve /metrics there)",
                    ));
                }
                Some(addr)
            }
            None => None,
        };
        let max_body_bytes = raw.server.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        if !(1024..=64 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(invalid(
                "server.max_body_bytes",
                "must be between 1024 and 67108864",
            ));
        }
        let shutdown_grace = Duration::from_secs(raw.server.shutdown_grace_seconds.unwrap_or(30));
        let signed_services = match raw.server.signed_services {
            Some(list) if list.is_empty() => {
                return Err(invalid(
                    "server.signed_services",
                    "must name at least one service (leave it out to accept any)",
                ))
            }
            Some(list) => {
                // A name with a '/' or a space could never stand in a
                // credential scope: refuse it rather than never match.
                if let Some(bad) = list
                    .iter()
                    .find(|s| s.is_empty() || s.bytes().any(|b| b == b'/' || !b.is_ascii_graphic()))
                {
                    return Err(invalid(
                        "server.signed_services",
                        format!("`{bad}` cannot be a credential-scope service"),
                    ));
                }
                Some(list)
            }
            None => None,
        };
        let connections = ConnectionLimits {
            max: raw.server.max_connections.unwrap_or(4096),
            per_address: raw.server.max_connections_per_address.unwrap_or(256),
            header_timeout: Duration::from_secs(raw.server.header_timeout_seconds.unwrap_or(10)),
            body_timeout: Duration::from_secs(raw.server.body_timeout_seconds.unwrap_or(30)),
        };
        if connections.max == 0 || connections.per_address == 0 {
            return Err(invalid(
                "server.max_connections",
                "max_connections and max_connections_per_address must be at least 1",
            ));
        }
        if connections.per_address > connections.max {
            return Err(invalid(
                "server.max_connections_per_address",
                "must not exceed server.max_connections",
            ));
        }
        if !(1..=3600).contains(&connections.header_timeout.as_secs())
            || !(1..=3600).contains(&connections.body_timeout.as_secs())
        {
            return Err(invalid(
                "server.header_timeout_seconds",
                "header_timeout_seconds and body_timeout_seconds must be between 1 and 3600",
            ));
        }
        let admin_token = match raw.server.admin_token {
            Some(token) => {
                check_secret("server.admin_token", &token)?;
                Some(Secret(token))
            }
            None => None,
        };

        let max_tasks = raw.limits.max_tasks.unwrap_or(DEFAULT_MAX_TASKS);
        if max_tasks == 0 {
            return Err(invalid("limits.max_tasks", "must be at least 1"));
        }
        let packing_jobs = raw.limits.packing_jobs.unwrap_or(2);
        if !(1..=64).contains(&packing_jobs) {
            return Err(invalid("limits.packing_jobs", "must be between 1 and 64"));
        }
        let capacity_fraction = raw.limits.capacity_fraction.unwrap_or(0.8);
        if !(capacity_fraction.is_finite() && (0.05..=1.0).contains(&capacity_fraction)) {
            return Err(invalid(
                "limits.capacity_fraction",
                "must be between 0.05 and 1.0 (the share of measured capacity admitted)",
            ));
        }
        let capacity_profile = match raw.limits.capacity_profile.clone() {
            Some(p) => p,
            None => raw
                .data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
                .join("capacity.json"),
        };
        let api_rate_per_second = raw.limits.api_rate_per_second.unwrap_or(DEFAULT_API_RATE);
        if api_rate_per_second == 0 {
            return Err(invalid("limits.api_rate_per_second", "must be at least 1"));
        }

        let retry_for = Duration::from_secs(
            raw.callbacks
                .retry_for_seconds
                .unwrap_or(DEFAULT_CALLBACK_RETRY_FOR_SECONDS),
        );
        let timeout_seconds = raw.callbacks.timeout_seconds.unwrap_or(5);
        if !(1..=120).contains(&timeout_seconds) {
            return Err(invalid("callbacks.timeout_seconds", "must be 1..=120"));
        }
        let max_in_flight = raw.callbacks.max_in_flight.unwrap_or(16);
        let callbacks_allow_http = raw.callbacks.allow_http.unwrap_or(false);
        if max_in_flight == 0 {
            return Err(invalid("callbacks.max_in_flight", "must be at least 1"));
        }

        let level = raw.log.level.unwrap_or_else(|| "info".to_owned());
        let format = match raw.log.format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(invalid(
                    "log.format",
                    format!("`{other}` is not one of \"text\", \"json\""),
                ))
            }
        };

        let mut seen_ids = HashSet::new();
        let mut credentials = Vec::with_capacity(raw.credentials.len());
        for (i, c) in raw.credentials.into_iter().enumerate() {
            if c.secret_id.is_empty() || c.secret_key.is_empty() {
                return Err(invalid(
                    format!("credentials[{i}]"),
                    "secret_id and secret_key must not be empty",
                ));
            }
            check_secret(&format!("credentials[{i}].secret_key"), &c.secret_key)?;
            if !seen_ids.insert(c.secret_id.clone()) {
                return Err(invalid(
                    format!("credentials[{i}].secret_id"),
                    format!("`{}` appears twice", c.secret_id),
                ));
            }
            if c.apps.as_ref().is_some_and(Vec::is_empty) {
                return Err(invalid(
                    format!("credentials[{i}].apps"),
                    "must name at least one SdkAppId (leave it out for every app)",
                ));
            }
            credentials.push(Credential {
                secret_id: c.secret_id,
                secret_key: c.secret_key,
                apps: c.apps,
            });
        }

        let mut seen_apps = HashSet::new();
        let mut apps = Vec::with_capacity(raw.apps.len());
        for (i, a) in raw.apps.into_iter().enumerate() {
            if a.sdk_app_id == 0 {
                return Err(invalid(format!("apps[{i}].sdk_app_id"), "must not be 0"));
            }
            if !seen_apps.insert(a.sdk_app_id) {
                return Err(invalid(
                    format!("apps[{i}].sdk_app_id"),
                    format!("{} appears twice", a.sdk_app_id),
                ));
            }
            if a.user_sig_key.as_deref() == Some("") {
                return Err(invalid(
                    format!("apps[{i}].user_sig_key"),
                    "must not be empty (leave it out to accept any UserSig)",
                ));
            }
            if let Some(key) = &a.user_sig_key {
                check_secret(&format!("apps[{i}].user_sig_key"), key)?;
            }
            let callback = match (a.callback_url, a.callback_key) {
                (None, None) => None,
                (Some(url), Some(key)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        return Err(invalid(
                            format!("apps[{i}].callback_url"),
                            format!("`{url}` must start with http:// or https://"),
                        ));
                    }
                    // Callbacks carry task ids, file names and user ids,
                    // and their signature can be replayed: plain HTTP off
                    // the box is an explicit choice, as for storage.s3.
                    if url.starts_with("http://") && !callbacks_allow_http && !is_loopback_url(&url)
                    {
                        return Err(invalid(
                            format!("apps[{i}].callback_url"),
                            format!(
                                "`{url}` is plain HTTP to another host: use https://, or set \
                                 callbacks.allow_http = true to permit it"
                            ),
                        ));
                    }
                    check_secret(&format!("apps[{i}].callback_key"), &key)?;
                    Some(CallbackTarget { url, key })
                }
                (Some(_), None) => {
                    return Err(invalid(
                        format!("apps[{i}].callback_key"),
                        "is required with callback_url: callbacks are always signed",
                    ))
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        format!("apps[{i}].callback_url"),
                        "is required when callback_key is set",
                    ))
                }
            };
            if a.max_tasks == Some(0) {
                return Err(invalid(
                    format!("apps[{i}].max_tasks"),
                    "must be at least 1 (leave it out for limits.max_tasks alone)",
                ));
            }
            apps.push(AppConfig {
                sdk_app_id: a.sdk_app_id,
                user_sig_key: a.user_sig_key,
                callback,
                max_tasks: a.max_tasks,
            });
        }
        for (i, c) in credentials.iter().enumerate() {
            if let Some(unknown) = c
                .apps
                .iter()
                .flatten()
                .find(|id| !apps.iter().any(|a| a.sdk_app_id == **id))
            {
                return Err(invalid(
                    format!("credentials[{i}].apps"),
                    format!("{unknown} is not a configured [[apps]] sdk_app_id"),
                ));
            }
        }

        if credentials.is_empty() && !listen.ip().is_loopback() {
            return Err(invalid(
                "credentials",
                format!(
                    "no [[credentials]] configured (open dev mode) but server.listen is {listen}: \
                     dev mode is only allowed on a loopback address; add [[credentials]] or listen on 127.0.0.1"
                ),
            ));
        }

        let udp_text = raw
            .ingest
            .udp_listen
            .unwrap_or_else(|| SocketAddr::new(listen.ip(), DEFAULT_UDP_PORT).to_string());
        let udp_listen: SocketAddr = udp_text.parse().map_err(|_| {
            invalid(
                "ingest.udp_listen",
                format!("`{udp_text}` is not an IP:port address (e.g. 0.0.0.0:8443)"),
            )
        })?;
        let mut advertised_addresses = Vec::new();
        for (i, a) in raw
            .ingest
            .advertised_addresses
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let ip: std::net::IpAddr = a.parse().map_err(|_| {
                invalid(
                    format!("ingest.advertised_addresses[{i}]"),
                    format!("`{a}` is not an IP address"),
                )
            })?;
            if ip.is_unspecified() {
                return Err(invalid(
                    format!("ingest.advertised_addresses[{i}]"),
                    "an unspecified address cannot be advertised to publishers",
                ));
            }
            advertised_addresses.push(ip);
        }
        let defaults = OfferLimits::default();
        let offer_limits = OfferLimits {
            per_address: raw
                .ingest
                .offers_per_minute_per_address
                .unwrap_or(defaults.per_address),
            per_app: raw
                .ingest
                .offers_per_minute_per_app
                .unwrap_or(defaults.per_app),
            per_room: raw
                .ingest
                .offers_per_minute_per_room
                .unwrap_or(defaults.per_room),
            max_pending: raw
                .ingest
                .max_pending_sessions
                .unwrap_or(defaults.max_pending),
        };
        for (key, v) in [
            ("offers_per_minute_per_address", offer_limits.per_address),
            ("offers_per_minute_per_app", offer_limits.per_app),
            ("offers_per_minute_per_room", offer_limits.per_room),
        ] {
            if !(1..=1_000_000).contains(&v) {
                return Err(invalid(
                    format!("ingest.{key}"),
                    "must be between 1 and 1000000",
                ));
            }
        }
        if !(1..=100_000).contains(&offer_limits.max_pending) {
            return Err(invalid(
                "ingest.max_pending_sessions",
                "must be between 1 and 100000",
            ));
        }
        if udp_listen.ip().is_unspecified() && advertised_addresses.is_empty() {
            return Err(invalid(
                "ingest.advertised_addresses",
                format!(
                    "ingest.udp_listen is {udp_listen}: list the address(es) publishers reach this box at"
                ),
            ));
        }

        let segment_seconds = raw.recording.segment_seconds.unwrap_or(10.0);
        if !(1.0..=60.0).contains(&segment_seconds) {
            return Err(invalid(
                "recording.segment_seconds",
                "must be between 1 and 60 seconds",
            ));
        }
        let grace_seconds = raw.recording.keyframe_grace_seconds.unwrap_or(2.0);
        if !(0.0..=60.0).contains(&grace_seconds) {
            return Err(invalid(
                "recording.keyframe_grace_seconds",
                "must be between 0 and 60 seconds",
            ));
        }
        let max_keyframe_wait_seconds = raw.recording.max_keyframe_wait_seconds.unwrap_or(20);
        if !(1..=600).contains(&max_keyframe_wait_seconds) {
            return Err(invalid(
                "recording.max_keyframe_wait_seconds",
                "must be between 1 and 600 seconds",
            ));
        }
        let mix_latency_ms = raw.recording.mix_latency_ms.unwrap_or(3000);
        if !(100..=10_000).contains(&mix_latency_ms) {
            return Err(invalid(
                "recording.mix_latency_ms",
                "must be between 100 and 10000 milliseconds",
            ));
        }
        let compositor = match raw.recording.compositor.as_deref().unwrap_or("auto") {
            "auto" => CompositorPreference::Auto,
            "cpu" => CompositorPreference::Cpu,
            "gpu" => CompositorPreference::Gpu,
            other => {
                return Err(invalid(
                    "recording.compositor",
                    format!("{other:?} is not one of \"auto\", \"cpu\", \"gpu\""),
                ))
            }
        };
        let mut storage = storage_config(raw.storage)?;
        let cluster = cluster_config(raw.cluster, &public_url)?;
        storage.spool_dir = cluster.shared_spool(&cluster.node_id);
        let secrets = SecretsConfig {
            key_file: raw.secrets.key_file,
            previous_key_files: raw.secrets.previous_key_files.unwrap_or_default(),
        };
        if secrets.key_file.is_none() && !secrets.previous_key_files.is_empty() {
            return Err(invalid(
                "secrets.previous_key_files",
                "needs secrets.key_file (the key new values are sealed with)",
            ));
        }
        let mut fetch = FetchConfig::default();
        for (i, net) in raw.fetch.allow.unwrap_or_default().iter().enumerate() {
            // A bare address is a one-address network.
            let parsed = net
                .parse::<ipnet::IpNet>()
                .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
            match parsed {
                Ok(n) => fetch.allow.push(n),
                Err(_) => {
                    return Err(invalid(
                        format!("fetch.allow[{i}]"),
                        format!("`{net}` is not a network (e.g. \"10.0.0.0/8\") or an address"),
                    ))
                }
            }
        }
        let recording = RecordingConfig {
            segment: Duration::from_secs_f64(segment_seconds),
            keyframe_grace: Duration::from_secs_f64(grace_seconds),
            max_keyframe_wait: Duration::from_secs(max_keyframe_wait_seconds),
            mix_latency: Duration::from_millis(mix_latency_ms),
            compositor,
            // A fleet's shared folder holds the journal, so that the box
            // that takes a room over recovers its open segments.
            journal_dir: match (&raw.recording.journal_dir, &cluster.shared_dir) {
                (Some(dir), _) => dir.clone(),
                (None, Some(shared)) => shared.join("journal"),
                (None, None) => raw
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
                    .join("journal"),
            },
        };
        Ok(Config {
            recording,
            storage,
            fetch,
            data_dir: raw
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            server: ServerConfig {
                listen,
                public_url,
                max_body_bytes,
                shutdown_grace,
                signed_services,
                admin_token,
                connections,
                tls,
                metrics_listen,
            },
            limits: Limits {
                max_tasks,
                api_rate_per_second,
                packing_jobs,
                capacity_fraction,
                admit_by_cost: raw.limits.admit_by_cost.unwrap_or(true),
                capacity_profile,
            },
            callbacks: CallbackConfig {
                retry_for,
                timeout: Duration::from_secs(timeout_seconds),
                max_in_flight,
            },
            log: LogConfig { level, format },
            ingest: IngestConfig {
                udp_listen,
                advertised_addresses,
                offer_limits,
            },
            credentials,
            apps,
            secrets,
            cluster,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match Config::parse(text) {
            Ok(_) => panic!("config was accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn embedded_defaults_are_dev_mode_on_loopback() {
        let c = Config::embedded_defaults();
        assert!(c.dev_mode());
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./kiroku-data"));
        assert_eq!(c.limits.max_tasks, 100);
        assert_eq!(c.limits.api_rate_per_second, 20);
        assert_eq!(c.server.public_url, "http://127.0.0.1:8080");
    }

    #[test]
    fn example_config_in_packaging_is_valid_once_its_placeholders_are_replaced() {
        let text = include_str!("../../../packaging/kiroku.toml");
        let e = Config::parse(text).expect_err("the example's change-me keys are refused");
        assert!(e.to_string().contains("placeholder"), "{e}");
        let mut fixed = text.to_owned();
        for (i, p) in ["\"change-me-three\"", "\"change-me-too\"", "\"change-me\""]
            .iter()
            .enumerate()
        {
            fixed = fixed.replace(p, &format!("\"0123456789abcdef-{i}\""));
        }
        let c = Config::parse(&fixed).expect("packaging/kiroku.toml parses");
        assert!(!c.dev_mode());
        assert_eq!(c.apps.len(), 1);
        assert!(c.server.admin_token.is_some());
    }

    #[test]
    fn credentials_bind_to_configured_apps_and_apps_take_quotas() {
        let base = "[[apps]]\nsdk_app_id = 7\nmax_tasks = 2\n[[apps]]\nsdk_app_id = 8\n\
                    [[credentials]]\nsecret_id = \"a\"\nsecret_key = \"0123456789abcdef\"\n";
        let c = Config::parse(&format!("{base}apps = [7]")).expect("bound to app 7");
        assert!(c.credentials[0].may_act_for(7));
        assert!(!c.credentials[0].may_act_for(8));
        assert_eq!(c.app(7).and_then(|a| a.max_tasks), Some(2));
        assert_eq!(c.app(8).and_then(|a| a.max_tasks), None);
        let unbound = Config::parse(base).expect("every app");
        assert!(unbound.credentials[0].may_act_for(8));
        assert!(err(&format!("{base}apps = [9]")).contains("9 is not a configured"));
        assert!(err(&format!("{base}apps = []")).contains("credentials[0].apps"));
        assert!(err("[[apps]]\nsdk_app_id = 7\nmax_tasks = 0").contains("apps[0].max_tasks"));
    }

    #[test]
    fn plain_http_callbacks_off_the_box_need_an_opt_in() {
        let app = |url: &str| {
            format!("[[apps]]\nsdk_app_id = 7\ncallback_url = \"{url}\"\ncallback_key = \"0123456789abcdef\"\n")
        };
        for local in [
            "http://127.0.0.1:9000/cb",
            "http://localhost/cb",
            "http://[::1]:80/x",
        ] {
            Config::parse(&app(local)).unwrap_or_else(|e| panic!("{local}: {e}"));
        }
        Config::parse(&app("https://cb.example/x")).expect("https");
        let e = err(&app("http://cb.example/x"));
        assert!(
            e.contains("apps[0].callback_url") && e.contains("allow_http"),
            "{e}"
        );
        let e = err(&app("http://127.0.0.1@cb.example/x"));
        assert!(
            e.contains("allow_http"),
            "userinfo does not make a host loopback: {e}"
        );
        Config::parse(&format!(
            "{}[callbacks]\nallow_http = true\n",
            app("http://cb.example/x")
        ))
        .expect("opted in");
    }

    #[test]
    fn short_or_placeholder_secrets_are_refused_by_name() {
        let base = "[[credentials]]\nsecret_id = \"a\"\nsecret_key = ";
        assert!(err(&format!("{base}\"0123456789abcde\"")).contains("credentials[0].secret_key"));
        assert!(err(&format!("{base}\"CHANGE-ME\"")).contains("placeholder"));
        assert!(err("[server]\nadmin_token = \"short\"").contains("server.admin_token"));
        let ok = Config::parse("[server]\nadmin_token = \"0123456789abcdef\"").expect("16 bytes");
        let token = ok.server.admin_token.expect("set");
        assert!(token.matches("0123456789abcdef"));
        assert!(!token.matches("0123456789abcdeF"));
        assert!(!token.matches("0123456789abcdef0"));
        assert_eq!(format!("{token:?}"), "<redacted>");
    }

    #[test]
    fn tls_needs_both_files_and_an_https_public_url() {
        let both =
            Config::parse("[server]\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"").expect("valid");
        assert_eq!(
            both.server.tls,
            Some(TlsFiles {
                cert: "/c.pem".into(),
                key: "/k.pem".into()
            })
        );
        assert_eq!(both.server.public_url, "https://127.0.0.1:8080");
        assert!(err("[server]\ntls_cert = \"/c.pem\"").contains("tls_key"));
        assert!(err("[server]\ntls_key = \"/k.pem\"").contains("tls_cert"));
        let e =
            err("[server]\ntls_cert = \"/c\"\ntls_key = \"/k\"\npublic_url = \"http://box:8080\"");
        assert!(e.contains("https://"), "{e}");
        assert!(Config::parse("[server]\npublic_url = \"http://box:8080\"").is_ok());
    }

    #[test]
    fn metrics_listen_is_an_address_of_its_own() {
        let c = Config::parse("[server]\nmetrics_listen = \"127.0.0.1:9464\"").expect("valid");
        assert_eq!(
            c.server.metrics_listen.map(|a| a.to_string()),
            Some("127.0.0.1:9464".to_owned())
        );
        assert!(err("[server]\nmetrics_listen = \"localhost:9\"").contains("server.metrics_listen"));
        assert!(err("[server]\nmetrics_listen = \"127.0.0.1:8080\"").contains("must differ"));
        assert_eq!(
            Config::parse("").expect("empty").server.metrics_listen,
            None
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        assert!(err("colour = 1").contains("colour"));
        assert!(err("[server]\nlistn = \"127.0.0.1:1\"").contains("listn"));
        assert!(err("[[apps]]\nsdk_app_id = 1\nsdkappid = 2").contains("sdkappid"));
    }

    #[test]
    fn dev_mode_needs_loopback() {
        let e = err("[server]\nlisten = \"0.0.0.0:8080\"");
        assert!(e.contains("loopback"), "{e}");
        let ok = Config::parse(
            "[server]\nlisten = \"0.0.0.0:8080\"\n[ingest]\nadvertised_addresses = [\"192.0.2.7\"]\n[[credentials]]\nsecret_id = \"a\"\nsecret_key = \"0123456789abcdef\"",
        )
        .expect("valid");
        assert!(!ok.dev_mode());
        assert!(Config::parse("[server]\nlisten = \"[::1]:8080\"").is_ok());
    }

    #[test]
    fn cross_field_rules() {
        assert!(
            err("[[apps]]\nsdk_app_id = 1\ncallback_url = \"http://x\"").contains("callback_key")
        );
        assert!(err("[[apps]]\nsdk_app_id = 1\n[[apps]]\nsdk_app_id = 1").contains("twice"));
        assert!(err("[limits]\nmax_tasks = 0").contains("limits.max_tasks"));
        assert!(err("[server]\nlisten = \"localhost\"").contains("server.listen"));
        assert!(err("[log]\nformat = \"xml\"").contains("log.format"));
        assert!(err("[ingest]\nudp_listen = \"0.0.0.0:9\"").contains("ingest.advertised_addresses"));
        assert!(err("[ingest]\nadvertised_addresses = [\"x\"]")
            .contains("ingest.advertised_addresses[0]"));
        let c = Config::parse(
            "[ingest]\nudp_listen = \"0.0.0.0:9\"\nadvertised_addresses = [\"192.0.2.1\"]",
        )
        .expect("valid");
        assert_eq!(c.ingest.advertised_addresses.len(), 1);
        assert_eq!(
            Config::embedded_defaults().ingest.udp_listen.to_string(),
            "127.0.0.1:8443"
        );
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let cfg: S3Config =
            toml::from_str("aws_endpoint = \"http://minio:9000\"\npath_style = true\n")
                .expect("toml");
        assert_eq!(cfg.aws_endpoint.as_deref(), Some("http://minio:9000"));
        assert!(cfg.path_style);
        assert_eq!(cfg.part_size_mib, S3Config::default().part_size_mib);
        assert!(toml::from_str::<S3Config>("bogus = 1").is_err());
    }

    #[test]
    fn s3_tuning_out_of_range_is_named() {
        let raw: RawConfig = toml::from_str("[storage.s3]\npart_size_mib = 4\n").expect("toml");
        let err = Config::from_raw(raw).expect_err("refused");
        assert!(
            err.to_string().contains("storage.s3.part_size_mib"),
            "{err}"
        );
    }
}
