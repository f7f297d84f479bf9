//! The embedded transactional state store (redb, one file under `data_dir`).
//!
//! It holds the live tasks and the callback outbox. A task's state change
//! and the callbacks it causes are committed in one transaction, so a crash
//! can never record a stop without its 302 or send a 302 for a task that
//! still runs. Every commit is durable (fsync) before the caller answers.
//!
//! Values are JSON: easy to inspect and to migrate, and tiny next to media.
//! Task records carry customer S3 keys and the bot's UserSig: with a
//! `[secrets] key_file` they are sealed ([`crate::sealing`]); records
//! sealed with a previous key, or written plain before a key existed, are
//! sealed anew when the store is loaded. The outbox holds no secrets.
//! All calls block on disk; async callers go through `spawn_blocking`.
//!
//! A write that fails on I/O (a full disk) poisons redb's handle: every
//! later transaction fails with `PreviousIo` until the file is opened
//! again. The store therefore closes and reopens the file after such an
//! error (redb recovers to the last commit), so the callers' retries
//! succeed once the disk has room again, without a restart.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::domain::task::TaskRecord;
use crate::sealing::{SealError, Sealer};

const TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tasks");
const OUTBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("outbox");
/// Task records that could not be read, kept (not deleted) for an
/// operator to look at: `kiroku` starts with the rest.
const QUARANTINE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("quarantine");

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("state store")]
    Db(#[from] redb::Error),
    #[error("state store: corrupt record {key}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("state store: record {key}: {source}")]
    Sealed { key: String, source: SealError },
    #[error("state store: a failure injected by a test (KIROKU_TEST_FAULTS)")]
    Injected,
    #[error("state store {path}: closed after an I/O error")]
    Closed { path: String },
    #[error("state store {path}: closed after an I/O error and not open again yet: {source}")]
    Reopen { path: String, source: redb::Error },
    #[error("state store file {path}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

fn db_err(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into())
}

impl StoreError {
    /// An I/O error under redb: its handle is unusable until reopened.
    fn poisons_the_handle(&self) -> bool {
        matches!(
            self,
            StoreError::Db(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
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

/// A change to commit atomically.
#[derive(Debug, Default)]
pub struct Change<'a> {
    pub put_task: Option<&'a TaskRecord>,
    pub remove_task: Option<&'a str>,
    pub callbacks: Vec<NewCallback>,
}

pub struct StateStore {
    path: PathBuf,
    /// `None` after an I/O error until the file could be opened again.
    db: RwLock<Option<Database>>,
    sealer: std::sync::Arc<Sealer>,
}

fn task_context(task_id: &str) -> String {
    format!("task:{task_id}")
}

impl StateStore {
    pub fn open(path: &Path, sealer: std::sync::Arc<Sealer>) -> Result<Self, StoreError> {
        // Tasks carry customer S3 keys and UserSigs: the file is created
        // 0600 before redb opens it (redb takes no mode), and made 0600 if
        // an older version left it looser.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .and_then(|_| crate::output::durable::make_private(path))
            .map_err(|source| StoreError::File {
                path: path.display().to_string(),
                source,
            })?;
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(TASKS).map_err(db_err)?;
            txn.open_table(OUTBOX).map_err(db_err)?;
            txn.open_table(QUARANTINE).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        let store = Self {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
            sealer,
        };
        // Seal what is not sealed with the current key and set unreadable
        // records aside now; then compact, so that the pages that held the
        // plain (or old-key) values are gone from the file, not merely
        // free: a copy of state.redb must give no secret away.
        let (_, rewrote) = store.scan()?;
        if rewrote {
            let mut db = store.db.write().unwrap_or_else(|p| p.into_inner());
            if let Some(db) = db.as_mut() {
                db.compact().map_err(db_err)?;
            }
        }
        Ok(store)
    }

    /// Runs `op` on the open database; after an I/O error closes the file
    /// and opens it again, so the next call finds a usable handle.
    fn with_db<T>(
        &self,
        op: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if self.read_db().is_none() {
            self.reopen()?;
        }
        let result = {
            let guard = self.read_db();
            match guard.as_ref() {
                Some(db) => op(db),
                None => {
                    return Err(StoreError::Closed {
                        path: self.path.display().to_string(),
                    })
                }
            }
        };
        if let Err(e) = &result {
            if e.poisons_the_handle() {
                tracing::warn!(error = %e, "state store I/O error: reopening the file");
                let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
                *guard = None;
                drop(guard);
                if let Err(e) = self.reopen() {
                    tracing::error!(error = %e, "the state store could not be opened again yet");
                }
            }
        }
        result
    }

    fn read_db(&self) -> std::sync::RwLockReadGuard<'_, Option<Database>> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the file again if it is closed.
    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            let db = Database::create(&self.path).map_err(|source| StoreError::Reopen {
                path: self.path.display().to_string(),
                source: source.into(),
            })?;
            tracing::info!(path = %self.path.display(), "state store open again");
            *guard = Some(db);
        }
        Ok(())
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
    /// cannot be read (damaged, not a task) is moved to the quarantine
    /// table, logged, and the rest load; one sealed with a key this daemon
    /// lacks stops the load instead (the operator must supply the key).
    pub fn load_tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        self.scan().map(|(records, _)| records)
    }

    /// [`Self::load_tasks`], and whether records were rewritten.
    fn scan(&self) -> Result<(Vec<TaskRecord>, bool), StoreError> {
        self.with_db(|db| self.scan_in(db))
    }

    fn scan_in(&self, db: &Database) -> Result<(Vec<TaskRecord>, bool), StoreError> {
        let mut out = Vec::new();
        let mut stale = Vec::new();
        let mut unreadable: Vec<(String, Vec<u8>)> = Vec::new();
        {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(TASKS).map_err(db_err)?;
            for item in table.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let key = k.value().to_owned();
                let opened = match self.sealer.open(&task_context(&key), v.value()) {
                    Ok(o) => o,
                    Err(source @ (SealError::UnknownKey { .. } | SealError::NoKey { .. })) => {
                        return Err(StoreError::Sealed { key, source })
                    }
                    Err(e) => {
                        tracing::error!(task_id = %key, error = %e, "unreadable task record quarantined");
                        unreadable.push((key, v.value().to_vec()));
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
                        unreadable.push((key, v.value().to_vec()));
                    }
                }
            }
        }
        if !stale.is_empty() || !unreadable.is_empty() {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut tasks = txn.open_table(TASKS).map_err(db_err)?;
                let mut quarantine = txn.open_table(QUARANTINE).map_err(db_err)?;
                for (key, raw) in &unreadable {
                    // Kept as read, but sealed: a damaged plain record may
                    // still hold a secret.
                    let kept = if raw.starts_with(b"KRKS1") {
                        raw.clone()
                    } else {
                        self.sealer
                            .seal(&format!("quarantine:{key}"), raw)
                            .map_err(|source| StoreError::Sealed {
                                key: key.clone(),
                                source,
                            })?
                    };
                    quarantine
                        .insert(key.as_str(), kept.as_slice())
                        .map_err(db_err)?;
                    tasks.remove(key.as_str()).map_err(db_err)?;
                }
                for &i in &stale {
                    let rec = &out[i];
                    let bytes = self.seal_task(rec)?;
                    tasks
                        .insert(rec.task_id.as_str(), bytes.as_slice())
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)?;
            if !stale.is_empty() {
                tracing::info!(
                    records = stale.len(),
                    "task records sealed with the current key"
                );
            }
        }
        let rewrote = !stale.is_empty() || !unreadable.is_empty();
        Ok((out, rewrote))
    }

