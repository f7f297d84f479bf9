//! The transactional state store: the live tasks, the callback outbox and
//! the task records set aside as unreadable, behind one interface with two
//! engines.
//!
//! - **Embedded** ([`embedded`], redb, one file under `data_dir`): the
//!   single box's default, nothing to install.
//! - **PostgreSQL** ([`postgres`], `[cluster] postgres_url`): the store a
//!   fleet of boxes shares; schema migrations ship in the binary and are
//!   applied at start.
//!
//! A task's state change and the callbacks it causes are committed in one
//! transaction, so a crash can never record a stop without its 302 or send
//! a 302 for a task that still runs. Every commit is durable before the
//! caller answers.
//!
//! This front does what both engines share: task records are JSON, sealed
//! with `[secrets] key_file` when there is one ([`crate::sealing`]: they
//! carry customer S3 keys and the bot's UserSig); records sealed with a
//! previous key, or written plain before a key existed, are sealed anew
//! when the store is loaded; a record that cannot be read is set aside in
//! the quarantine and the daemon starts with the rest. The engines only
//! keep bytes under task ids and the outbox rows. All calls block (disk or
//! network); async callers go through `spawn_blocking`.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::domain::task::TaskRecord;
use crate::sealing::{SealError, Sealer};

pub mod embedded;
pub mod postgres;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("state store")]
    Db(#[from] redb::Error),
    #[error("state store (PostgreSQL): {0}")]
    Postgres(String),
    #[error("state store: corrupt record {key}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("state store: record {key}: {source}")]
    Sealed { key: String, source: SealError },
    #[error("state store: a failure injected by a test (KIROKU_TEST_FAULTS)")]
    Injected,
    #[error("state store file {path}")]
    File {
        path: String,
        source: std::io::Error,
    },
    /// Fleet mode: another box has taken the task over (its room's owner
    /// died, or looked dead); this box must write nothing more for it.
    #[error(
        "task {task_id} now runs on box {owner} of the fleet: this box writes nothing more for it"
    )]
    Fenced { task_id: String, owner: String },
    /// The embedded store keeps one box's records only.
    #[error("state store: records of box {node} are kept only in a fleet's PostgreSQL")]
    OtherBox { node: String },
    #[error("state store {path}: closed after an I/O error")]
    Closed { path: String },
    #[error("state store {path}: closed after an I/O error and not open again yet: {source}")]
    Reopen { path: String, source: redb::Error },
}

/// A callback waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    pub task_id: String,
    pub sdk_app_id: u32,
    pub event_type: u32,
    pub url: String,
    pub body: String,
    pub sign: String,
    pub created_ms: u64,
    pub attempts: u32,
    pub next_attempt_ms: u64,
}

/// A callback to queue (its seq is assigned by the store).
#[derive(Debug, Clone)]
pub struct NewCallback {
    pub task_id: String,
    pub sdk_app_id: u32,
    pub event_type: u32,
    pub url: String,
    pub body: String,
    pub sign: String,
    pub created_ms: u64,
}

impl NewCallback {
    /// The outbox entry this becomes under `seq`.
    fn queued(self, seq: u64) -> OutboxEntry {
        OutboxEntry {
            seq,
            task_id: self.task_id,
            sdk_app_id: self.sdk_app_id,
            event_type: self.event_type,
            url: self.url,
            body: self.body,
            sign: self.sign,
            created_ms: self.created_ms,
            attempts: 0,
            next_attempt_ms: self.created_ms,
        }
    }
}

/// A change to commit atomically.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub put_task: Option<&'a TaskRecord>,
    pub remove_task: Option<&'a str>,
    pub callbacks: Vec<NewCallback>,
}

/// A task value to store, with the room it records (the PostgreSQL engine
/// keeps it in columns of its own, for the fleet).
#[derive(Debug, Clone, Copy)]
pub struct PutTask<'a> {
    pub task_id: &'a str,
    pub value: &'a [u8],
    pub sdk_app_id: u32,
    /// [`crate::domain::params::RoomId::fleet_key`].
    pub room_key: &'a str,
}

/// What a box keeps beside its tasks, each a set of values under keys,
/// owned by the box that wrote them (a survivor of the fleet can read a
/// dead box's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordSet {
    /// Where a task's spooled files go and whom to tell
    /// (`output::uploader`; sealed: they carry S3 keys).
    UploadTargets,
    /// The built-in VOD store's files (`output::vod`).
    VodFiles,
}

impl RecordSet {
    pub fn name(self) -> &'static str {
        match self {
            RecordSet::UploadTargets => "upload_targets",
            RecordSet::VodFiles => "vod_files",
        }
    }
}

/// Whose records: this box's, or (fleet mode) another box's by node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOwner<'a> {
    ThisBox,
    Node(&'a str),
}

