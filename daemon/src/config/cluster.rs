//! `[cluster]`: fleet mode. Without `postgres_url` a box is on its own
//! (the embedded state store); with it, its state lives in the PostgreSQL
//! database the fleet shares (docs/fleet.md).

use std::time::Duration;

use super::raw::RawCluster;
use super::{invalid, ConfigError, Secret};

/// `[cluster]`, validated.
#[derive(Debug, Clone, Default)]
pub struct ClusterConfig {
    /// `postgres://user:password@host:port/db`; secret (it may hold a
    /// password): never logged.
    pub postgres_url: Option<Secret>,
    /// This box's name in the fleet (default: the host name).
    pub node_id: String,
    /// Where publishers and the other boxes reach this box (default: the
    /// server's `public_url`).
    pub advertise_url: String,
    /// A box whose heartbeat is older than this is dead to the fleet, and
    /// its rooms may be taken over.
    pub lease: Duration,
}

/// `cluster.lease_seconds`: the default and the range accepted.
const DEFAULT_LEASE_SECONDS: u64 = 8;
const LEASE_SECONDS: std::ops::RangeInclusive<u64> = 3..=120;

impl ClusterConfig {
    /// Fleet mode: the state store is PostgreSQL.
    pub fn fleet(&self) -> bool {
        self.postgres_url.is_some()
    }
}

/// A `node_id`: 1..=64 of `[A-Za-z0-9._-]` (it names the box in tables,
/// logs and metrics).
fn valid_node_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kiroku".to_owned())
}

pub(super) fn cluster_config(
    raw: RawCluster,
    public_url: &str,
) -> Result<ClusterConfig, ConfigError> {
    let postgres_url = match raw.postgres_url {
        None => None,
        Some(url) => {
            let ok = url.starts_with("postgres://") || url.starts_with("postgresql://");
            if !ok || url.parse::<postgres::Config>().is_err() {
                // The value is not echoed: it may hold a password.
                return Err(invalid(
                    "cluster.postgres_url",
                    "is not a PostgreSQL URL (postgres://user:password@host:port/database)",
                ));
            }
            Some(Secret(url))
        }
    };
    let node_id = raw.node_id.unwrap_or_else(host_name);
    if !valid_node_id(&node_id) {
        return Err(invalid(
            "cluster.node_id",
            format!("{node_id:?} must be 1-64 letters, digits, '.', '_' or '-'"),
        ));
    }
    let advertise_url = raw
        .advertise_url
        .unwrap_or_else(|| public_url.to_owned())
        .trim_end_matches('/')
        .to_owned();
    if !(advertise_url.starts_with("http://") || advertise_url.starts_with("https://")) {
        return Err(invalid(
            "cluster.advertise_url",
            format!("{advertise_url:?} must be an http:// or https:// URL"),
        ));
    }
    let lease_seconds = raw.lease_seconds.unwrap_or(DEFAULT_LEASE_SECONDS);
    if !LEASE_SECONDS.contains(&lease_seconds) {
        return Err(invalid(
            "cluster.lease_seconds",
            format!("{lease_seconds} is outside 3..=120"),
        ));
    }
    Ok(ClusterConfig {
        postgres_url,
        node_id,
        advertise_url,
        lease: Duration::from_secs(lease_seconds),
    })
}
