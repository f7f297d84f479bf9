//! The local spool: every recorded file is made durable here before it is
//! uploaded, so that a crash, a network outage or a slow remote store loses
//! nothing.
//!
//! Layout: one directory, one file per entry, `<id>.ent` (the id is the
//! entry's sequence number in put order, as 16 hex digits), holding a small
//! header (task id, object key, length) and the payload; `<id>.retry` holds
//! the entry's upload retry state ([`RetryState`], JSON) once an upload has
//! failed.
//!
//! Guarantees:
//! - [`Spool::put`] returns only once the entry is durable: the file was
//!   written under a temporary name, fdatasynced, renamed into place and
//!   the directory fsynced. A crash before that leaves only a `.tmp` file,
//!   which [`Spool::open`] removes; a crash after it leaves the whole entry.
//!   Nothing is half-written, lost once acknowledged, or present twice.
//! - [`Spool::remove`] is durable too (unlink, then directory fsync), so an
//!   uploaded entry does not come back after a crash.
//! - Retry state is replaced atomically (temporary file, fsync, rename) but
//!   without a directory fsync: a crash may bring back the previous state
//!   (one attempt fewer), never a torn one. An unreadable state file counts
//!   as no failures yet.
//! - The spool never holds more than `capacity_bytes` of entries (header
//!   included): a put that would pass it fails with [`SpoolError::Full`],
//!   and one that hits a full disk with [`SpoolError::DiskFull`]; both are
//!   specific to that put, so the caller fails the affected task and other
//!   tasks go on as space frees.
//! - Backends: writes go through io_uring when it works here, or through
//!   plain blocking writes on the caller's thread. With io_uring, one
//!   writer thread owns the ring: it submits every put queued at once, each
//!   write linked to its fdatasync, keeps taking new puts while earlier
//!   ones sync, renames each synced file and covers all files renamed
//!   meanwhile with one directory fsync (group commit). Both backends
//!   produce identical files. The choice is made at open by probing
//!   ([`BackendChoice::Auto`]; `KIROKU_SPOOL_BACKEND=plain` forces plain
//!   writes), logged, and reported by [`Spool::backend`] and
//!   [`Spool::fallback_reason`].

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::check_key;
use super::durable;
use super::queue::{Entry, EntryId, RetryState};
use super::uring::Engine;

mod format;
#[cfg(test)]
mod tests;
mod writer;

use format::*;
use writer::*;

const MAGIC: &[u8; 8] = b"KRKSPOL1";
/// Magic, task length (u32), key length (u32), payload length (u64).
const FIXED_HEADER: usize = 8 + 4 + 4 + 8;
/// Longest task id or key accepted (they live in the header).
const MAX_NAME: usize = 4096;
/// Linux errno values for a full disk and an exhausted quota.
const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    #[error(
        "spool full: {needed} bytes for {key:?} of task {task} would pass the capacity \
         ({used} of {capacity} bytes in use)"
    )]
    Full {
        task: String,
        key: String,
        needed: u64,
        used: u64,
        capacity: u64,
    },
    #[error("disk full writing {key:?} of task {task} to the spool")]
    DiskFull {
        task: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("object key {0:?} is not a relative path of plain names")]
    BadKey(String),
    #[error("task id or key longer than {MAX_NAME} bytes")]
    NameTooLong,
    #[error("no spool entry {0}")]
    NotFound(EntryId),
    #[error("spool entry {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("io_uring is unavailable: {0}")]
    UringUnavailable(String),
    #[error("the spool's writer thread has stopped")]
    WriterGone,
    #[error("spool I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl SpoolError {
    /// True when the spool or its disk is out of space: the put's task
    /// should fail, others may go on.
    pub fn is_full(&self) -> bool {
        matches!(self, SpoolError::Full { .. } | SpoolError::DiskFull { .. })
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Plain,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Plain => "plain",
        }
    }
}

