//! `[cluster]`: fleet mode. Without `postgres_url` a box is on its own
//! (the embedded state store); with it, its state lives in the PostgreSQL
//! database the fleet shares (docs/fleet.md).

use std::path::{Path, PathBuf};
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
    /// A folder every box of the fleet mounts at the same path (NFS,
    /// CephFS, …): the boxes keep their spools (`spool/<node_id>/`) and
    /// the journal of open segments (`journal/`) there, so that the box
    /// that takes a dead box's room over uploads what the dead box had
    /// not and recovers its open segments (docs/fleet.md).
    pub shared_dir: Option<PathBuf>,
    /// The CA certificates (PEM) PostgreSQL's certificate must chain to
    /// when `postgres_url` says `sslmode=require` (none: the system's).
    pub postgres_ca_file: Option<PathBuf>,
}

/// `cluster.lease_seconds`: the default and the range accepted.
const DEFAULT_LEASE_SECONDS: u64 = 8;
const LEASE_SECONDS: std::ops::RangeInclusive<u64> = 3..=120;

impl ClusterConfig {
    /// Fleet mode: the state store is PostgreSQL.
    pub fn fleet(&self) -> bool {
        self.postgres_url.is_some()
    }

    /// The spool of box `node_id` in the shared folder.
    pub fn shared_spool(&self, node_id: &str) -> Option<PathBuf> {
        self.shared_dir
            .as_ref()
            .map(|d| d.join("spool").join(node_id))
    }

    /// The spools of the fleet's other boxes in the shared folder.
    pub fn other_shared_spools(&self) -> Vec<PathBuf> {
        let Some(root) = self.shared_dir.as_ref().map(|d| d.join("spool")) else {
            return Vec::new();
        };
        let Ok(entries) = std::fs::read_dir(&root) else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_str() != Some(self.node_id.as_str()))
            .map(|e| e.path())
            .filter(|p: &PathBuf| p.is_dir())
            .collect();
        dirs.sort();
        dirs
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
    let shared_dir = match raw.shared_dir {
        None => None,
        Some(_) if postgres_url.is_none() => {
            return Err(invalid(
                "cluster.shared_dir",
                "is for a fleet: set cluster.postgres_url too",
            ))
        }
        Some(dir) if !Path::is_absolute(&dir) => {
            return Err(invalid(
                "cluster.shared_dir",
                format!(
                    "{} must be an absolute path (the same on every box)",
                    dir.display()
                ),
            ))
        }
        Some(dir) => Some(dir),
    };
    if raw.postgres_ca_file.is_some() && postgres_url.is_none() {
        return Err(invalid(
            "cluster.postgres_ca_file",
            "is for a fleet: set cluster.postgres_url too",
        ));
    }
    Ok(ClusterConfig {
        postgres_url,
        node_id,
        advertise_url,
        lease: Duration::from_secs(lease_seconds),
        shared_dir,
        postgres_ca_file: raw.postgres_ca_file,
    })
}
