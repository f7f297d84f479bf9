//! `[storage]`: the spool, the uploads and the S3 endpoints, validated
//! once at load (the per-task bucket checks are `output::s3`'s).

use std::time::Duration;

use serde::Deserialize;

use super::raw::RawStorage;
use super::{invalid, ConfigError};

/// `[storage]`: the spool and the uploads to remote storage.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// The spool (`data_dir/spool`) never holds more than this; a task
    /// whose file does not fit fails (callback 308, then it stops).
    pub spool_capacity_bytes: u64,
    /// Where the spool is: `data_dir/spool` (`None`), or this box's folder
    /// in the fleet's `cluster.shared_dir`.
    pub spool_dir: Option<std::path::PathBuf>,
    /// Uploads in flight at once, over all tasks.
    pub upload_concurrency: usize,
    /// The first retry delay; doubled per failure up to `retry_max`.
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Failed attempts after which a file counts as stranded (metrics).
    pub stranded_after_attempts: u32,
    /// How long an ended task waits for its uploads before callback 305
    /// reports stranded files (Status 1); they are still uploaded later
    /// (then Status 2).
    pub drain_timeout: Duration,
    /// S3 endpoints per vendor and upload tuning.
    pub s3: S3Config,
}

/// The appliance configuration's S3 section: endpoint overrides per vendor
/// and upload tuning. Every field has a default, so an absent section means
/// "the public COS and AWS endpoints".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint for `Vendor` 0 instead of `output::s3::DEFAULT_COS_ENDPOINT`.
    /// `{region}` and `{bucket}` are replaced by the task's values.
    pub cos_endpoint: Option<String>,
    /// Endpoint for `Vendor` 1 instead of `output::s3::DEFAULT_AWS_ENDPOINT`.
    pub aws_endpoint: Option<String>,
    /// Permit `http://` endpoints (a lab MinIO, moto); off by default.
    pub allow_http: bool,
    /// Address buckets as `<endpoint>/<bucket>/<key>` instead of
    /// `<bucket>.<endpoint host>/<key>` (MinIO, Ceph RGW and moto want this).
    pub path_style: bool,
    /// Objects up to this size go up in one `PUT`; larger ones as multipart
    /// uploads. 5..=5120.
    pub multipart_threshold_mib: u64,
    /// Multipart part size (raised when a file would need more than 10 000
    /// parts). 5..=5120.
    pub part_size_mib: u64,
    /// Parts of one file in flight at once. 1..=64.
    pub part_concurrency: usize,
    pub connect_timeout_secs: u64,
    /// Limit for one request (one `PUT` or one part) to complete.
    pub request_timeout_secs: u64,
    /// Immediate retries of one request inside the client, for transport
    /// errors, 5xx and throttling; longer-term retrying is the caller's.
    pub max_retries: usize,
    /// Stop those immediate retries after this long.
    pub retry_timeout_secs: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            cos_endpoint: None,
            aws_endpoint: None,
            allow_http: false,
            path_style: false,
            multipart_threshold_mib: 16,
            part_size_mib: 8,
            part_concurrency: 4,
            connect_timeout_secs: 10,
            request_timeout_secs: 120,
            max_retries: 3,
            retry_timeout_secs: 60,
        }
    }
}

/// Checks `[storage.s3]` once, at load: the tuning ranges (S3's own part
/// limits: 5 MiB..5 GiB) and the endpoint overrides' schemes. The per-task
/// parts (region, bucket, the endpoint template filled in) are checked by
/// `output::s3::S3Target::from_params` when a task names its bucket.
pub(super) fn validate_s3(s3: &S3Config) -> Result<(), ConfigError> {
    for (key, v) in [
        (
            "storage.s3.multipart_threshold_mib",
            s3.multipart_threshold_mib,
        ),
        ("storage.s3.part_size_mib", s3.part_size_mib),
    ] {
        if !(5..=5120).contains(&v) {
            return Err(invalid(
                key,
                "must be within 5..=5120 (S3's part size limits)",
            ));
        }
    }
    if !(1..=64).contains(&s3.part_concurrency) {
        return Err(invalid(
            "storage.s3.part_concurrency",
            "must be within 1..=64",
        ));
    }
    for (key, v) in [
        ("storage.s3.connect_timeout_secs", s3.connect_timeout_secs),
        ("storage.s3.request_timeout_secs", s3.request_timeout_secs),
    ] {
        if v == 0 {
            return Err(invalid(key, "must be at least 1"));
        }
    }
    for (key, endpoint) in [
        ("storage.s3.cos_endpoint", &s3.cos_endpoint),
        ("storage.s3.aws_endpoint", &s3.aws_endpoint),
    ] {
        if let Some(e) = endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(invalid(
                    key,
                    format!("`{e}` must start with http:// or https://"),
                ));
            }
            if e.starts_with("http://") && !s3.allow_http {
                return Err(invalid(
                    key,
                    format!("`{e}` is plain HTTP: set storage.s3.allow_http = true to permit it"),
                ));
            }
        }
    }
    Ok(())
}

pub(super) fn storage_config(raw: RawStorage) -> Result<StorageConfig, ConfigError> {
    let capacity_mb = raw.spool_capacity_mb.unwrap_or(10 * 1024);
    if !(1..=64 * 1024 * 1024).contains(&capacity_mb) {
        return Err(invalid(
            "storage.spool_capacity_mb",
            "must be between 1 and 67108864 (64 TiB)",
        ));
    }
    let upload_concurrency = raw.upload_concurrency.unwrap_or(8);
    if !(1..=256).contains(&upload_concurrency) {
        return Err(invalid("storage.upload_concurrency", "must be 1..=256"));
    }
    let retry_base_ms = raw.retry_base_ms.unwrap_or(1000);
    if !(10..=600_000).contains(&retry_base_ms) {
        return Err(invalid(
            "storage.retry_base_ms",
            "must be between 10 and 600000",
        ));
    }
    let retry_max_seconds = raw.retry_max_seconds.unwrap_or(300);
    if !(1..=86_400).contains(&retry_max_seconds) || retry_max_seconds * 1000 < retry_base_ms {
        return Err(invalid(
            "storage.retry_max_seconds",
            "must be 1..=86400 and not below retry_base_ms",
        ));
    }
    let stranded_after_attempts = raw.stranded_after_attempts.unwrap_or(8);
    if stranded_after_attempts == 0 {
        return Err(invalid(
            "storage.stranded_after_attempts",
            "must be at least 1",
        ));
    }
    let drain_timeout_seconds = raw.drain_timeout_seconds.unwrap_or(60);
    if drain_timeout_seconds > 86_400 {
        return Err(invalid(
            "storage.drain_timeout_seconds",
            "must be at most 86400",
        ));
    }
    validate_s3(&raw.s3)?;
    Ok(StorageConfig {
        spool_capacity_bytes: capacity_mb * 1024 * 1024,
        spool_dir: None,
        upload_concurrency,
        retry_base: Duration::from_millis(retry_base_ms),
        retry_max: Duration::from_secs(retry_max_seconds),
        stranded_after_attempts,
        drain_timeout: Duration::from_secs(drain_timeout_seconds),
        s3: raw.s3,
    })
}