/// Which backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring if the probe succeeds, plain writes otherwise.
    #[default]
    Auto,
    Plain,
    /// io_uring or an error ([`SpoolError::UringUnavailable`]).
    IoUring,
}

impl BackendChoice {
    /// The environment variable read by [`Spool::open`].
    pub const ENV: &'static str = "KIROKU_SPOOL_BACKEND";

    /// `plain`, `io_uring` (or `uring`), `auto`; anything else or unset is
    /// `Auto`.
    pub fn parse(s: &str) -> Option<BackendChoice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "plain" => Some(BackendChoice::Plain),
            "io_uring" | "uring" | "io-uring" => Some(BackendChoice::IoUring),
            "auto" | "" => Some(BackendChoice::Auto),
            _ => None,
        }
    }

    pub fn from_env() -> BackendChoice {
        std::env::var(Self::ENV)
            .ok()
            .and_then(|v| Self::parse(&v))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub capacity_bytes: u64,
    pub backend: BackendChoice,
    /// io_uring: most puts in the ring at once.
    pub in_flight: usize,
    /// io_uring: puts waiting for the writer thread before callers block.
    pub queue_depth: usize,
}

impl SpoolOptions {
    pub fn new(capacity_bytes: u64) -> Self {
        SpoolOptions {
            capacity_bytes,
            backend: BackendChoice::Auto,
            in_flight: 64,
            queue_depth: 256,
        }
    }

    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }
}

/// Space in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub files: usize,
    /// Entry files' sizes (payload and header), reserved puts included.
    pub bytes: u64,
    pub capacity_bytes: u64,
}

/// What [`Spool::open`] found and cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Finished entries kept.
    pub entries: usize,
    /// Half-written files removed (entries and retry states).
    pub temp_removed: usize,
    /// Retry states without an entry, removed.
    pub orphans_removed: usize,
    /// Unreadable retry states (treated as no failures yet).
    pub bad_retry_states: usize,
    /// Entries that fail their own checks, set aside as `<id>.corrupt`.
    pub corrupt: Vec<PathBuf>,
}

#[derive(Debug)]
struct Meta {
    task: String,
    key: String,
    data_len: u64,
    file_len: u64,
    retry: RetryState,
}

#[derive(Debug, Default)]
struct State {
    index: BTreeMap<EntryId, Meta>,
    /// Bytes of entries plus puts in progress.
    used: u64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    dir_handle: File,
    capacity: u64,
    next_id: AtomicU64,
    state: Mutex<State>,
    /// io_uring submissions and the puts they carried.
    batches: AtomicU64,
    batched_puts: AtomicU64,
    /// Set when the ring failed at run time (plain writes since).
    uring_failure: Mutex<Option<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere does not leave the index half-updated: every
        // change is one insert/remove plus a counter.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: EntryId, ext: &str) -> PathBuf {
        self.dir.join(format!("{id:016x}.{ext}"))
    }

    fn sync_dir(&self) -> Result<(), SpoolError> {
        self.dir_handle.sync_all().map_err(io_err(&self.dir))
    }
}

/// The spool. Share it (`Arc<Spool>`) among recorder threads; every method
/// takes `&self`.
pub struct Spool {
    shared: Arc<Shared>,
    writer: Option<Writer>,
    backend: Backend,
    fallback_reason: Option<String>,
    recovery: Recovery,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, with the backend from
    /// `KIROKU_SPOOL_BACKEND` (default: probe for io_uring).
    pub fn open(dir: impl Into<PathBuf>, capacity_bytes: u64) -> Result<Spool, SpoolError> {
        Self::open_with(
            dir,
            SpoolOptions::new(capacity_bytes).backend(BackendChoice::from_env()),
        )
    }

