//! The configuration file's shapes, key for key (`deny_unknown_fields`:
//! a misspelt key is refused with its name). Nothing here is trusted:
//! [`super::Config::from_raw`] validates it.

use std::path::PathBuf;

use serde::Deserialize;

use super::S3Config;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) data_dir: Option<PathBuf>,
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) callbacks: RawCallbacks,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) ingest: RawIngest,
    #[serde(default)]
    pub(super) recording: RawRecording,
    #[serde(default)]
    pub(super) storage: RawStorage,
    #[serde(default)]
    pub(super) fetch: RawFetch,
    #[serde(default)]
    pub(super) credentials: Vec<RawCredential>,
    #[serde(default)]
    pub(super) apps: Vec<RawApp>,
    #[serde(default)]
    pub(super) secrets: RawSecrets,
    #[serde(default)]
    pub(super) cluster: RawCluster,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) postgres_url: Option<String>,
    pub(super) node_id: Option<String>,
    pub(super) advertise_url: Option<String>,
    pub(super) lease_seconds: Option<u64>,
    pub(super) shared_dir: Option<PathBuf>,
    pub(super) postgres_ca_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecrets {
    pub(super) key_file: Option<PathBuf>,
    pub(super) previous_key_files: Option<Vec<PathBuf>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) public_url: Option<String>,
    pub(super) max_body_bytes: Option<usize>,
    pub(super) shutdown_grace_seconds: Option<u64>,
    pub(super) signed_services: Option<Vec<String>>,
    pub(super) admin_token: Option<String>,
    pub(super) max_connections: Option<usize>,
    pub(super) max_connections_per_address: Option<usize>,
    pub(super) header_timeout_seconds: Option<u64>,
    pub(super) body_timeout_seconds: Option<u64>,
    pub(super) tls_cert: Option<PathBuf>,
    pub(super) tls_key: Option<PathBuf>,
    pub(super) metrics_listen: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFetch {
    pub(super) allow: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_tasks: Option<usize>,
    pub(super) api_rate_per_second: Option<u32>,
    pub(super) packing_jobs: Option<usize>,
    pub(super) capacity_fraction: Option<f64>,
    pub(super) admit_by_cost: Option<bool>,
    pub(super) capacity_profile: Option<std::path::PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCallbacks {
    pub(super) retry_for_seconds: Option<u64>,
    pub(super) timeout_seconds: Option<u64>,
    pub(super) max_in_flight: Option<usize>,
    pub(super) allow_http: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIngest {
    pub(super) udp_listen: Option<String>,
    pub(super) advertised_addresses: Option<Vec<String>>,
    pub(super) offers_per_minute_per_address: Option<u32>,
    pub(super) offers_per_minute_per_app: Option<u32>,
    pub(super) offers_per_minute_per_room: Option<u32>,
    pub(super) max_pending_sessions: Option<usize>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRecording {
    pub(super) segment_seconds: Option<f64>,
    pub(super) keyframe_grace_seconds: Option<f64>,
    pub(super) max_keyframe_wait_seconds: Option<u64>,
    pub(super) mix_latency_ms: Option<u64>,
    pub(super) compositor: Option<String>,
    pub(super) journal_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStorage {
    pub(super) spool_capacity_mb: Option<u64>,
    pub(super) upload_concurrency: Option<usize>,
    pub(super) retry_base_ms: Option<u64>,
    pub(super) retry_max_seconds: Option<u64>,
    pub(super) stranded_after_attempts: Option<u32>,
    pub(super) drain_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub(super) s3: S3Config,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    pub(super) secret_id: String,
    pub(super) secret_key: String,
    pub(super) apps: Option<Vec<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) sdk_app_id: u32,
    pub(super) user_sig_key: Option<String>,
    pub(super) callback_url: Option<String>,
    pub(super) callback_key: Option<String>,
    pub(super) max_tasks: Option<usize>,
}
