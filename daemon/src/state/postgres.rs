//! The PostgreSQL engine (`[cluster] postgres_url`): the state a fleet of
//! boxes shares. Tables: `tasks` (sealed values under task ids),
//! `task_quarantine`, `outbox` (one row a callback, columns rather than
//! JSON so that an operator can read them with psql), and `kiroku_schema`
//! (the migrations applied).
//!
//! - **Migrations** ship in the binary (`migrations/*.sql`) and are applied
//!   at start in one transaction under an advisory lock, so boxes starting
//!   together apply each once. A database whose schema is newer than this
//!   binary is refused, naming both versions.
//! - **Connections.** One connection, opened on first use and again after
//!   it breaks (PostgreSQL restarted, a network cut): a call while the
//!   database is away fails within the connect timeout (3 s unless the URL
//!   sets `connect_timeout`) and the caller retries, as it does for a full
//!   disk; no call waits for ever (`statement_timeout` 10 s unless the URL
//!   sets options). Calls are serialised on that connection: each is one
//!   short transaction.
//! - **Ownership.** Each task row names the box that runs it (`node_id`):
//!   a box loads and resumes only its own tasks, so boxes can share one
//!   database. (Taking over a dead box's tasks is the fleet's, later.)
//! - **Secrets.** The URL's password is never logged: [`Engine::describe`]
//!   gives `postgres://user@host:port/db`.
//!
//! - **TLS.** With `sslmode=require` in the URL the connection is TLS
//!   (rustls) and the server's certificate is verified: against
//!   `cluster.postgres_ca_file` (PEM) when set, else the system's roots,
//!   and its name against the URL's host. Without it the connection is
//!   plain, as libpq's `sslmode=disable` (a local socket, a trusted
//!   network); a server that insists on TLS (`hostssl`) then refuses it,
//!   and the error says so.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::types::Type;
use postgres::{Client, Config, NoTls};

use super::{Engine, NewCallback, OutboxEntry, PutTask, RecordOwner, RecordSet, StoreError};

/// Schema versions, in order, and their SQL.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_tasks_outbox.sql")),
    (2, include_str!("migrations/0002_nodes_rooms.sql")),
    (3, include_str!("migrations/0003_task_owner.sql")),
    (4, include_str!("migrations/0004_task_room.sql")),
    (5, include_str!("migrations/0005_placement_drain.sql")),
    (6, include_str!("migrations/0006_outbox_owner.sql")),
    (7, include_str!("migrations/0007_node_records.sql")),
];
/// `pg_advisory_xact_lock` key of the migration step ("kiroku" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_726f_6b75;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const STATEMENT_TIMEOUT_MS: u32 = 10_000;

pub(crate) fn pg_err(e: postgres::Error) -> StoreError {
    // The client's Display says only "db error": say what the server said.
    let what = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => match std::error::Error::source(&e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    };
    StoreError::Postgres(what)
}

fn out_of_range(what: &str) -> StoreError {
    StoreError::Postgres(format!("{what} out of range"))
}

/// One connection to PostgreSQL, opened on first use and again after it
/// breaks; each call runs on a thread of its own (see [`Self::run`]).
pub struct Connection {
    config: Config,
    shown: String,
    transport: Transport,
    client: Mutex<Option<Client>>,
}