    /// Opens the spool: recovers the entries a previous run left (removing
    /// half-written files), then starts the chosen backend.
    pub fn open_with(dir: impl Into<PathBuf>, opts: SpoolOptions) -> Result<Spool, SpoolError> {
        let dir = dir.into();
        durable::private_dir(&dir).map_err(io_err(&dir))?;
        let dir_handle = File::open(&dir).map_err(io_err(&dir))?;
        let (state, next_id, recovery) = recover(&dir)?;
        let shared = Arc::new(Shared {
            dir,
            dir_handle,
            capacity: opts.capacity_bytes,
            next_id: AtomicU64::new(next_id),
            state: Mutex::new(state),
            batches: AtomicU64::new(0),
            batched_puts: AtomicU64::new(0),
            uring_failure: Mutex::new(None),
        });
        // The removals of recovery are made durable before anything new.
        shared.sync_dir()?;
        if recovery.temp_removed + recovery.orphans_removed > 0 || !recovery.corrupt.is_empty() {
            tracing::warn!(
                dir = %shared.dir.display(),
                temp_removed = recovery.temp_removed,
                orphans_removed = recovery.orphans_removed,
                corrupt = recovery.corrupt.len(),
                "spool: cleaned up after an unclean stop"
            );
        }

        let mut fallback_reason = None;
        let writer = match opts.backend {
            BackendChoice::Plain => {
                fallback_reason = Some("plain writes configured".to_owned());
                None
            }
            choice => match shared
                .dir_handle
                .try_clone()
                .and_then(|dir| Engine::probe(opts.in_flight, dir))
            {
                Ok(engine) => Some(Writer::start(shared.clone(), engine, opts.queue_depth)?),
                Err(e) if choice == BackendChoice::IoUring => {
                    return Err(SpoolError::UringUnavailable(e.to_string()))
                }
                Err(e) => {
                    fallback_reason = Some(format!("io_uring unavailable: {e}"));
                    None
                }
            },
        };
        let backend = if writer.is_some() {
            Backend::IoUring
        } else {
            Backend::Plain
        };
        match &fallback_reason {
            Some(why) if opts.backend == BackendChoice::Auto => tracing::warn!(
                dir = %shared.dir.display(),
                "spool: plain writes ({why})"
            ),
            _ => tracing::info!(
                dir = %shared.dir.display(),
                backend = backend.as_str(),
                entries = recovery.entries,
                "spool open"
            ),
        }
        Ok(Spool {
            shared,
            writer,
            backend,
            fallback_reason,
            recovery,
        })
    }