/// What an engine keeps: sealed task values under their ids, set-aside
/// values, the outbox and the record sets. Each call is one transaction.
pub trait Engine: Send + Sync {
    /// Where the state lives, for logs (never a password).
    fn describe(&self) -> String;
    /// Every task's stored value.
    fn task_values(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Moves `unreadable` (id, value to keep) to the quarantine and
    /// replaces the values of `resealed`, in one transaction.
    fn set_aside(
        &self,
        unreadable: &[(String, Vec<u8>)],
        resealed: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError>;
    /// Drops the space old values took, after a reseal (a copy of the store
    /// must not give an old secret away).
    fn compact(&self) -> Result<(), StoreError>;
    fn quarantined(&self) -> Result<Vec<String>, StoreError>;
    /// The outbox in seq order.
    fn load_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError>;
    /// Puts and/or removes a task value and queues callbacks, atomically;
    /// returns the queued callbacks with their seqs.
    fn apply(
        &self,
        put: Option<PutTask<'_>>,
        remove: Option<&str>,
        callbacks: Vec<NewCallback>,
    ) -> Result<Vec<OutboxEntry>, StoreError>;
    fn outbox_retry(&self, seq: u64, attempts: u32, next_attempt_ms: u64)
        -> Result<(), StoreError>;
    fn outbox_remove(&self, seq: u64) -> Result<(), StoreError>;
    /// Every record of `set` that `owner` keeps.
    fn records(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    fn put_record(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError>;
    fn remove_record(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
        key: &str,
    ) -> Result<(), StoreError>;
    /// The record of `set` under `key` whichever box keeps it, with that
    /// box's node id (the embedded engine: this box, `""`).
    fn find_record(
        &self,
        set: RecordSet,
        key: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError>;
}

pub struct StateStore {
    engine: Box<dyn Engine>,
    sealer: Arc<Sealer>,
}

fn task_context(task_id: &str) -> String {
    format!("task:{task_id}")
}

impl StateStore {
    /// The embedded store in `path` (created if missing).
    pub fn open(path: &Path, sealer: Arc<Sealer>) -> Result<Self, StoreError> {
        Self::with_engine(Box::new(embedded::Embedded::open(path)?), sealer)
    }

    /// The store on an engine: loads it once to seal what needs sealing
    /// and set aside what cannot be read, then compacts if it rewrote.
    pub fn with_engine(engine: Box<dyn Engine>, sealer: Arc<Sealer>) -> Result<Self, StoreError> {
        let store = Self { engine, sealer };
        let (_, rewrote) = store.scan()?;
        if rewrote {
            store.engine.compact()?;
        }
        Ok(store)
    }

    /// Where the state lives, for logs.
    pub fn describe(&self) -> String {
        self.engine.describe()
    }

    fn seal_task(&self, rec: &TaskRecord) -> Result<Vec<u8>, StoreError> {
        let json = serde_json::to_vec(rec).map_err(|source| StoreError::Corrupt {
            key: rec.task_id.clone(),
            source,
        })?;
        self.sealer
            .seal(&task_context(&rec.task_id), &json)
            .map_err(|source| StoreError::Sealed {
                key: rec.task_id.clone(),
                source,
            })
    }

    /// Every task; records not sealed with the current key are sealed
    /// with it now (key rotation, or a key configured since). A record that
    /// cannot be read (damaged, not a task) is moved to the quarantine,
    /// logged, and the rest load; one sealed with a key this daemon lacks
    /// stops the load instead (the operator must supply the key).
    pub fn load_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.scan().map(|(records, _)| records)
    }

    /// [`Self::load_tasks`], and whether records were rewritten.
    fn scan(&self) -> Result<(Vec<TaskRecord>, bool), StoreError> {
        let mut out = Vec::new();
        let mut stale = Vec::new();
        let mut unreadable: Vec<(String, Vec<u8>)> = Vec::new();
        for (key, value) in self.engine.task_values()? {
            let opened = match self.sealer.open(&task_context(&key), &value) {
                Ok(o) => o,
                Err(source @ (SealError::UnknownKey { .. } | SealError::NoKey { .. })) => {
                    return Err(StoreError::Sealed { key, source })
                }
                Err(e) => {
                    tracing::error!(task_id = %key, error = %e, "unreadable task record quarantined");
                    unreadable.push((key, value));
                    continue;
                }
            };
            match serde_json::from_slice::<TaskRecord>(&opened.plain) {
                Ok(rec) => {
                    if opened.stale {
                        stale.push(out.len());
                    }
                    out.push(rec);
                }
                Err(e) => {
                    tracing::error!(task_id = %key, error = %e, "unreadable task record quarantined");
                    unreadable.push((key, value));
                }
            }
        }
        if stale.is_empty() && unreadable.is_empty() {
            return Ok((out, false));
        }
        let mut kept = Vec::with_capacity(unreadable.len());
        for (key, raw) in unreadable {
            // Kept as read, but sealed: a damaged plain record may still
            // hold a secret.
            let value = if raw.starts_with(b"KRKS1") {
                raw
            } else {
                self.sealer
                    .seal(&format!("quarantine:{key}"), &raw)
                    .map_err(|source| StoreError::Sealed {
                        key: key.clone(),
                        source,
                    })?
            };
            kept.push((key, value));
        }
        let mut resealed = Vec::with_capacity(stale.len());
        for &i in &stale {
            let rec: &TaskRecord = &out[i];
            resealed.push((rec.task_id.clone(), self.seal_task(rec)?));
        }
        self.engine.set_aside(&kept, &resealed)?;
        if !stale.is_empty() {
            tracing::info!(
                records = stale.len(),
                "task records sealed with the current key"
            );
        }
        Ok((out, true))
    }

    /// Task records from values read elsewhere (a dead box's tasks taken
    /// over by this one): opened and parsed; one that cannot be read is
    /// logged and left out.
    pub fn open_records(&self, values: Vec<(String, Vec<u8>)>) -> Vec<TaskRecord> {
        let mut out = Vec::with_capacity(values.len());
        for (key, value) in values {
            let record = self
                .sealer
                .open(&task_context(&key), &value)
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    serde_json::from_slice::<TaskRecord>(&o.plain).map_err(|e| e.to_string())
                });
            match record {
                Ok(r) => out.push(r),
                Err(e) => {
                    tracing::error!(task_id = %key, error = %e, "a task taken over cannot be read; left out")
                }
            }
        }
        out
    }

    /// Every record of `set` that `owner` keeps (values as stored).
    pub fn records(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.engine.records(set, owner)
    }

    /// Stores a record, durably, replacing one under the same key.
    pub fn put_record(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        self.engine.put_record(set, owner, key, value)
    }

    /// Removes a record (none under `key` is not an error).
    pub fn remove_record(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
        key: &str,
    ) -> Result<(), StoreError> {
        self.engine.remove_record(set, owner, key)
    }

    /// The record of `set` under `key` on whichever box keeps it.
    pub fn find_record(
        &self,
        set: RecordSet,
        key: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        self.engine.find_record(set, key)
    }

    /// The ids of the quarantined task records.
    pub fn quarantined(&self) -> Result<Vec<String>, StoreError> {
        self.engine.quarantined()
    }

    /// The outbox in seq order.
    pub fn load_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        self.engine.load_outbox()
    }

    /// Commits a change; returns the queued callbacks with their seqs.
    pub fn apply(&self, change: Change<'_>) -> Result<Vec<OutboxEntry>, StoreError> {
        if crate::faults::commit_checkpoint() {
            return Err(StoreError::Injected);
        }
        let sealed = match change.put_task {
            Some(rec) => Some((rec, self.seal_task(rec)?, rec.spec.room.fleet_key())),
            None => None,
        };
        self.engine.apply(
            sealed.as_ref().map(|(rec, value, room_key)| PutTask {
                task_id: &rec.task_id,
                value,
                sdk_app_id: rec.spec.sdk_app_id,
                room_key,
            }),
            change.remove_task,
            change.callbacks,
        )
    }

    /// Records a failed attempt.
    pub fn outbox_retry(
        &self,
        seq: u64,
        attempts: u32,
        next_attempt_ms: u64,
    ) -> Result<(), StoreError> {
        self.engine.outbox_retry(seq, attempts, next_attempt_ms)
    }

    /// Removes a delivered or given-up callback.
    pub fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.engine.outbox_remove(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{model, validate};
    use crate::domain::params::RecordingSpec;
    use crate::domain::task::TaskState;
    use std::sync::Arc;

    fn spec() -> RecordingSpec {
        let raw: model::CreateCloudRecordingRequest = serde_json::from_value(serde_json::json!({
            "SdkAppId": 1, "RoomId": "5", "UserId": "bot", "UserSig": "bot-user-sig-0123456789",
            "RecordParams": {"RecordMode": 2}, "MixLayoutParams": {"MixLayoutMode": 1}
        }))
        .expect("shape");
        validate::create(raw).expect("valid")
    }

    fn cb(task: &str, body: &str) -> NewCallback {
        NewCallback {
            task_id: task.into(),
            sdk_app_id: 1,
            event_type: 301,
            url: "http://x".into(),
            body: body.into(),
            sign: "s".into(),
            created_ms: 10,
        }
    }

    /// An Idle task `task_id` with the test spec.
    fn idle_record(task_id: &str) -> TaskRecord {
        TaskRecord {
            task_id: task_id.into(),
            spec: spec(),
            state: TaskState::Idle,
            created_ms: 10,
            files: Vec::new(),
            restarts: 0,
        }
    }

    #[test]
    fn tasks_and_outbox_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("kiroku-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state.redb");
        let _ = std::fs::remove_file(&path);
        let rec = idle_record("t1");
        {
            let store = StateStore::open(&path, Arc::new(Sealer::none())).expect("open");
            let q = store
                .apply(Change {
                    put_task: Some(&rec),
                    callbacks: vec![cb("t1", "a"), cb("t1", "b")],
                    ..Change::default()
                })
                .expect("apply");
            assert_eq!(q.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
            store.outbox_retry(1, 3, 999).expect("retry");
        }
        let store = StateStore::open(&path, Arc::new(Sealer::none())).expect("reopen");
        assert_eq!(store.load_tasks().expect("load"), vec![rec.clone()]);
        let ob = store.load_outbox().expect("outbox");
        assert_eq!(ob.len(), 2);
        assert_eq!(
            (ob[0].attempts, ob[0].next_attempt_ms, ob[1].body.as_str()),
            (3, 999, "b")
        );
        store.outbox_remove(1).expect("remove");
        store
            .apply(Change {
                remove_task: Some("t1"),
                callbacks: vec![cb("t1", "c")],
                ..Change::default()
            })
            .expect("apply");
        assert!(store.load_tasks().expect("load").is_empty());
        let seqs: Vec<u64> = store
            .load_outbox()
            .expect("outbox")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, vec![2, 3]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every byte of the store file, as a copy of it would show them.
    fn file_has(path: &Path, needle: &[u8]) -> bool {
        let bytes = std::fs::read(path).expect("store file");
        bytes.windows(needle.len()).any(|w| w == needle)
    }

    #[test]
    fn with_a_key_secrets_never_reach_the_file_and_rotation_reseals() {
        let dir = std::env::temp_dir().join(format!("kiroku-store-sealed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state.redb");
        let rec = idle_record("t1");
        let secret = b"bot-user-sig-0123456789";
        let put = |store: &StateStore| {
            store
                .apply(Change {
                    put_task: Some(&rec),
                    ..Change::default()
                })
                .expect("apply");
        };
        // Written plain before a key existed (the check below can fail).
        {
            let store = StateStore::open(&path, Arc::new(Sealer::none())).expect("open");
            put(&store);
        }
        assert!(file_has(&path, secret));
        // A key is configured: the next load seals the record.
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        {
            let store =
                StateStore::open(&path, Arc::new(Sealer::from_raw(&k1, &[]))).expect("open");
            assert_eq!(store.load_tasks().expect("load"), vec![rec.clone()]);
            // A rewrite leaves no plain copy behind either.
            put(&store);
            put(&store);
        }
        // redb keeps freed pages until they are reused: opening with a key
        // compacted the file after sealing, so no plain copy is left.
        assert!(!file_has(&path, secret), "the UserSig is in the store file");
        // Rotation: k2 current, k1 previous; loading reseals with k2, after
        // which k1 is no longer needed.
        {
            let store =
                StateStore::open(&path, Arc::new(Sealer::from_raw(&k2, &[&k1]))).expect("open");
            assert_eq!(store.load_tasks().expect("load"), vec![rec.clone()]);
        }
        let store = StateStore::open(&path, Arc::new(Sealer::from_raw(&k2, &[]))).expect("open");
        assert_eq!(store.load_tasks().expect("load"), vec![rec.clone()]);
        drop(store);
        // Without the key the store does not open, and says what is missing.
        match StateStore::open(&path, Arc::new(Sealer::none())) {
            Ok(_) => panic!("a sealed store opened without its key"),
            Err(e) => assert!(format!("{e}").contains("key_file"), "{e}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unreadable_record_is_quarantined_and_the_rest_load() {
        let dir = std::env::temp_dir().join(format!("kiroku-store-q-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("state.redb");
        let rec = idle_record("good");
        {
            let store = StateStore::open(&path, Arc::new(Sealer::none())).expect("open");
            store
                .apply(Change {
                    put_task: Some(&rec),
                    ..Change::default()
                })
                .expect("apply");
            // A record damaged on disk (written around the store's API).
            store
                .engine
                .apply(
                    Some(PutTask {
                        task_id: "bad",
                        value: b"{\"task_id\": 3",
                        sdk_app_id: 1,
                        room_key: "5",
                    }),
                    None,
                    Vec::new(),
                )
                .expect("a damaged record written");
        }
        let store = StateStore::open(&path, Arc::new(Sealer::none())).expect("reopen");
        assert_eq!(store.load_tasks().expect("starts"), vec![rec.clone()]);
        assert_eq!(store.quarantined().expect("list"), vec!["bad".to_owned()]);
        // Once set aside it stays out of the way.
        assert_eq!(store.load_tasks().expect("again"), vec![rec]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
