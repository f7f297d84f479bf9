//! The embedded engine: redb, one file (`data_dir/state.redb`), the single
//! box's default. Values are the front's bytes; outbox rows are JSON.
//!
//! A write that fails on I/O (a full disk) poisons redb's handle: every
//! later transaction fails with `PreviousIo` until the file is opened
//! again. The engine therefore closes and reopens the file after such an
//! error (redb recovers to the last commit), so the callers' retries
//! succeed once the disk has room again, without a restart.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Engine, NewCallback, OutboxEntry, PutTask, RecordOwner, RecordSet, StoreError};

const TASKS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tasks");
const OUTBOX: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("outbox");
/// Task records that could not be read, kept (not deleted) for an
/// operator to look at: `kiroku` starts with the rest.
const QUARANTINE: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("quarantine");
/// The record sets, under `<set name>/<key>` (one box: no owners).
const RECORDS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("records");

fn record_key(set: RecordSet, key: &str) -> String {
    format!("{}/{key}", set.name())
}

/// The embedded store is one box's: it keeps no other box's records.
fn only_this_box(owner: RecordOwner<'_>) -> Result<(), StoreError> {
    match owner {
        RecordOwner::ThisBox => Ok(()),
        RecordOwner::Node(node) => Err(StoreError::OtherBox {
            node: node.to_owned(),
        }),
    }
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

fn outbox_json(entry: &OutboxEntry) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(entry).map_err(|source| StoreError::Corrupt {
        key: format!("outbox/{}", entry.seq),
        source,
    })
}

pub struct Embedded {
    path: PathBuf,
    /// `None` after an I/O error until the file could be opened again.
    db: RwLock<Option<Database>>,
}

impl Embedded {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Tasks carry customer S3 keys and UserSigs: the file is created
        // 0600 before redb opens it (redb takes no mode), and made 0600 if
        // an older version left it looser.
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .and_then(|_| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            })
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
            txn.open_table(RECORDS).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(Self {
            path: path.to_owned(),
            db: RwLock::new(Some(db)),
        })
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
}

impl Engine for Embedded {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn task_values(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(TASKS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in table.iter().map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                out.push((k.value().to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn set_aside(
        &self,
        unreadable: &[(String, Vec<u8>)],
        resealed: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut tasks = txn.open_table(TASKS).map_err(db_err)?;
                let mut quarantine = txn.open_table(QUARANTINE).map_err(db_err)?;
                for (key, kept) in unreadable {
                    quarantine
                        .insert(key.as_str(), kept.as_slice())
                        .map_err(db_err)?;
                    tasks.remove(key.as_str()).map_err(db_err)?;
                }
                for (key, value) in resealed {
                    tasks
                        .insert(key.as_str(), value.as_slice())
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
    }

    fn compact(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        if let Some(db) = guard.as_mut() {
            db.compact().map_err(db_err)?;
        }
        Ok(())
    }

    fn quarantined(&self) -> Result<Vec<String>, StoreError> {
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

    fn load_outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
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

    fn apply(
        &self,
        put: Option<PutTask<'_>>,
        remove: Option<&str>,
        callbacks: Vec<NewCallback>,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            let mut queued = Vec::with_capacity(callbacks.len());
            {
                let mut tasks = txn.open_table(TASKS).map_err(db_err)?;
                if let Some(put) = put {
                    tasks.insert(put.task_id, put.value).map_err(db_err)?;
                }
                if let Some(id) = remove {
                    tasks.remove(id).map_err(db_err)?;
                }
                let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
                let first_seq = match outbox.last().map_err(db_err)? {
                    Some((k, _)) => k.value() + 1,
                    None => 1,
                };
                for (seq, cb) in (first_seq..).zip(callbacks) {
                    let entry = cb.queued(seq);
                    outbox
                        .insert(seq, outbox_json(&entry)?.as_slice())
                        .map_err(db_err)?;
                    queued.push(entry);
                }
            }
            txn.commit().map_err(db_err)?;
            Ok(queued)
        })
    }

    fn outbox_retry(
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
                    outbox
                        .insert(seq, outbox_json(&e)?.as_slice())
                        .map_err(db_err)?;
                }
            }
            txn.commit().map_err(db_err)
        })
    }

    fn outbox_remove(&self, seq: u64) -> Result<(), StoreError> {
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut outbox = txn.open_table(OUTBOX).map_err(db_err)?;
                outbox.remove(seq).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
    }

    fn records(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
    ) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        only_this_box(owner)?;
        let prefix = record_key(set, "");
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(RECORDS).map_err(db_err)?;
            let mut out = Vec::new();
            for item in table.range(prefix.as_str()..).map_err(db_err)? {
                let (k, v) = item.map_err(db_err)?;
                let Some(key) = k.value().strip_prefix(prefix.as_str()) else {
                    break;
                };
                out.push((key.to_owned(), v.value().to_vec()));
            }
            Ok(out)
        })
    }

    fn put_record(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
        key: &str,
        value: &[u8],
    ) -> Result<(), StoreError> {
        only_this_box(owner)?;
        let key = record_key(set, key);
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(RECORDS).map_err(db_err)?;
                table.insert(key.as_str(), value).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
    }

    fn remove_record(
        &self,
        set: RecordSet,
        owner: RecordOwner<'_>,
        key: &str,
    ) -> Result<(), StoreError> {
        only_this_box(owner)?;
        let key = record_key(set, key);
        self.with_db(|db| {
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut table = txn.open_table(RECORDS).map_err(db_err)?;
                table.remove(key.as_str()).map_err(db_err)?;
            }
            txn.commit().map_err(db_err)
        })
    }

    fn find_record(
        &self,
        set: RecordSet,
        key: &str,
    ) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        let key = record_key(set, key);
        self.with_db(|db| {
            let txn = db.begin_read().map_err(db_err)?;
            let table = txn.open_table(RECORDS).map_err(db_err)?;
            let value = table.get(key.as_str()).map_err(db_err)?;
            Ok(value.map(|v| (String::new(), v.value().to_vec())))
        })
    }
}