    /// `"io_uring"` or `"plain"`: the backend in use now (io_uring falls
    /// back to plain writes for good if the ring fails at run time).
    pub fn backend(&self) -> &'static str {
        if self.backend == Backend::IoUring && self.uring_failure().is_some() {
            Backend::Plain.as_str()
        } else {
            self.backend.as_str()
        }
    }

    /// Why plain writes are used, when they are.
    pub fn fallback_reason(&self) -> Option<String> {
        self.fallback_reason
            .clone()
            .or_else(|| self.uring_failure())
    }

    fn uring_failure(&self) -> Option<String> {
        self.shared
            .uring_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// What opening found.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Spools `data` as object `key` of `task_id`; durable when it returns.
    pub fn put(&self, task_id: &str, key: &str, data: &[u8]) -> Result<EntryId, SpoolError> {
        self.put_content(task_id, key, durable::Content::bytes(data))
    }

    /// [`Spool::put`] of bytes and a file's contents (a packed MP4 whose
    /// payload was spilled to disk): written on the caller's thread with
    /// plain writes, the tail copied by the kernel, never all in memory.
    pub fn put_content(
        &self,
        task_id: &str,
        key: &str,
        content: durable::Content<'_>,
    ) -> Result<EntryId, SpoolError> {
        check_key(key).map_err(|_| SpoolError::BadKey(key.to_owned()))?;
        if task_id.len() > MAX_NAME || key.len() > MAX_NAME {
            return Err(SpoolError::NameTooLong);
        }
        let data_len = match content.tail {
            None => content.head.len() as u64,
            Some(tail) => content.len().map_err(|source| SpoolError::Io {
                path: tail.to_owned(),
                source,
            })?,
        };
        let header = encode_header(task_id, key, data_len, 0);
        let file_len = header.len() as u64 + data_len;
        {
            let mut st = self.shared.lock();
            let used = st.used;
            if used.saturating_add(file_len) > self.shared.capacity {
                return Err(SpoolError::Full {
                    task: task_id.to_owned(),
                    key: key.to_owned(),
                    needed: file_len,
                    used,
                    capacity: self.shared.capacity,
                });
            }
            st.used += file_len;
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let tmp = self.shared.path(id, "tmp");
        let fin = self.shared.path(id, "ent");
        let written = match (&self.writer, content.tail) {
            (Some(w), None) => {
                let mut buf = header;
                buf.extend_from_slice(content.head);
                w.write(tmp, fin, buf)
            }
            (None, None) => {
                let mut buf = header;
                buf.extend_from_slice(content.head);
                write_plain(&self.shared, &tmp, &fin, &buf)
            }
            (_, Some(tail)) => {
                write_plain_content(&self.shared, &tmp, &fin, &header, content, tail, data_len)
            }
        };
        let mut st = self.shared.lock();
        match written {
            Ok(()) => {
                st.index.insert(
                    id,
                    Meta {
                        task: task_id.to_owned(),
                        key: key.to_owned(),
                        data_len,
                        file_len,
                        retry: RetryState::default(),
                    },
                );
                Ok(id)
            }
            Err(e) => {
                st.used -= file_len;
                Err(match e {
                    SpoolError::Io { source, .. }
                        if matches!(source.raw_os_error(), Some(ENOSPC | EDQUOT)) =>
                    {
                        SpoolError::DiskFull {
                            task: task_id.to_owned(),
                            key: key.to_owned(),
                            source,
                        }
                    }
                    e => e,
                })
            }
        }
    }

    /// The entry's queue record (task, key, size, retry state).
    pub fn get(&self, id: EntryId) -> Option<Entry> {
        self.shared.lock().index.get(&id).map(|m| to_entry(id, m))
    }

    /// Every entry in the spool, in put order, with its persisted retry
    /// state: what [`UploadQueue::restore`](super::queue::UploadQueue::restore)
    /// takes after a restart.
    pub fn entries(&self) -> Vec<Entry> {
        let st = self.shared.lock();
        st.index.iter().map(|(&id, m)| to_entry(id, m)).collect()
    }

    /// The entry's payload.
    pub fn read(&self, id: EntryId) -> Result<Vec<u8>, SpoolError> {
        if !self.shared.lock().index.contains_key(&id) {
            return Err(SpoolError::NotFound(id));
        }
        let path = self.shared.path(id, "ent");
        let mut raw = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut raw))
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => SpoolError::NotFound(id),
                _ => SpoolError::Io {
                    path: path.clone(),
                    source: e,
                },
            })?;
        let header =
            decode_header(&raw, raw.len() as u64).map_err(|reason| SpoolError::Corrupt {
                path: path.clone(),
                reason,
            })?;
        raw.drain(..header.len);
        Ok(raw)
    }

    /// Where an entry's payload lies — its file, the payload's offset and
    /// length — so that a large entry can be read in parts rather than
    /// whole.
    pub fn payload_location(&self, id: EntryId) -> Result<(PathBuf, u64, u64), SpoolError> {
        let (file_len, data_len) = {
            let st = self.shared.lock();
            let m = st.index.get(&id).ok_or(SpoolError::NotFound(id))?;
            (m.file_len, m.data_len)
        };
        Ok((self.shared.path(id, "ent"), file_len - data_len, data_len))
    }

    /// Drops an entry (after its upload, or when superseded); durable when
    /// it returns.
    pub fn remove(&self, id: EntryId) -> Result<(), SpoolError> {
        let meta = self
            .shared
            .lock()
            .index
            .remove(&id)
            .ok_or(SpoolError::NotFound(id))?;
        let ent = self.shared.path(id, "ent");
        if let Err(e) = fs::remove_file(&ent) {
            if e.kind() != io::ErrorKind::NotFound {
                self.shared.lock().index.insert(id, meta);
                return Err(SpoolError::Io {
                    path: ent,
                    source: e,
                });
            }
        }
        self.shared.lock().used -= meta.file_len;
        // The entry is gone; a retry state left by a failure here is an
        // orphan that the next open removes.
        let _ = fs::remove_file(self.shared.path(id, "retry"));
        self.shared.sync_dir()
    }

    /// Persists an entry's retry state (from
    /// [`UploadQueue::failed`](super::queue::UploadQueue::failed)).
    pub fn set_retry(&self, id: EntryId, retry: &RetryState) -> Result<(), SpoolError> {
        if !self.shared.lock().index.contains_key(&id) {
            return Err(SpoolError::NotFound(id));
        }
        let tmp = self.shared.path(id, "retry.tmp");
        let fin = self.shared.path(id, "retry");
        let json = serde_json::to_vec(retry).map_err(|e| SpoolError::Io {
            path: tmp.clone(),
            source: io::Error::other(e),
        })?;
        durable::write_synced(&tmp, &json, durable::Access::Private)
            .and_then(|()| fs::rename(&tmp, &fin))
            .map_err(io_err(&fin))?;
        let mut st = self.shared.lock();
        match st.index.get_mut(&id) {
            Some(m) => {
                m.retry = retry.clone();
                Ok(())
            }
            None => {
                // Removed meanwhile: do not leave an orphan.
                drop(st);
                let _ = fs::remove_file(&fin);
                Err(SpoolError::NotFound(id))
            }
        }
    }

    /// io_uring backend: (submissions, puts carried); puts per submission
    /// is the batching achieved. Zeros on the plain backend.
    pub fn batching(&self) -> (u64, u64) {
        (
            self.shared.batches.load(Ordering::Relaxed),
            self.shared.batched_puts.load(Ordering::Relaxed),
        )
    }

    pub fn usage(&self) -> Usage {
        let st = self.shared.lock();
        Usage {
            files: st.index.len(),
            bytes: st.used,
            capacity_bytes: self.shared.capacity,
        }
    }
}

