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
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::check_key;
use super::queue::{Entry, EntryId, RetryState};
use super::uring::{Engine, Event, Job, ECANCELED};

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
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
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
        check_key(key).map_err(|_| SpoolError::BadKey(key.to_owned()))?;
        if task_id.len() > MAX_NAME || key.len() > MAX_NAME {
            return Err(SpoolError::NameTooLong);
        }
        let buf = encode(task_id, key, data);
        let file_len = buf.len() as u64;
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
        let written = match &self.writer {
            Some(w) => w.write(tmp, fin, buf),
            None => write_plain(&self.shared, &tmp, &fin, &buf),
        };
        let mut st = self.shared.lock();
        match written {
            Ok(()) => {
                st.index.insert(
                    id,
                    Meta {
                        task: task_id.to_owned(),
                        key: key.to_owned(),
                        data_len: data.len() as u64,
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
        (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_data()?;
            fs::rename(&tmp, &fin)
        })()
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

fn encode(task: &str, key: &str, data: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(FIXED_HEADER + task.len() + key.len() + data.len());
    buf.extend_from_slice(MAGIC);
    buf.extend_from_slice(&(task.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&(data.len() as u64).to_le_bytes());
    buf.extend_from_slice(task.as_bytes());
    buf.extend_from_slice(key.as_bytes());
    buf.extend_from_slice(data);
    buf
}

struct Header {
    task: String,
    key: String,
    data_len: u64,
    /// Header bytes, names included.
    len: usize,
}

/// Parses a header from the start of an entry file of `file_len` bytes.
fn decode_header(raw: &[u8], file_len: u64) -> Result<Header, String> {
    let fixed = raw
        .get(..FIXED_HEADER)
        .ok_or_else(|| "shorter than a header".to_owned())?;
    if &fixed[..8] != MAGIC {
        return Err("bad magic".to_owned());
    }
    let u32_at = |at: usize| -> usize {
        let mut b = [0u8; 4];
        b.copy_from_slice(&fixed[at..at + 4]);
        u32::from_le_bytes(b) as usize
    };
    let (task_len, key_len) = (u32_at(8), u32_at(12));
    let mut b = [0u8; 8];
    b.copy_from_slice(&fixed[16..24]);
    let data_len = u64::from_le_bytes(b);
    if task_len > MAX_NAME || key_len > MAX_NAME {
        return Err("names too long".to_owned());
    }
    let len = FIXED_HEADER + task_len + key_len;
    if (len as u64).checked_add(data_len) != Some(file_len) {
        return Err(format!(
            "{file_len} bytes on disk, header says {}",
            len as u64 + data_len
        ));
    }
    let names = raw
        .get(FIXED_HEADER..len)
        .ok_or_else(|| "truncated names".to_owned())?;
    let (task, key) = names.split_at(task_len);
    let task = String::from_utf8(task.to_vec()).map_err(|_| "task id not UTF-8".to_owned())?;
    let key = String::from_utf8(key.to_vec()).map_err(|_| "key not UTF-8".to_owned())?;
    check_key(&key).map_err(|_| format!("bad key {key:?}"))?;
    Ok(Header {
        task,
        key,
        data_len,
        len,
    })
}

/// Reads an entry file's header.
fn read_header(path: &Path) -> Result<Header, String> {
    let mut f = File::open(path).map_err(|e| e.to_string())?;
    let file_len = f.metadata().map_err(|e| e.to_string())?.len();
    let mut raw = vec![0u8; FIXED_HEADER + 2 * MAX_NAME];
    let mut got = 0;
    while got < raw.len() {
        match f.read(&mut raw[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    raw.truncate(got);
    decode_header(&raw, file_len)
}

/// Scans the spool directory: keeps finished entries, removes temporary
/// files and orphaned retry states, sets corrupt entries aside.
fn recover(dir: &Path) -> Result<(State, EntryId, Recovery), SpoolError> {
    let mut rec = Recovery::default();
    let mut state = State::default();
    let mut next_id: EntryId = 0;
    let mut retries: Vec<(EntryId, PathBuf)> = Vec::new();
    for dent in fs::read_dir(dir).map_err(io_err(dir))? {
        let dent = dent.map_err(io_err(dir))?;
        let path = dent.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((stem, ext)) = name.split_once('.') else {
            continue;
        };
        let Ok(id) = EntryId::from_str_radix(stem, 16) else {
            continue;
        };
        if stem.len() != 16 {
            continue;
        }
        next_id = next_id.max(id.saturating_add(1));
        match ext {
            "tmp" | "retry.tmp" => {
                fs::remove_file(&path).map_err(io_err(&path))?;
                rec.temp_removed += 1;
            }
            "retry" => retries.push((id, path)),
            "ent" => match read_header(&path) {
                Ok(h) => {
                    let file_len = h.len as u64 + h.data_len;
                    state.used += file_len;
                    state.index.insert(
                        id,
                        Meta {
                            task: h.task,
                            key: h.key,
                            data_len: h.data_len,
                            file_len,
                            retry: RetryState::default(),
                        },
                    );
                }
                Err(reason) => {
                    let aside = path.with_extension("corrupt");
                    tracing::error!(path = %path.display(), %reason, "spool: corrupt entry set aside");
                    fs::rename(&path, &aside).map_err(io_err(&path))?;
                    rec.corrupt.push(aside);
                }
            },
            _ => {}
        }
    }
    for (id, path) in retries {
        match state.index.get_mut(&id) {
            None => {
                fs::remove_file(&path).map_err(io_err(&path))?;
                rec.orphans_removed += 1;
            }
            Some(meta) => {
                match fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                {
                    Ok(r) => meta.retry = r,
                    Err(reason) => {
                        tracing::warn!(path = %path.display(), %reason, "spool: unreadable retry state ignored");
                        rec.bad_retry_states += 1;
                    }
                }
            }
        }
    }
    rec.entries = state.index.len();
    Ok((state, next_id, rec))
}

/// The plain backend: temporary file, write, fdatasync, rename, directory
/// fsync, on the caller's thread.
fn write_plain(shared: &Shared, tmp: &Path, fin: &Path, buf: &[u8]) -> Result<(), SpoolError> {
    let r = (|| {
        let mut f = new_file(tmp)?;
        f.write_all(buf)?;
        f.sync_data()
    })();
    if let Err(e) = r {
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

fn new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
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

struct Request {
    tmp: PathBuf,
    fin: PathBuf,
    buf: Arc<Vec<u8>>,
    reply: SyncSender<Result<(), SpoolError>>,
}

/// The io_uring backend: one thread owns the ring; puts queue requests on
/// a bounded channel and wait for their reply.
struct Writer {
    tx: Option<SyncSender<Request>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(shared: Arc<Shared>, engine: Engine, depth: usize) -> Result<Writer, SpoolError> {
        let (tx, rx) = mpsc::sync_channel(depth.max(1));
        let thread = std::thread::Builder::new()
            .name("spool-uring".to_owned())
            .spawn(move || writer_loop(&shared, engine, &rx))
            .map_err(|e| SpoolError::UringUnavailable(format!("writer thread: {e}")))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn write(&self, tmp: PathBuf, fin: PathBuf, buf: Vec<u8>) -> Result<(), SpoolError> {
        let (reply, answer) = mpsc::sync_channel(1);
        let tx = self.tx.as_ref().ok_or(SpoolError::WriterGone)?;
        let req = Request {
            tmp,
            fin,
            buf: Arc::new(buf),
            reply,
        };
        // A full channel is back-pressure: this waits for room.
        tx.send(req).map_err(|_| SpoolError::WriterGone)?;
        answer.recv().map_err(|_| SpoolError::WriterGone)?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread's state: requests in the ring (by slot), renamed and
/// waiting for a directory fsync, and covered by the one in flight.
struct Pipeline<'a> {
    shared: &'a Shared,
    engine: Engine,
    in_ring: Vec<Option<Request>>,
    renamed: Vec<Request>,
    dir_cohort: Vec<Request>,
}

impl Pipeline<'_> {
    /// Opens the request's temporary file and hands it to the ring.
    fn start(&mut self, r: Request) {
        let file = match new_file(&r.tmp) {
            Ok(f) => f,
            Err(e) => return fail(&r, e),
        };
        let job = Job {
            file,
            buf: r.buf.clone(),
        };
        match self.engine.start(job) {
            Ok(slot) => {
                if let Some(cell) = self.in_ring.get_mut(slot) {
                    *cell = Some(r);
                }
            }
            // No room or too large for one SQE: plain writes, here.
            Err(job) => match finish_plain(&job, 0) {
                Ok(()) => self.rename(r),
                Err(e) => fail(&r, e),
            },
        }
    }

    /// A job is back from the ring.
    fn synced(&mut self, slot: usize, job: &Job, write: io::Result<usize>, sync: io::Result<()>) {
        let Some(r) = self.in_ring.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let len = job.buf.len();
        let outcome = match (write, sync) {
            (Ok(n), Ok(())) if n == len => Ok(()),
            // Short write (the linked fsync was cancelled): finish it with
            // plain writes.
            (Ok(n), Err(e)) if n < len && e.raw_os_error() == Some(ECANCELED) => {
                finish_plain(job, n)
            }
            (Ok(n), Ok(())) => finish_plain(job, n),
            // A failed fsync is final: retrying it could report success
            // for pages already dropped.
            (Ok(_), Err(e)) | (Err(e), _) => Err(e),
        };
        match outcome {
            Ok(()) => self.rename(r),
            Err(e) => fail(&r, e),
        }
    }

    fn rename(&mut self, r: Request) {
        match fs::rename(&r.tmp, &r.fin) {
            Ok(()) => self.renamed.push(r),
            Err(e) => fail(&r, e),
        }
    }

    /// The directory fsync covering `dir_cohort` finished.
    fn dir_synced(&mut self, res: io::Result<()>) {
        for r in self.dir_cohort.drain(..) {
            let _ = r.reply.send(match &res {
                Ok(()) => Ok(()),
                Err(e) => {
                    // Not durable: undo, so a put reported failed does
                    // not come back after a crash.
                    let _ = fs::remove_file(&r.fin);
                    Err(SpoolError::Io {
                        path: self.shared.dir.clone(),
                        source: io::Error::new(e.kind(), e.to_string()),
                    })
                }
            });
        }
    }

    /// The ring failed: finish everything it held with plain writes.
    fn rescue(&mut self) {
        let mut todo: Vec<Request> = self.in_ring.iter_mut().filter_map(Option::take).collect();
        let mut files = Vec::new();
        for r in todo.drain(..) {
            match redo_plain(&r.tmp, &r.buf) {
                Ok(()) => files.push(r),
                Err(e) => fail(&r, e),
            }
        }
        let pairs: Vec<(&Path, &Path)> = files
            .iter()
            .map(|r| (r.tmp.as_path(), r.fin.as_path()))
            .collect();
        let results = commit(self.shared, &pairs);
        for (r, res) in files.iter().zip(results) {
            let _ = r.reply.send(res);
        }
        // Renamed ones only need the directory fsync.
        let waiting: Vec<Request> = self
            .dir_cohort
            .drain(..)
            .chain(self.renamed.drain(..))
            .collect();
        let res = self.shared.sync_dir();
        for r in waiting {
            let _ = r.reply.send(match &res {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = fs::remove_file(&r.fin);
                    Err(SpoolError::Io {
                        path: self.shared.dir.clone(),
                        source: io::Error::other(e.to_string()),
                    })
                }
            });
        }
    }
}

fn fail(r: &Request, e: io::Error) {
    let _ = fs::remove_file(&r.tmp);
    let _ = r.reply.send(Err(SpoolError::Io {
        path: r.tmp.clone(),
        source: e,
    }));
}

/// The writer thread: takes requests as they come, keeps the ring busy
/// (new writes go in while earlier ones sync), renames each synced file
/// and covers all renamed so far with one directory fsync at a time, then
/// answers each put. Runs until the spool is dropped and the ring is idle.
fn writer_loop(shared: &Shared, engine: Engine, rx: &Receiver<Request>) {
    let mut p = Pipeline {
        shared,
        in_ring: (0..engine.capacity()).map(|_| None).collect(),
        engine,
        renamed: Vec::new(),
        dir_cohort: Vec::new(),
    };
    let mut open = true;
    loop {
        if open && p.engine.idle() && p.renamed.is_empty() {
            match rx.recv() {
                Ok(r) => p.start(r),
                Err(_) => open = false,
            }
        }
        while open && p.engine.has_room() {
            match rx.try_recv() {
                Ok(r) => p.start(r),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => open = false,
            }
        }
        if !p.renamed.is_empty() && !p.engine.dir_sync_in_flight() && p.engine.start_dir_sync() {
            p.dir_cohort = std::mem::take(&mut p.renamed);
        }
        if p.engine.idle() {
            if !p.renamed.is_empty() {
                // The directory fsync could not be queued: do it here.
                p.dir_cohort = std::mem::take(&mut p.renamed);
                p.dir_synced(
                    shared
                        .sync_dir()
                        .map_err(|e| io::Error::other(e.to_string())),
                );
            }
            if !open {
                break;
            }
            continue;
        }
        let jobs_before = (p.engine.submissions, p.engine.jobs);
        let events = p.engine.wait();
        shared
            .batches
            .fetch_add(p.engine.submissions - jobs_before.0, Ordering::Relaxed);
        shared
            .batched_puts
            .fetch_add(p.engine.jobs - jobs_before.1, Ordering::Relaxed);
        match events {
            Ok(events) => {
                for ev in events {
                    match ev {
                        Event::Synced {
                            slot,
                            job,
                            write,
                            sync,
                        } => p.synced(slot, &job, write, sync),
                        Event::DirSynced(res) => p.dir_synced(res),
                    }
                }
            }
            Err(b) => {
                tracing::error!(error = %b.0, "spool: io_uring failed, plain writes from now on");
                *shared
                    .uring_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("io_uring failed at run time: {}", b.0));
                p.rescue();
                // Plain writes on this thread from now on.
                while let Ok(r) = rx.recv() {
                    let res = write_plain(shared, &r.tmp, &r.fin, &r.buf);
                    let _ = r.reply.send(res);
                }
                return;
            }
        }
    }
}

/// Completes a job from byte `from` and fdatasyncs it.
fn finish_plain(job: &Job, from: usize) -> io::Result<()> {
    let rest = job.buf.get(from..).unwrap_or_default();
    job.file.write_all_at(rest, from as u64)?;
    job.file.sync_data()
}

/// Writes a whole temporary file anew after the ring failed: unlinks the
/// old one first (the kernel may still write to its inode).
fn redo_plain(tmp: &Path, buf: &[u8]) -> io::Result<()> {
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = new_file(tmp)?;
    f.write_all(buf)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::output::queue::{Backoff, Failed, UploadQueue};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "kiroku-spool-{name}-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The backends to test: plain always, io_uring when it works here.
    fn backends() -> Vec<BackendChoice> {
        let mut v = vec![BackendChoice::Plain];
        let dir = File::open(std::env::temp_dir()).expect("temp dir");
        match Engine::probe(4, dir) {
            Ok(_) => v.push(BackendChoice::IoUring),
            Err(e) => eprintln!("io_uring unavailable here ({e}): testing plain writes only"),
        }
        v
    }

    fn open(dir: &Path, cap: u64, b: BackendChoice) -> Spool {
        Spool::open_with(dir, SpoolOptions::new(cap).backend(b)).expect("open")
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("dir")
            .filter_map(|d| d.ok()?.file_name().into_string().ok())
            .collect();
        v.sort();
        v
    }

    fn payload(n: usize, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + n * 7) as u8).collect()
    }

    #[test]
    fn put_read_remove_round_trip() {
        for b in backends() {
            let d = TempDir::new("rt");
            let s = open(&d.0, 1 << 20, b);
            assert_eq!(
                s.backend(),
                if b == BackendChoice::Plain {
                    "plain"
                } else {
                    "io_uring"
                }
            );
            let a = s.put("t1", "p/t1/a_1.ts", &payload(1, 1000)).expect("put");
            let p = s.put("t1", "p/t1/a.m3u8", b"#EXTM3U\n").expect("put");
            let e = s.put("t1", "p/t1/empty.ts", b"").expect("empty put");
            assert!(a < p && p < e);
            assert_eq!(s.read(a).expect("read"), payload(1, 1000));
            assert_eq!(s.read(p).expect("read"), b"#EXTM3U\n");
            assert!(s.read(e).expect("read").is_empty());
            let got = s.get(a).expect("entry");
            assert_eq!(
                (got.task.as_str(), got.key.as_str(), got.size),
                ("t1", "p/t1/a_1.ts", 1000)
            );
            let u = s.usage();
            assert_eq!(u.files, 3);
            assert!(u.bytes > 1008);
            assert_eq!(
                names(&d.0).len(),
                3,
                "no temporary files: {:?}",
                names(&d.0)
            );
            for id in [a, p, e] {
                s.remove(id).expect("remove");
            }
            assert!(matches!(s.read(a), Err(SpoolError::NotFound(_))));
            assert!(matches!(s.remove(a), Err(SpoolError::NotFound(_))));
            assert_eq!(s.usage().bytes, 0);
            assert!(names(&d.0).is_empty());
            assert!(matches!(
                s.put("t", "../x", b""),
                Err(SpoolError::BadKey(_))
            ));
        }
    }

    #[test]
    fn backends_write_identical_files() {
        let bs = backends();
        if bs.len() < 2 {
            eprintln!("skipped: io_uring unavailable here");
            return;
        }
        let mut files = Vec::new();
        for b in bs {
            let d = TempDir::new("same");
            let s = open(&d.0, 64 << 20, b);
            for n in 0..20 {
                let key = format!("p/t/seg_{n}.ts");
                s.put("task", &key, &payload(n, 1000 + n * 4096))
                    .expect("put");
            }
            s.put("task", "p/t/x.m3u8", b"#EXTM3U").expect("put");
            let all: Vec<(String, Vec<u8>)> = names(&d.0)
                .into_iter()
                .map(|n| {
                    let b = fs::read(d.0.join(&n)).expect("read");
                    (n, b)
                })
                .collect();
            assert_eq!(all.len(), 21);
            files.push(all);
        }
        assert!(files[0] == files[1], "io_uring and plain files differ");
    }

    #[test]
    fn recovery_after_crash_loses_and_duplicates_nothing() {
        let d = TempDir::new("crash");
        let (a, b) = {
            let s = open(&d.0, 1 << 20, BackendChoice::Plain);
            let a = s.put("t", "p/t/a_1.ts", b"segment").expect("put");
            let b = s.put("t", "p/t/a.m3u8", b"playlist").expect("put");
            let r = RetryState {
                attempts: 3,
                next_attempt_at: 12_345,
                last_error: Some("HTTP 503".into()),
            };
            s.set_retry(a, &r).expect("retry");
            (a, b)
        };
        // What a crash can leave: a half-written entry (its put never
        // returned), a retry state caught mid-replace (the temp file), a
        // torn state file, a state whose entry was removed.
        fs::write(d.0.join(format!("{:016x}.tmp", b + 1)), b"KRKSPOL1\x01\0").expect("w");
        fs::write(d.0.join(format!("{b:016x}.retry.tmp")), b"{\"attem").expect("w");
        fs::write(d.0.join(format!("{b:016x}.retry")), b"{\"attempts\":").expect("w");
        fs::write(d.0.join(format!("{:016x}.retry", b + 7)), b"{}").expect("w");
        fs::write(d.0.join("unrelated.txt"), b"x").expect("w");

        let s = open(&d.0, 1 << 20, BackendChoice::Plain);
        let rec = s.recovery().clone();
        assert_eq!(rec.entries, 2);
        assert_eq!(rec.temp_removed, 2);
        assert_eq!(rec.orphans_removed, 1);
        assert_eq!(rec.bad_retry_states, 1);
        let es = s.entries();
        assert_eq!(es.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a, b]);
        assert_eq!(es[0].retry.attempts, 3);
        assert_eq!(es[0].retry.next_attempt_at, 12_345);
        assert_eq!(
            es[1].retry,
            RetryState::default(),
            "torn state: no failures"
        );
        assert_eq!(s.read(a).expect("read"), b"segment");
        assert_eq!(s.read(b).expect("read"), b"playlist");
        // New ids never reuse one seen on disk, even a temporary one.
        let c = s.put("t", "p/t/a_2.ts", b"next").expect("put");
        assert!(c > b + 1);
        assert_eq!(
            names(&d.0),
            vec![
                format!("{a:016x}.ent"),
                format!("{a:016x}.retry"),
                format!("{b:016x}.ent"),
                format!("{b:016x}.retry"),
                format!("{c:016x}.ent"),
                "unrelated.txt".to_owned(),
            ]
        );
        // Removing the entry takes its state along.
        s.remove(a).expect("remove");
        assert!(!d.0.join(format!("{a:016x}.retry")).exists());
    }

    #[test]
    fn corrupt_entry_is_set_aside_not_served() {
        let d = TempDir::new("corrupt");
        let a = {
            let s = open(&d.0, 1 << 20, BackendChoice::Plain);
            s.put("t", "p/t/a.ts", b"0123456789").expect("put")
        };
        let path = d.0.join(format!("{a:016x}.ent"));
        let raw = fs::read(&path).expect("read");
        fs::write(&path, &raw[..raw.len() - 3]).expect("truncate");
        let s = open(&d.0, 1 << 20, BackendChoice::Plain);
        assert_eq!(s.recovery().corrupt.len(), 1);
        assert!(s.entries().is_empty());
        assert_eq!(s.usage().bytes, 0);
        assert!(d.0.join(format!("{a:016x}.corrupt")).exists());
    }

    #[test]
    fn capacity_exceeded_fails_that_put_only() {
        for b in backends() {
            let d = TempDir::new("cap");
            let one = encode("t1", "p/t1/s_0.ts", &[0; 1000]).len() as u64;
            let s = open(&d.0, 3 * one, b);
            let ids: Vec<EntryId> = (0..3)
                .map(|n| {
                    s.put("t1", &format!("p/t1/s_{n}.ts"), &[0; 1000])
                        .expect("put")
                })
                .collect();
            let err = s.put("t1", "p/t1/s_3.ts", &[0; 1000]).expect_err("full");
            assert!(err.is_full(), "{err}");
            match &err {
                SpoolError::Full {
                    task,
                    needed,
                    used,
                    capacity,
                    ..
                } => {
                    assert_eq!(task, "t1");
                    assert_eq!((*needed, *used, *capacity), (one, 3 * one, 3 * one));
                }
                other => panic!("{other}"),
            }
            // Small files of another task still fit nowhere; nothing was
            // left behind by the refused puts.
            assert!(s
                .put("t2", "p/t2/x.m3u8", b"#")
                .expect_err("full")
                .is_full());
            assert_eq!(s.usage().bytes, 3 * one);
            assert_eq!(names(&d.0).len(), 3);
            // Space frees: puts go on.
            s.remove(ids[0]).expect("remove");
            let t2 = s.put("t2", "p/t2/x.m3u8", b"#EXTM3U").expect("fits now");
            assert_eq!(s.read(t2).expect("read"), b"#EXTM3U");
            assert_eq!(s.usage().files, 3);
        }
    }

    #[test]
    fn concurrent_puts_from_eight_threads() {
        for b in backends() {
            let d = TempDir::new("conc");
            let s = Arc::new(open(&d.0, 1 << 30, b));
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let s = s.clone();
                    std::thread::spawn(move || {
                        (0..40)
                            .map(|n| {
                                let key = format!("p/t{t}/s_{n}.ts");
                                let id = s
                                    .put(&format!("t{t}"), &key, &payload(t * 100 + n, 5000 + n))
                                    .expect("put");
                                (id, t, n)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut all = Vec::new();
            for th in threads {
                let mine = th.join().expect("thread");
                // Per thread (per task), ids follow put order.
                assert!(mine.windows(2).all(|w| w[0].0 < w[1].0));
                all.extend(mine);
            }
            let mut ids: Vec<EntryId> = all.iter().map(|x| x.0).collect();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), 320);
            assert_eq!(s.entries().len(), 320);
            for (id, t, n) in all {
                assert_eq!(s.read(id).expect("read"), payload(t * 100 + n, 5000 + n));
                let e = s.get(id).expect("entry");
                assert_eq!(e.key, format!("p/t{t}/s_{n}.ts"));
            }
            assert_eq!(names(&d.0).len(), 320);
            let (batches, puts) = s.batching();
            if b == BackendChoice::IoUring {
                assert_eq!(puts, 320);
                eprintln!("io_uring: {puts} puts in {batches} submissions");
            }
        }
    }

    #[test]
    fn queue_state_survives_restart() {
        let d = TempDir::new("queue");
        let mut q = UploadQueue::new(Backoff {
            jitter: 0.0,
            ..Backoff::default()
        });
        let (seg, pl2, before) = {
            let s = open(&d.0, 1 << 20, BackendChoice::Plain);
            let seg = s.put("t", "p/t/a_1.ts", b"seg").expect("put");
            let pl1 = s.put("t", "p/t/a.m3u8", b"v1").expect("put");
            for e in [seg, pl1] {
                assert!(q.push(s.get(e).expect("entry")).superseded.is_empty());
            }
            let due = q.due(1_000);
            assert_eq!(due.len(), 1);
            let Failed::Retry(r) = q.failed(seg, 1_000, "HTTP 500") else {
                panic!("not retried")
            };
            s.set_retry(seg, &r).expect("persist");
            // A newer playlist arrives; the crash comes before the
            // superseded one is removed from the spool.
            let pl2 = s.put("t", "p/t/a.m3u8", b"v2").expect("put");
            assert_eq!(q.push(s.get(pl2).expect("entry")).superseded, vec![pl1]);
            (seg, pl2, q.get(seg).cloned())
        };
        let s = open(&d.0, 1 << 20, BackendChoice::Plain);
        let (mut q2, pushed) = UploadQueue::restore(q.backoff().clone(), s.entries());
        for id in pushed.superseded {
            s.remove(id).expect("remove superseded");
        }
        assert_eq!(s.entries().len(), 2);
        assert_eq!(q2.get(seg).cloned(), before, "attempts and schedule kept");
        assert_eq!(q2.len(), 2);
        // Resumes exactly: the segment at its retry time, then the newest
        // playlist.
        assert!(q2.due(1_999).is_empty());
        let due = q2.due(2_000);
        assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), vec![seg]);
        q2.succeeded(seg);
        s.remove(seg).expect("remove");
        let due = q2.due(2_000);
        assert_eq!(due.iter().map(|e| e.id).collect::<Vec<_>>(), vec![pl2]);
        assert_eq!(s.read(pl2).expect("read"), b"v2");
    }

    #[test]
    fn forced_backends() {
        let d = TempDir::new("force");
        let s = open(&d.0, 1, BackendChoice::Plain);
        assert_eq!(s.backend(), "plain");
        assert!(s.fallback_reason().is_some());
        drop(s);
        match Spool::open_with(&d.0, SpoolOptions::new(1).backend(BackendChoice::IoUring)) {
            Ok(s) => {
                assert_eq!(s.backend(), "io_uring");
                assert!(s.fallback_reason().is_none());
            }
            Err(SpoolError::UringUnavailable(e)) => eprintln!("io_uring unavailable here: {e}"),
            Err(e) => panic!("{e}"),
        }
        assert_eq!(BackendChoice::parse("PLAIN"), Some(BackendChoice::Plain));
        assert_eq!(
            BackendChoice::parse("io_uring"),
            Some(BackendChoice::IoUring)
        );
        assert_eq!(BackendChoice::parse("nope"), None);
    }

    const CHILD_DIR: &str = "KIROKU_SPOOL_TEST_CHILD_DIR";
    const CHILD_BACKEND: &str = "KIROKU_SPOOL_TEST_CHILD_BACKEND";

    /// The child of `kill_9_loses_nothing_acknowledged` (a no-op otherwise):
    /// puts until killed, printing each acknowledged put.
    #[test]
    fn kill_9_child() {
        let Ok(dir) = std::env::var(CHILD_DIR) else {
            return;
        };
        let b = std::env::var(CHILD_BACKEND)
            .ok()
            .and_then(|v| BackendChoice::parse(&v))
            .unwrap_or(BackendChoice::Plain);
        let s = Arc::new(open(Path::new(&dir), 1 << 40, b));
        let out = Arc::new(Mutex::new(io::stdout()));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (s, out) = (s.clone(), out.clone());
                std::thread::spawn(move || {
                    for n in 0.. {
                        let len = 1 + (n * 977 + t * 13) % 70_000;
                        let key = format!("p/t{t}/s_{n}.ts");
                        let id = s
                            .put(&format!("t{t}"), &key, &payload(n, len))
                            .expect("put");
                        let mut o = out.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = writeln!(o, "ACK {id} {t} {n} {len}");
                        let _ = o.flush();
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
    }

    #[test]
    fn kill_9_loses_nothing_acknowledged() {
        if std::env::var(CHILD_DIR).is_ok() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            eprintln!("skipped: no path to the test binary");
            return;
        };
        for b in backends() {
            let d = TempDir::new("kill9");
            fs::create_dir_all(&d.0).expect("mkdir");
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "output::spool::tests::kill_9_child",
                    "--nocapture",
                ])
                .env(CHILD_DIR, &d.0)
                .env(
                    CHILD_BACKEND,
                    if b == BackendChoice::Plain {
                        "plain"
                    } else {
                        "io_uring"
                    },
                )
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn child");
            let stdout = child.stdout.take().expect("stdout");
            let mut acked = Vec::new();
            for line in io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Some(rest) = line.strip_prefix("ACK ") else {
                    continue;
                };
                let f: Vec<usize> = rest.split(' ').filter_map(|x| x.parse().ok()).collect();
                assert_eq!(f.len(), 4, "{line}");
                acked.push((f[0] as EntryId, f[1], f[2], f[3]));
                if acked.len() == 150 {
                    child.kill().expect("kill -9");
                    break;
                }
            }
            let _ = child.wait();
            assert_eq!(acked.len(), 150, "child stopped early");
            let s = open(&d.0, 1 << 40, BackendChoice::Plain);
            let entries = s.entries();
            for &(id, t, n, len) in &acked {
                let e = s
                    .get(id)
                    .unwrap_or_else(|| panic!("acknowledged entry {id} lost"));
                assert_eq!(e.key, format!("p/t{t}/s_{n}.ts"));
                assert_eq!(s.read(id).expect("read"), payload(n, len));
            }
            // Puts cut short by the kill either finished whole or left
            // nothing; every key is there at most once.
            let mut keys: Vec<&str> = entries.iter().map(|e| e.key.as_str()).collect();
            let total = keys.len();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), total, "duplicated entries");
            assert!(total >= acked.len() && total <= acked.len() + 4 * 2);
            for e in &entries {
                assert_eq!(s.read(e.id).expect("read").len() as u64, e.size);
            }
            assert!(names(&d.0).iter().all(|n| n.ends_with(".ent")));
        }
    }
}