/// How the connection travels: TLS when the URL asks for it.
enum Transport {
    Plain,
    Tls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// The TLS client for `sslmode=require`: the server's certificate chains to
/// `ca_file` (PEM, every certificate in it trusted) or, without one, to
/// the system's roots.
fn tls_connector(ca_file: Option<&Path>) -> Result<Transport, StoreError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let tls_err = |what: String| StoreError::Postgres(format!("TLS to PostgreSQL: {what}"));
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                tls_err(format!("cluster.postgres_ca_file {}: {e}", path.display()))
            })?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    tls_err(format!("cluster.postgres_ca_file {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    tls_err(format!("cluster.postgres_ca_file {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(tls_err(format!(
                    "cluster.postgres_ca_file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(tls_err(
                    "no system root certificates: set cluster.postgres_ca_file".to_owned(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Transport::Tls(
        tokio_postgres_rustls::MakeRustlsConnect::new(config),
    ))
}

impl Connection {
    /// From `postgres_url`, with kiroku's bounds (connect timeout,
    /// statement timeout, keepalives) where the URL sets none, and TLS when
    /// it says `sslmode=require` (verified against `ca_file`, else the
    /// system's roots). Nothing is connected yet.
    pub fn new(url: &str, application: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let mut config: Config = url
            .parse()
            .map_err(|e: postgres::Error| StoreError::Postgres(format!("postgres_url: {e}")))?;
        let transport = match config.get_ssl_mode() {
            postgres::config::SslMode::Require => tls_connector(ca_file)?,
            // `prefer` (the default) and `disable`: plain, as before. A
            // server whose certificate cannot be verified must not be
            // trusted halfway.
            _ => {
                config.ssl_mode(postgres::config::SslMode::Disable);
                Transport::Plain
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_options().is_none() {
            config.options(&format!("-c statement_timeout={STATEMENT_TIMEOUT_MS}"));
        }
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(10));
        config.application_name(application);
        Ok(Self {
            shown: shown_url(&config),
            config,
            transport,
            client: Mutex::new(None),
        })
    }

    /// `postgres://user@host:port/db`, for logs.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// Runs `op` on the connection on a thread of its own: the blocking
    /// client drives a runtime of its own and must not run (or be dropped)
    /// on a thread that drives tokio, which callers may be on.
    pub fn run<T: Send>(
        &self,
        op: impl Fn(&mut Client) -> Result<T, StoreError> + Send + Sync,
    ) -> Result<T, StoreError> {
        std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("state-postgres".into())
                .spawn_scoped(s, || self.on_connection(op))
                .map_err(|e| StoreError::Postgres(format!("starting a thread: {e}")))?
                .join()
                .unwrap_or_else(|_| Err(StoreError::Postgres("a PostgreSQL call panicked".into())))
        })
    }

    /// Runs `op` on the connection, opening it first if there is none or it
    /// broke. A connection found broken by `op` (PostgreSQL restarted since
    /// the last call: nothing of `op` committed) is replaced and `op` runs
    /// once more on the new one.
    fn on_connection<T>(
        &self,
        op: impl Fn(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let had_connection = !self.broke();
        match self.once(&op) {
            Err(e) if had_connection && self.broke() => {
                tracing::info!(database = %self.shown, error = %e, "the connection to PostgreSQL was lost; trying again on a new one");
                self.once(&op)
            }
            r => r,
        }
    }

    /// Whether the last call found the connection broken (and dropped it).
    fn broke(&self) -> bool {
        self.client
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    fn once<T>(&self, op: &impl Fn(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut guard = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = None;
            let connected = match &self.transport {
                Transport::Plain => self.config.connect(NoTls),
                Transport::Tls(tls) => self.config.connect(tls.clone()),
            };
            let client = connected.map_err(|e| {
                StoreError::Postgres(format!(
                    "connecting to {}: {}",
                    self.shown,
                    crate::errors::chain(&e)
                ))
            })?;
            *guard = Some(client);
        }
        let Some(client) = guard.as_mut() else {
            return Err(StoreError::Postgres(format!(
                "no connection to {}",
                self.shown
            )));
        };
        let result = op(client);
        if result.is_err() && client.is_closed() {
            tracing::warn!(database = %self.shown, "the connection to PostgreSQL broke; it is opened again at the next call");
            *guard = None;
        }
        result
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Closing the connection blocks on the client's own runtime: not
        // on the caller's thread, which may drive tokio.
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(client) = client {
            let _ = std::thread::spawn(move || drop(client)).join();
        }
    }
}

pub struct Postgres {
    conn: Connection,
    /// This box: the tasks it writes are its own, and it loads only those
    /// (and rows without an owner, from before schema 3).
    node_id: String,
}

impl Postgres {
    /// Connects, applies the migrations this binary has and the database
    /// lacks, and returns the engine.
    pub fn open(url: &str, node_id: &str, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let conn = Connection::new(url, "kiroku", ca_file)?;
        let applied = conn.run(migrate)?;
        if !applied.is_empty() {
            tracing::info!(database = %conn.shown(), versions = ?applied, "state store schema migrated");
        }
        Ok(Self {
            conn,
            node_id: node_id.to_owned(),
        })
    }

    fn node<'a>(&'a self, owner: RecordOwner<'a>) -> &'a str {
        match owner {
            RecordOwner::ThisBox => &self.node_id,
            RecordOwner::Node(node) => node,
        }
    }

    fn with_client<T: Send>(
        &self,
        op: impl Fn(&mut Client) -> Result<T, StoreError> + Send + Sync,
    ) -> Result<T, StoreError> {
        self.conn.run(op)
    }
}

/// `postgres://user@host:port/db`, without the password.
fn shown_url(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}@{host}:{port}/{}",
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

/// Applies the migrations the database lacks; returns their versions.
fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let mut txn = client.transaction().map_err(pg_err)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(pg_err)?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS kiroku_schema (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .map_err(pg_err)?;
    let current: i32 = txn
        .query_one("SELECT coalesce(max(version), 0) FROM kiroku_schema", &[])
        .map_err(pg_err)?
        .get(0);
    let newest = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > newest {
        return Err(StoreError::Postgres(format!(
            "the database's schema is version {current}, newer than this kiroku's ({newest}): run a kiroku at least as new as the one that migrated it"
        )));
    }
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        txn.batch_execute(sql).map_err(pg_err)?;
        txn.execute(
            "INSERT INTO kiroku_schema (version) VALUES ($1)",
            &[version],
        )
        .map_err(pg_err)?;
        applied.push(*version);
    }
    txn.commit().map_err(pg_err)?;
    Ok(applied)
}

/// The error for a task row another box owns.
fn fenced(txn: &mut postgres::Transaction<'_>, task_id: &str) -> StoreError {
    let owner = txn
        .query_opt("SELECT node_id FROM tasks WHERE task_id = $1", &[&task_id])
        .ok()
        .flatten()
        .and_then(|r| r.get::<_, Option<String>>(0))
        .unwrap_or_default();
    StoreError::Fenced {
        task_id: task_id.to_owned(),
        owner,
    }
}

pub(crate) fn entry_of(row: &postgres::Row) -> Result<OutboxEntry, StoreError> {
    let seq: i64 = row.get("seq");
    let sdk_app_id: i64 = row.get("sdk_app_id");
    let event_type: i32 = row.get("event_type");
    let created_ms: i64 = row.get("created_ms");
    let attempts: i32 = row.get("attempts");
    let next_attempt_ms: i64 = row.get("next_attempt_ms");
    Ok(OutboxEntry {
        seq: u64::try_from(seq).map_err(|_| out_of_range("outbox seq"))?,
        task_id: row.get("task_id"),
        sdk_app_id: u32::try_from(sdk_app_id).map_err(|_| out_of_range("sdk_app_id"))?,
        event_type: u32::try_from(event_type).map_err(|_| out_of_range("event_type"))?,
        url: row.get("url"),
        body: row.get("body"),
        sign: row.get("sign"),
        created_ms: u64::try_from(created_ms).map_err(|_| out_of_range("created_ms"))?,
        attempts: u32::try_from(attempts).map_err(|_| out_of_range("attempts"))?,
        next_attempt_ms: u64::try_from(next_attempt_ms)
            .map_err(|_| out_of_range("next_attempt_ms"))?,
    })
}

fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| out_of_range(what))
}

fn to_i32(v: u32, what: &str) -> Result<i32, StoreError> {
    i32::try_from(v).map_err(|_| out_of_range(what))
}

impl Engine for Postgres {
    fn describe(&self) -> String {
        self.conn.shown().to_owned()
    }

    fn task_values(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with_client(|c| {
            let rows = c
                .query(
                    "SELECT task_id, value FROM tasks WHERE node_id = $1 OR node_id IS NULL ORDER BY task_id",
                    &[&self.node_id],
                )
                .map_err(pg_err)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn set_aside(
        &self,
        unreadable: &[(String, Vec<u8>)],
        resealed: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.with_client(|c| {
            let mut txn = c.transaction().map_err(pg_err)?;
            for (id, kept) in unreadable {
                txn.execute(
                    "INSERT INTO task_quarantine (task_id, value) VALUES ($1, $2)
                     ON CONFLICT (task_id) DO UPDATE SET value = EXCLUDED.value, set_aside_at = now()",
                    &[id, kept],
                )
                .map_err(pg_err)?;
                txn.execute("DELETE FROM tasks WHERE task_id = $1", &[id])
                    .map_err(pg_err)?;
            }
            for (id, value) in resealed {
                txn.execute(
                    "UPDATE tasks SET value = $2, updated_at = now() WHERE task_id = $1",
                    &[id, value],
                )
                .map_err(pg_err)?;
            }
            txn.commit().map_err(pg_err)
        })
    }

    fn compact(&self) -> Result<(), StoreError> {
        // Old row versions (the plain or old-key values) go at the next
        // vacuum; ask for it now.
        self.with_client(|c| c.batch_execute("VACUUM tasks").map_err(pg_err))
    }

    fn quarantined(&self) -> Result<Vec<String>, StoreError> {
        self.with_client(|c| {
            let rows = c
                .query("SELECT task_id FROM task_quarantine ORDER BY task_id", &[])
                .map_err(pg_err)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn load_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with_client(|c| {
            let rows = c
                .query(
                    "SELECT * FROM outbox WHERE node_id = $1 OR node_id IS NULL ORDER BY seq",
                    &[&self.node_id],
                )
                .map_err(pg_err)?;
            rows.iter().map(entry_of).collect()
        })
    }

    fn apply(
        &self,
        put: Option<PutTask<'_>>,
        remove: Option<&str>,
        callbacks: Vec<NewCallback>,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with_client(|c| {
            let mut txn = c.transaction().map_err(pg_err)?;
            // Fencing: a row another box owns (it took the task over) is
            // neither written nor removed, and nothing of this change
            // commits: the callbacks are the new owner's to send.
            if let Some(put) = put {
                // Typed statements (here and below): one round trip each,
                // not three (prepare, execute, close).
                let written = txn
                    .execute_typed(
                        "INSERT INTO tasks (task_id, value, node_id, sdk_app_id, room_key)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (task_id) DO UPDATE
                           SET value = EXCLUDED.value, node_id = EXCLUDED.node_id,
                               sdk_app_id = EXCLUDED.sdk_app_id, room_key = EXCLUDED.room_key,
                               updated_at = now()
                         WHERE tasks.node_id IS NULL OR tasks.node_id = EXCLUDED.node_id",
                        &[
                            (&put.task_id, Type::TEXT),
                            (&put.value, Type::BYTEA),
                            (&self.node_id, Type::TEXT),
                            (&i64::from(put.sdk_app_id), Type::INT8),
                            (&put.room_key, Type::TEXT),
                        ],
                    )
                    .map_err(pg_err)?;
                if written == 0 {
                    return Err(fenced(&mut txn, put.task_id));
                }
            }
            if let Some(id) = remove {
                txn.execute(
                    "DELETE FROM tasks WHERE task_id = $1 AND (node_id IS NULL OR node_id = $2)",
                    &[&id, &self.node_id],
                )
                .map_err(pg_err)?;
                let owner: Option<String> = txn
                    .query_opt("SELECT node_id FROM tasks WHERE task_id = $1", &[&id])
                    .map_err(pg_err)?
                    .and_then(|r| r.get(0));
                if owner.is_some() {
                    return Err(fenced(&mut txn, id));
                }
            }
            let mut queued = Vec::with_capacity(callbacks.len());
            for cb in &callbacks {
                let row = txn
                    .query_typed_one(
                        "INSERT INTO outbox (task_id, sdk_app_id, event_type, url, body, sign, created_ms, next_attempt_ms, node_id)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) RETURNING seq",
                        &[
                            (&cb.task_id, Type::TEXT),
                            (&i64::from(cb.sdk_app_id), Type::INT8),
                            (&to_i32(cb.event_type, "event_type")?, Type::INT4),
                            (&cb.url, Type::TEXT),
                            (&cb.body, Type::TEXT),
                            (&cb.sign, Type::TEXT),
                            (&to_i64(cb.created_ms, "created_ms")?, Type::INT8),
                            (&self.node_id, Type::TEXT),
                        ],
                    )
                    .map_err(pg_err)?;
                let seq: i64 = row.get(0);
                let seq = u64::try_from(seq).map_err(|_| out_of_range("outbox seq"))?;
                queued.push(cb.clone().queued(seq));
            }
            txn.commit().map_err(pg_err)?;
            Ok(queued)
        })
    }

    fn outbox_retry(
        &self,
        seq: u64,
        attempts: u32,
        next_attempt_ms: u64,
    ) -> Result<(), StoreError> {
        let (seq, attempts, next) = (
            to_i64(seq, "outbox seq")?,
            to_i32(attempts, "attempts")?,
            to_i64(next_attempt_ms, "next_attempt_ms")?,
        );
        self.with_client(|c| {
            c.execute(
                "UPDATE outbox SET attempts = $2, next_attempt_ms = $3 WHERE seq = $1",
                &[&seq, &attempts, &next],
            )
            .map(|_| ())
            .map_err(pg_err)
        })
    }

    fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        let seq = to_i64(seq, "outbox seq")?;
        self.with_client(|c| {
            c.execute("DELETE FROM outbox WHERE seq = $1", &[&seq])
                .map(|_| ())
                .map_err(pg_err)
        })
    }

    fn records(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let node = self.node(owner);
        self.with_client(|c| {
            let rows = c
                .query_typed(
                    "SELECT key, value FROM node_records WHERE record_set = $1 AND node_id = $2 ORDER BY key",
                    &[(&set.name(), Type::TEXT), (&node, Type::TEXT)],
                )
                .map_err(pg_err)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn put_record(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let node = self.node(owner);
        self.with_client(|c| {
            c.execute_typed(
                "INSERT INTO node_records (record_set, node_id, key, value) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (record_set, node_id, key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
                &[
                    (&set.name(), Type::TEXT),
                    (&node, Type::TEXT),
                    (&key, Type::TEXT),
                    (&value, Type::BYTEA),
                ],
            )
            .map(|_| ())
            .map_err(pg_err)
        })
    }

    fn remove_record(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
        key: &str,
    ) -> Result<(), StoreError> {
        let node = self.node(owner);
        self.with_client(|c| {
            c.execute_typed(
                "DELETE FROM node_records WHERE record_set = $1 AND node_id = $2 AND key = $3",
                &[
                    (&set.name(), Type::TEXT),
                    (&node, Type::TEXT),
                    (&key, Type::TEXT),
                ],
            )
            .map(|_| ())
            .map_err(pg_err)
        })
    }

    fn find_record(
        &self,
        set: RecordSet,
        key: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.with_client(|c| {
            let row = c
                .query_typed(
                    "SELECT node_id, value FROM node_records WHERE record_set = $1 AND key = $2 ORDER BY updated_at DESC LIMIT 1",
                    &[(&set.name(), Type::TEXT), (&key, Type::TEXT)],
                )
                .map_err(pg_err)?;
            Ok(row.first().map(|r| (r.get(0), r.get(1))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shown_url_has_no_password() {
        let config: Config = "postgres://kiroku:s3cret@db.example:6432/rec"
            .parse()
            .expect("url");
        let shown = shown_url(&config);
        assert_eq!(shown, "postgres://kiroku@db.example:6432/rec");
        assert!(!shown.contains("s3cret"));
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i32).collect::<Vec<_>>());
    }
}