fn to_entry(id: EntryId, m: &Meta) -> Entry {
    let mut e = Entry::new(id, m.task.clone(), m.key.clone(), m.data_len);
    e.retry = m.retry.clone();
    e
}

/// The plain backend: temporary file, write, fdatasync, rename, directory
/// fsync, on the caller's thread.
fn write_plain(shared: &Shared, tmp: &Path, fin: &Path, buf: &[u8]) -> Result<(), SpoolError> {
    commit_written(
        shared,
        tmp,
        fin,
        durable::write_synced(tmp, buf, durable::Access::Private),
    )
}

/// The plain backend for an entry whose payload is bytes and a file:
/// header, head and the file copied in, fdatasync, rename, directory
/// fsync. The file must still be `data_len` long when copied.
fn write_plain_content(
    shared: &Shared,
    tmp: &Path,
    fin: &Path,
    header: &[u8],
    content: durable::Content<'_>,
    tail: &Path,
    data_len: u64,
) -> Result<(), SpoolError> {
    let written = durable::create(tmp, durable::Access::Private).and_then(|mut f| {
        use std::io::Write;
        f.write_all(header)?;
        content.write_to(&mut f)?;
        let len = f.metadata()?.len();
        if len != header.len() as u64 + data_len {
            return Err(io::Error::other(format!(
                "{} changed while it was spooled",
                tail.display()
            )));
        }
        f.sync_data()
    });
    commit_written(shared, tmp, fin, written)
}