    /// The ids of the quarantined task records.
    pub fn quarantined(&self) -> Result<Vec<String>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(QUARANTINE).map_err(db_err)?;
            let mut out = Vec::new();
            for item in table.iter().map_err(db_err)? {
                let (k, _) = item.map_err(db_err)?;
                out.push(k.value().to_owned());
            }
            Ok(out)
        })
    }

    /// The outbox in seq order.
    pub fn load_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(OUTBOX).map_err(db_err)?;
            let mut out = Vec::new();
            for item in table.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let e =
                    serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                        key: format!("outbox/{}", k.value()),
                        source,
                    })?;
                out.push(e);
            }
            Ok(out)
        })
    }

    /// Commits a change; returns the queued callbacks with their seqs.
    pub fn apply(&self, change: Change<'_>) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with_db(|db| {
            if crate::faults::commit_checkpoint() {
                return Err(StoreError::Injected);
            }
            let txn = db.begin_write().map_err(db_err)?;
            let mut queued = Vec::with_capacity(change.callbacks.len());
            {
                let mut tasks = txn.open_table(TASKS).map_err(db_err)?;
                if let Some(rec) = change.put_task {
                    let bytes = self.seal_task(rec)?;
                    tasks
                        .insert(rec.task_id.as_str(), bytes.as_slice())
                        .map_err(db_err)?;
                }
                if let Some(id) = change.remove_task {
                    tasks.remove(id).map_err(db_err)?;
                }
                let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
                let first_seq = match outbox.last().map_err(db_err)? {
                    Some((k, _)) => k.value() + 1,
                    None => 1,
                };
                for (next_seq, cb) in (first_seq..).zip(change.callbacks) {
                    let entry = OutboxEntry {
                        seq: next_seq,
                        task_id: cb.task_id,
                        sdk_app_id: cb.sdk_app_id,
                        event_type: cb.event_type,
                        url: cb.url,
                        body: cb.body,
                        sign: cb.sign,
                        created_ms: cb.created_ms,
                        attempts: 0,
                        next_attempt_ms: cb.created_ms,
                    };
                    let bytes =
                        serde_json::to_vec(&entry).map_err(|source| StoreError::Corrupt {
                            key: format!("outbox/{next_seq}"),
                            source,
                        })?;
                    outbox.insert(next_seq, bytes.as_slice()).map_err(db_err)?;
                    queued.push(entry);
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(queued)
        })
    }

    /// Records a failed attempt.
    pub fn outbox_retry(
        &self,
        seq: u64,
        attempts: u32,
        next_attempt_ms: u64,
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
                let current = outbox.get(seq).map_err(db_err)?.map(|v| v.value().to_vec());
                if let Some(bytes) = current {
                    let mut e: OutboxEntry =
                        serde_json::from_slice(&bytes).map_err(|source| StoreError::Corrupt {
                            key: format!("outbox/{seq}"),
                            source,
                        })?;
                    e.attempts = attempts;
                    e.next_attempt_ms = next_attempt_ms;
                    let bytes = serde_json::to_vec(&e).map_err(|source| StoreError::Corrupt {
                        key: format!("outbox/{seq}"),
                        source,
                    })?;
                    outbox.insert(seq, bytes.as_slice()).map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
    }

    /// Removes a delivered or given-up callback.
    pub fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
                outbox.remove(seq).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
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
                .with_db(|db| {
                    let txn = db.begin_write().map_err(db_err)?;
                    {
                        let mut t = txn.open_table(TASKS).map_err(db_err)?;
                        t.insert("bad", b"{\"task_id\": 3".as_slice())
                            .map_err(db_err)?;
                    }
                    txn.commit().map_err(db_err)
                })
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