/// After the temporary file was written (or failed to be): removes it on
/// failure, else renames it into place and syncs the directory.
fn commit_written(
    shared: &Shared,
    tmp: &Path,
    fin: &Path,
    written: io::Result<()>,
) -> Result<(), SpoolError> {
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(SpoolError::Io {
            path: tmp.to_owned(),
            source: e,
        });
    }
    commit(shared, &[(tmp, fin)])
        .pop()
        .unwrap_or(Err(SpoolError::WriterGone))
}

/// Renames synced temporary files into place, then fsyncs the directory
/// once for all of them. A failed directory fsync undoes the renames (best
/// effort) so that a put reported failed does not come back after a crash.
fn commit(shared: &Shared, files: &[(&Path, &Path)]) -> Vec<Result<(), SpoolError>> {
    let mut out: Vec<Result<(), SpoolError>> = files
        .iter()
        .map(|(tmp, fin)| {
            fs::rename(tmp, fin).map_err(|e| {
                let _ = fs::remove_file(tmp);
                SpoolError::Io {
                    path: fin.to_path_buf(),
                    source: e,
                }
            })
        })
        .collect();
    if out.iter().any(|r| r.is_ok()) {
        if let Err(SpoolError::Io { path, source }) = shared.sync_dir() {
            for (r, (_, fin)) in out.iter_mut().zip(files) {
                if r.is_ok() {
                    let _ = fs::remove_file(fin);
                    *r = Err(SpoolError::Io {
                        path: path.clone(),
                        source: io::Error::new(source.kind(), source.to_string()),
                    });
                }
            }
        }
    }
    out
}

/// Whether the spool in `dir` would write through io_uring: the probe the
/// spool runs at open (for `kiroku doctor`).
pub fn io_uring_available(dir: &Path) -> io::Result<()> {
    Engine::probe(4, File::open(dir)?).map(|_| ())
}

/// A finished entry of another box's spool (a fleet's shared spool), read
/// without opening that spool: the box that took a room over uploads the
/// entries of the room's tasks itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignEntry {
    pub id: EntryId,
    pub key: String,
    /// The entry file, and where its payload lies in it.
    pub path: PathBuf,
    pub payload_offset: u64,
    pub payload_len: u64,
    /// A newer entry has the same key (an older playlist version): it is
    /// removed, not uploaded, as in the box's own queue.
    pub superseded: bool,
}

impl ForeignEntry {
    /// Removes the entry (and its retry state) once uploaded. Another box
    /// may have removed it first: that is no error.
    pub fn remove(&self) -> Result<(), SpoolError> {
        for path in [&self.path, &self.path.with_extension("retry")] {
            match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path)(e)),
            }
        }
        Ok(())
    }
}

/// The finished entries of `task` in the spool folder `dir` (another
/// box's), oldest first. Half-written, unreadable or vanishing files are
/// skipped: the box may be writing or recovering them.
pub fn foreign_entries(dir: &Path, task: &str) -> Result<Vec<ForeignEntry>, SpoolError> {
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut entries = Vec::new();
    for dent in listing.flatten() {
        let path = dent.path();
        let Some(stem) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".ent"))
        else {
            continue;
        };
        let Ok(id) = EntryId::from_str_radix(stem, 16) else {
            continue;
        };
        if stem.len() != 16 {
            continue;
        }
        let Ok(header) = format::read_header(&path) else {
            continue;
        };
        if header.task == task {
            entries.push(ForeignEntry {
                id,
                key: header.key,
                path,
                payload_offset: header.len as u64,
                payload_len: header.data_len,
                superseded: false,
            });
        }
    }
    entries.sort_by_key(|e| e.id);
    let mut newest: std::collections::HashMap<String, EntryId> = std::collections::HashMap::new();
    for e in &entries {
        newest.insert(e.key.clone(), e.id);
    }
    for e in &mut entries {
        e.superseded = newest.get(&e.key) != Some(&e.id);
    }
    Ok(entries)
}
