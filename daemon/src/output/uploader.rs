//! The upload service: the IO edge between the spool and remote storage.
//!
//! Recorder threads write through [`SpoolStore`] (a [`Store`]): each file
//! is made durable in the [`Spool`] first, then queued. One async loop
//! hands due entries ([`UploadQueue`], the sans-IO schedule) to uploads
//! running on the runtime (network IO only; the spool's disk reads and
//! removals go to the blocking pool), at most `storage.upload_concurrency`
//! at once, and reports every outcome back to the queue and the spool.
//!
//! Each task with `CloudStorage` is registered with its bucket and the
//! context its callbacks need, persisted (sealed: it carries S3 keys) in
//! the state store's upload targets ([`TargetBook`]: redb on one box,
//! PostgreSQL in a fleet), so that after a crash (or after the task itself
//! has ended with files still stranded) the backlog still knows where to
//! go and whom to tell. A target is removed once its task has ended and
//! has nothing left in the spool. (Versions before the fleet kept them as
//! `targets/<TaskId>.json` beside the spool: moved into the store at
//! open.)
//!
//! What the service reports ([`UploadNotice`], turned into callbacks by
//! the task manager):
//! - a playlist's first successful upload (304);
//! - the first failure after a success, or ever, per task (308 with the
//!   storage service's Code and Message; every failure is counted in
//!   metrics, but one outage gives one callback, not one per retry);
//! - the last stranded file of an ended task uploaded (305 Status 2).
//!
//! [`UploadService::drain`] is how an ending task waits for its uploads:
//! all done (305 Status 0), or a timeout with files still stranded (305
//! Status 1; the uploads go on).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};

use super::queue::{Backoff, Entry, EntryId, Failed, Kind, UploadQueue};
use super::s3::{S3Target, S3Uploader, TargetError, UploadError};
use super::spool::{Spool, SpoolError, SpoolOptions};
use super::{Content, Store, StoreError};
use crate::clock;
use crate::config::StorageConfig;
use crate::domain::params::{CloudStorage, RoomId};
use crate::metrics::Metrics;
use crate::sealing::Sealer;
use crate::state::{RecordOwner, RecordSet, StateStore, StoreError as StateError};

/// Where a spool's upload targets are kept: the state store's
/// `upload_targets` records of the box whose spool it is (this box, or,
/// for a dead box's shared spool taken over, that box).
#[derive(Clone)]
pub struct TargetBook {
    store: Arc<StateStore>,
    node: Option<String>,
}

impl TargetBook {
    /// This box's targets.
    pub fn this_box(store: Arc<StateStore>) -> Self {
        Self { store, node: None }
    }

    /// The targets of box `node` of the fleet (its spool taken over).
    pub fn of_node(store: Arc<StateStore>, node: &str) -> Self {
        Self {
            store,
            node: Some(node.to_owned()),
        }
    }

    fn owner(&self) -> RecordOwner<'_> {
        match &self.node {
            Some(node) => RecordOwner::Node(node),
            None => RecordOwner::ThisBox,
        }
    }

    fn load(&self) -> Result<Vec<(String, Vec<u8>)>, StateError> {
        self.store.records(RecordSet::UploadTargets, self.owner())
    }

    fn put(&self, task_id: &str, sealed: &[u8]) -> Result<(), StateError> {
        self.store
            .put_record(RecordSet::UploadTargets, self.owner(), task_id, sealed)
    }

    fn remove(&self, task_id: &str) -> Result<(), StateError> {
        self.store
            .remove_record(RecordSet::UploadTargets, self.owner(), task_id)
    }
}

/// Who a task's callbacks are about (kept with the task's target, so that
/// callbacks can still be sent after the task itself is gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackContext {
    pub sdk_app_id: u32,
    pub room: RoomId,
    pub bot_user_id: String,
}

/// What the service tells the task manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadNotice {
    pub task_id: String,
    pub context: CallbackContext,
    pub kind: NoticeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoticeKind {
    /// A playlist reached the bucket for the first time (304).
    PlaylistUploaded { file_name: String },
    /// Uploads of the task started failing (308).
    UploadFailed { code: String, message: String },
    /// An ended task's stranded files are all uploaded now (305 Status 2).
    StrandedRecovered,
    /// This box no longer runs the task (another box of the fleet took it
    /// over while this one was down) and its spool still holds some of
    /// the task's files: they go up from here (305 Status 1, then 2).
    LeftBehind,
}

/// What [`UploadService::finish_foreign`] did with another box's spooled
/// files of one task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForeignDrain {
    pub uploaded: usize,
    pub bytes: u64,
    /// Files still in the other box's spool when the deadline passed.
    pub left: usize,
}

/// How an ending task's uploads finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Files still in the spool when the wait ended (0: all uploaded).
    pub stranded: usize,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadServiceError {
    #[error("opening the spool")]
    Spool(#[from] SpoolError),
    /// An upload target sealed with a key this daemon lacks: its files
    /// would sit in the spool for ever, so the daemon does not start.
    #[error("upload target of task {task_id}: {source}")]
    Sealed {
        task_id: String,
        #[source]
        source: crate::sealing::SealError,
    },
    #[error("upload targets in the state store")]
    State(#[from] StateError),
    #[error("encoding an upload target")]
    Encode(#[from] serde_json::Error),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An upload target, as JSON under its task id.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TargetRecord {
    task_id: String,
    context: CallbackContext,
    storage: CloudStorage,
    /// The task has ended (its recorder wrote its last file).
    finished: bool,
    /// It ended with files stranded: 305 Status 2 is owed once they are up.
    stranded: bool,
}

struct TaskUploads {
    record: TargetRecord,
    /// `None` when the target could not be built (logged; the files wait).
    uploader: Option<Arc<S3Uploader>>,
    failing: bool,
    uploaded_playlists: HashSet<String>,
}

#[derive(Clone)]
struct UploadMetrics {
    uploaded_files: IntCounter,
    uploaded_bytes: IntCounter,
    failures: IntCounterVec,
    pending_files: IntGauge,
    pending_bytes: IntGauge,
    stranded_files: IntGauge,
    spool_used_bytes: IntGauge,
    spool_capacity_bytes: IntGauge,
    spool_full: IntCounter,
    spool_backend: IntGaugeVec,
    targets: IntGauge,
    taken_over: IntCounter,
}

impl UploadMetrics {
    fn register(m: &Metrics) -> Self {
        use crate::metrics::{counter, counter_vec, gauge, gauge_vec};
        let r = m.registry();
        Self {
            uploaded_files: counter(r, "kiroku_upload_files_total", "Files uploaded to remote storage"),
            uploaded_bytes: counter(r, "kiroku_upload_bytes_total", "Bytes uploaded to remote storage"),
            failures: counter_vec(
                r,
                "kiroku_upload_failures_total",
                "Failed upload attempts by kind: transport (no answer), server (5xx), throttled (429/503), refused (other answers: bucket, keys, permissions), other",
                &["kind"],
            ),
            pending_files: gauge(
                r,
                "kiroku_upload_pending_files",
                "Files in the spool waiting for upload (in flight included)",
            ),
            pending_bytes: gauge(r, "kiroku_upload_pending_bytes", "Bytes in the spool waiting for upload"),
            stranded_files: gauge(
                r,
                "kiroku_upload_stranded_files",
                "Files whose upload failed storage.stranded_after_attempts times or more",
            ),
            spool_used_bytes: gauge(
                r,
                "kiroku_spool_used_bytes",
                "Bytes the spool holds (headers included)",
            ),
            spool_capacity_bytes: gauge(
                r,
                "kiroku_spool_capacity_bytes",
                "storage.spool_capacity_mb in bytes: the most the spool holds (kiroku_spool_used_bytes against it)",
            ),
            spool_full: counter(
                r,
                "kiroku_spool_full_total",
                "Files refused because the spool or its disk was full (each fails its task)",
            ),
            spool_backend: gauge_vec(
                r,
                "kiroku_spool_backend",
                "1 for the way the spool writes: io_uring, or plain (io_uring unavailable: see the start-up log)",
                &["backend"],
            ),
            taken_over: counter(
                r,
                "kiroku_upload_taken_over_files_total",
                "Files of a dead box's shared spool uploaded by this box (the box that took their task over)",
            ),
            targets: gauge(
                r,
                "kiroku_upload_targets",
                "Tasks whose files this box's spool holds or still expects (their upload targets, kept in the state store)",
            ),
        }
    }
}

struct Shared {
    spool: Spool,
    queue: Mutex<UploadQueue>,
    tasks: Mutex<HashMap<String, TaskUploads>>,
    /// Something to do: a new entry, a finished upload, a task draining.
    wake: Notify,
    book: TargetBook,
    config: StorageConfig,
    metrics: UploadMetrics,
    notices: mpsc::Sender<UploadNotice>,
    sealer: Arc<Sealer>,
    /// Tasks that had files in the spool when the service opened (before
    /// the restart): one this box no longer runs left them behind.
    /// (A task this box resumes registers again and leaves the set.)
    spooled_at_open: Mutex<HashSet<String>>,
}

/// Cheap to clone; all clones share one spool and queue.
#[derive(Clone)]
pub struct UploadService {
    shared: Arc<Shared>,
}

use crate::sync::lock;

fn error_kind_label(e: &UploadError) -> &'static str {
    use super::s3::ErrorKind as K;
    match (e.kind(), e.status()) {
        (K::Transport, _) => "transport",
        (K::Service, Some(429 | 503)) => "throttled",
        (K::Service, Some(s)) if s >= 500 => "server",
        (K::Service, _) => "refused",
        (K::InvalidKey | K::Other, _) => "other",
    }
}

impl UploadService {
    /// Opens the spool under `dir/spool` and the targets in `book`,
    /// restores the queue (entries left by a crash are uploaded again) and
    /// starts the upload loop on the current runtime. Targets carry
    /// customer S3 keys: `sealer` seals them at rest.
    pub fn open(
        dir: &Path,
        config: &StorageConfig,
        metrics: &Metrics,
        notices: mpsc::Sender<UploadNotice>,
        sealer: Arc<Sealer>,
        book: TargetBook,
    ) -> Result<UploadService, UploadServiceError> {
        let spool_dir = config
            .spool_dir
            .clone()
            .unwrap_or_else(|| dir.join("spool"));
        crate::output::durable::private_dir(&spool_dir).map_err(|source| {
            UploadServiceError::Io {
                what: "creating",
                path: spool_dir.clone(),
                source,
            }
        })?;
        let spool = Spool::open_with(spool_dir, SpoolOptions::new(config.spool_capacity_bytes))?;
        let metrics = UploadMetrics::register(metrics);
        metrics
            .spool_capacity_bytes
            .set(i64::try_from(config.spool_capacity_bytes).unwrap_or(i64::MAX));
        metrics
            .spool_backend
            .with_label_values(&[spool.backend()])
            .set(1);
        match spool.fallback_reason() {
            Some(why) => {
                tracing::warn!(backend = spool.backend(), reason = %why, "spool: io_uring unavailable, using plain writes")
            }
            None => {
                tracing::info!(backend = spool.backend(), dir = %spool.dir().display(), "spool opened")
            }
        }
        import_target_files(&dir.join("targets"), &book)?;
        let backoff = Backoff {
            base_ms: config.retry_base.as_millis() as u64,
            cap_ms: config.retry_max.as_millis() as u64,
            stranded_after: config.stranded_after_attempts,
            ..Backoff::default()
        };
        let (queue, pushed) = UploadQueue::restore(backoff, spool.entries());
        for id in pushed.superseded {
            if let Err(e) = spool.remove(id) {
                tracing::warn!(entry = id, error = %e, "removing a superseded spool entry");
            }
        }
        let mut tasks = HashMap::new();
        let mut stale = Vec::new();
        let mut spooled_at_open = HashSet::new();
        for (record, is_stale) in load_targets(&book, &sealer)? {
            if queue.pending_for(&record.task_id) > 0 {
                spooled_at_open.insert(record.task_id.clone());
            }
            if is_stale {
                stale.push(record.clone());
            }
            let uploader = build_uploader(&record.storage, config, &record.task_id);
            tasks.insert(
                record.task_id.clone(),
                TaskUploads {
                    record,
                    uploader,
                    failing: false,
                    uploaded_playlists: HashSet::new(),
                },
            );
        }
        if !queue.is_empty() {
            tracing::info!(
                files = queue.len(),
                bytes = queue.stats().pending_bytes,
                "spool holds files from before the restart; uploading them"
            );
        }
        let shared = Arc::new(Shared {
            spool,
            queue: Mutex::new(queue),
            tasks: Mutex::new(tasks),
            wake: Notify::new(),
            book,
            config: config.clone(),
            metrics,
            notices,
            sealer,
            spooled_at_open: Mutex::new(spooled_at_open),
        });
        // Sealed anew with the current key (rotation, or a key configured
        // since they were written).
        for record in &stale {
            if let Err(e) = shared.persist_target(record) {
                tracing::warn!(task_id = %record.task_id, error = %e, "could not seal an upload target anew");
            }
        }
        shared.publish_state();
        // Tasks that ended before the restart with nothing left finish now.
        let ended: Vec<String> = lock(&shared.tasks)
            .iter()
            .filter(|(_, t)| t.record.finished)
            .map(|(id, _)| id.clone())
            .collect();
        for task in ended {
            shared.finish_if_drained(&task);
        }
        tokio::spawn(run(shared.clone()));
        Ok(UploadService { shared })
    }

    /// Where the spool writes: `io_uring` or `plain`.
    pub fn spool_backend(&self) -> &'static str {
        self.shared.spool.backend()
    }

    /// Registers (or re-registers after a restart) a task that uploads to
    /// `storage`. The bucket is not contacted yet; `Err` means the target
    /// cannot work at all (callback 303 Status 1).
    pub fn register(
        &self,
        task_id: &str,
        context: CallbackContext,
        storage: &CloudStorage,
    ) -> Result<(), TargetError> {
        let target = S3Target::from_params(storage, &self.shared.config.s3)?;
        let uploader = Arc::new(S3Uploader::new(&target)?);
        lock(&self.shared.spooled_at_open).remove(task_id);
        tracing::info!(task_id, bucket = %target.bucket_url(), "task uploads to S3-compatible storage");
        let record = TargetRecord {
            task_id: task_id.to_owned(),
            context,
            storage: storage.clone(),
            finished: false,
            stranded: false,
        };
        if let Err(e) = self.shared.persist_target(&record) {
            // The files still upload while the daemon runs; only a crash
            // before they are up would leave them without a target.
            tracing::error!(task_id, error = %e, "could not persist the task's upload target");
        }
        let mut tasks = lock(&self.shared.tasks);
        let t = tasks
            .entry(task_id.to_owned())
            .or_insert_with(|| TaskUploads {
                record: record.clone(),
                uploader: None,
                failing: false,
                uploaded_playlists: HashSet::new(),
            });
        t.record = record;
        t.uploader = Some(uploader);
        drop(tasks);
        self.shared.publish_state();
        self.shared.wake.notify_one();
        Ok(())
    }

    /// The [`Store`] a registered task's recorder writes through.
    pub fn store(&self, task_id: &str) -> Arc<dyn Store> {
        Arc::new(SpoolStore {
            shared: self.shared.clone(),
            task_id: task_id.to_owned(),
        })
    }

    /// The tasks whose files this service still holds or expects (their
    /// upload targets), ended or not.
    pub fn targets(&self) -> Vec<String> {
        lock(&self.shared.tasks).keys().cloned().collect()
    }

    /// This box no longer runs `task_id` (another box took it over): what
    /// its spool holds of the task is uploaded from here, and the task
    /// counts as ended for this service: 305 Status 1 now if files wait,
    /// 305 Status 2 once they are up.
    pub fn let_go(&self, task_id: &str) {
        let pending = self.pending(task_id);
        let left_behind = lock(&self.shared.spooled_at_open).remove(task_id) || pending > 0;
        let context = {
            let mut tasks = lock(&self.shared.tasks);
            let Some(t) = tasks.get_mut(task_id) else {
                return;
            };
            if t.record.finished {
                return;
            }
            t.record.finished = true;
            t.record.stranded = left_behind;
            if let Err(e) = self.shared.persist_target(&t.record) {
                tracing::error!(task_id, error = %e, "could not persist the task's upload target");
            }
            t.record.context.clone()
        };
        if left_behind {
            tracing::warn!(
                task_id,
                files = pending,
                "files of a task this box no longer runs were left in its spool; uploading them"
            );
            self.shared
                .notify(task_id, &context, NoticeKind::LeftBehind);
            lock(&self.shared.queue).retry_now(task_id, clock::unix_ms());
            self.shared.wake.notify_one();
        }
        self.shared.finish_if_drained(task_id);
    }

    /// A fleet's shared spool: uploads what the spools of other boxes
    /// (`dirs`) hold of `task_id` — a task this box takes over from a box
    /// that died before uploading it — to the task's bucket, oldest first,
    /// and removes each file once it is up. Failed uploads are retried
    /// until `deadline`; what is left then stays for that box to upload
    /// if it comes back.
    pub async fn finish_foreign(
        &self,
        task_id: &str,
        storage: &CloudStorage,
        dirs: Vec<PathBuf>,
        deadline: Duration,
    ) -> ForeignDrain {
        let mut done = ForeignDrain::default();
        let uploader = match S3Target::from_params(storage, &self.shared.config.s3)
            .and_then(|t| S3Uploader::new(&t))
        {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(task_id, error = %e, "the task's storage target is unusable; another box's spooled files of it stay");
                return done;
            }
        };
        let until = tokio::time::Instant::now() + deadline;
        for dir in dirs {
            let listing = {
                let (dir, task) = (dir.clone(), task_id.to_owned());
                tokio::task::spawn_blocking(move || super::spool::foreign_entries(&dir, &task))
                    .await
            };
            let entries = match listing {
                Ok(Ok(entries)) => entries,
                Ok(Err(e)) => {
                    tracing::warn!(task_id, dir = %dir.display(), error = %e, "reading another box's spool");
                    continue;
                }
                Err(_) => continue,
            };
            for entry in entries {
                if !entry.superseded
                    && !upload_until(&uploader, &entry, until, &self.shared.metrics).await
                {
                    done.left += 1;
                    continue;
                }
                if !entry.superseded {
                    done.uploaded += 1;
                    done.bytes += entry.payload_len;
                }
                let e = entry.clone();
                match tokio::task::spawn_blocking(move || e.remove()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(task_id, key = %entry.key, error = %err, "removing another box's uploaded spool file")
                    }
                    Err(_) => {}
                }
            }
        }
        if done.uploaded > 0 || done.left > 0 {
            self.shared.metrics.taken_over.inc_by(done.uploaded as u64);
            tracing::info!(
                task_id,
                files = done.uploaded,
                bytes = done.bytes,
                left = done.left,
                "uploaded what a dead box's spool held of a task taken over"
            );
        }
        done
    }

    /// Files of `task_id` not uploaded yet.
    pub fn pending(&self, task_id: &str) -> usize {
        lock(&self.shared.queue).pending_for(task_id)
    }

    /// Waits (at most `timeout`) for every file of an ended task to be
    /// uploaded. Files still waiting then are *stranded*: they keep being
    /// retried, and once the last is up the service reports
    /// [`NoticeKind::StrandedRecovered`].
    pub async fn drain(&self, task_id: &str, timeout: Duration) -> Drained {
        lock(&self.shared.queue).retry_now(task_id, clock::unix_ms());
        self.shared.wake.notify_one();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let pending = self.pending(task_id);
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                let stranded = pending > 0;
                {
                    let mut tasks = lock(&self.shared.tasks);
                    if let Some(t) = tasks.get_mut(task_id) {
                        t.record.finished = true;
                        t.record.stranded = stranded;
                        if stranded {
                            if let Err(e) = self.shared.persist_target(&t.record) {
                                tracing::error!(task_id, error = %e, "could not persist the task's upload target");
                            }
                        }
                    }
                }
                if stranded {
                    tracing::warn!(
                        task_id,
                        files = pending,
                        "task ended with files not uploaded yet; they stay in the spool and are retried"
                    );
                } else {
                    self.shared.finish_if_drained(task_id);
                }
                return Drained { stranded: pending };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Shared {
    fn persist_target(&self, record: &TargetRecord) -> Result<(), UploadServiceError> {
        let json = serde_json::to_vec(record)?;
        // Targets carry customer S3 keys: sealed at rest.
        let data = self
            .sealer
            .seal(&target_context(&record.task_id), &json)
            .map_err(|source| UploadServiceError::Sealed {
                task_id: record.task_id.clone(),
                source,
            })?;
        Ok(self.book.put(&record.task_id, &data)?)
    }

    /// An ended task with nothing left: its target goes; 305 Status 2 if
    /// it had ended with files stranded.
    fn finish_if_drained(&self, task_id: &str) {
        if lock(&self.queue).pending_for(task_id) > 0 {
            return;
        }
        let done = {
            let mut tasks = lock(&self.tasks);
            match tasks.get(task_id) {
                Some(t) if t.record.finished => tasks.remove(task_id),
                _ => None,
            }
        };
        let Some(t) = done else {
            return;
        };
        self.publish_state();
        if let Err(e) = self.book.remove(task_id) {
            tracing::warn!(task_id, error = %e, "removing the task's upload target");
        }
        if t.record.stranded {
            tracing::info!(
                task_id,
                "stranded files of an ended task are all uploaded now"
            );
            self.notify(task_id, &t.record.context, NoticeKind::StrandedRecovered);
        }
    }

    fn notify(&self, task_id: &str, context: &CallbackContext, kind: NoticeKind) {
        let notice = UploadNotice {
            task_id: task_id.to_owned(),
            context: context.clone(),
            kind,
        };
        if let Err(e) = self.notices.try_send(notice) {
            // The manager drains this channel continuously; full means it
            // is stuck on the state store, closed means shutdown.
            tracing::warn!(task_id, error = %e, "upload notice dropped");
        }
    }

    fn publish_state(&self) {
        let stats = lock(&self.queue).stats();
        let m = &self.metrics;
        m.pending_files.set(stats.pending_files as i64);
        m.pending_bytes.set(stats.pending_bytes as i64);
        m.stranded_files
            .set(stats.stranded.values().sum::<usize>() as i64);
        m.spool_used_bytes.set(self.spool.usage().bytes as i64);
        m.targets.set(lock(&self.tasks).len() as i64);
    }

    /// The outcome of one upload attempt.
    fn finished_upload(&self, entry: &Entry, result: Result<(), UploadError>) {
        match result {
            Ok(()) => {
                if let Err(e) = self.spool.remove(entry.id) {
                    tracing::warn!(entry = entry.id, key = %entry.key, error = %e, "removing an uploaded file from the spool");
                }
                lock(&self.queue).succeeded(entry.id);
                self.metrics.uploaded_files.inc();
                self.metrics.uploaded_bytes.inc_by(entry.size);
                let mut first_playlist = None;
                let context = {
                    let mut tasks = lock(&self.tasks);
                    tasks.get_mut(&entry.task).map(|t| {
                        t.failing = false;
                        if entry.kind == Kind::Playlist {
                            let name = file_name(&entry.key).to_owned();
                            if t.uploaded_playlists.insert(name.clone()) {
                                first_playlist = Some(name);
                            }
                        }
                        t.record.context.clone()
                    })
                };
                if let (Some(file_name), Some(context)) = (first_playlist, context) {
                    self.notify(
                        &entry.task,
                        &context,
                        NoticeKind::PlaylistUploaded { file_name },
                    );
                }
                self.finish_if_drained(&entry.task);
            }
            Err(e) => {
                self.metrics
                    .failures
                    .with_label_values(&[error_kind_label(&e)])
                    .inc();
                let outcome = lock(&self.queue).failed(entry.id, clock::unix_ms(), &e.to_string());
                match outcome {
                    Failed::Retry(state) => {
                        tracing::warn!(task_id = %entry.task, key = %entry.key, attempts = state.attempts,
                            retry_in_ms = state.next_attempt_at.saturating_sub(clock::unix_ms()), code = e.code(), error = %e, "upload failed; will retry");
                        if let Err(err) = self.spool.set_retry(entry.id, &state) {
                            tracing::warn!(entry = entry.id, error = %err, "persisting retry state");
                        }
                    }
                    Failed::Superseded => {
                        let _ = self.spool.remove(entry.id);
                    }
                    Failed::Unknown => {}
                }
                let first = {
                    let mut tasks = lock(&self.tasks);
                    tasks.get_mut(&entry.task).and_then(|t| {
                        (!std::mem::replace(&mut t.failing, true)).then(|| t.record.context.clone())
                    })
                };
                if let Some(context) = first {
                    self.notify(
                        &entry.task,
                        &context,
                        NoticeKind::UploadFailed {
                            code: e.code().to_owned(),
                            message: e.message().to_owned(),
                        },
                    );
                }
            }
        }
        self.publish_state();
    }
}

fn file_name(key: &str) -> &str {
    key.rsplit_once('/').map(|(_, f)| f).unwrap_or(key)
}

fn build_uploader(
    storage: &CloudStorage,
    config: &StorageConfig,
    task_id: &str,
) -> Option<Arc<S3Uploader>> {
    match S3Target::from_params(storage, &config.s3).and_then(|t| S3Uploader::new(&t)) {
        Ok(u) => Some(Arc::new(u)),
        Err(e) => {
            tracing::error!(task_id, error = %e, "a spooled task's storage target is unusable; its files stay in the spool");
            None
        }
    }
}

fn target_context(task_id: &str) -> String {
    format!("target:{task_id}")
}

/// Moves the target files of versions before the fleet
/// (`targets/<TaskId>.json`, sealed as they are) into `book`, then removes
/// them.
fn import_target_files(dir: &Path, book: &TargetBook) -> Result<(), UploadServiceError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| UploadServiceError::Io { what, path, source }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stem = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned);
        match (path.extension().and_then(|e| e.to_str()), stem) {
            (Some("json"), Some(task_id)) => {
                let data = std::fs::read(&path).map_err(io("reading", &path))?;
                book.put(&task_id, &data)?;
                std::fs::remove_file(&path).map_err(io("removing", &path))?;
                tracing::info!(task_id, "upload target moved into the state store");
            }
            _ => std::fs::remove_file(&path).map_err(io("removing", &path))?,
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "removing the old upload targets folder");
    }
    Ok(())
}

/// The targets in `book`, each with whether it is to be sealed anew; one
/// sealed with a key this daemon lacks is an error (like a task record).
fn load_targets(
    book: &TargetBook,
    sealer: &Sealer,
) -> Result<Vec<(TargetRecord, bool)>, UploadServiceError> {
    let mut out = Vec::new();
    for (task_id, data) in book.load()? {
        let opened = match sealer.open(&target_context(&task_id), &data) {
            Err(
                source @ (crate::sealing::SealError::UnknownKey { .. }
                | crate::sealing::SealError::NoKey { .. }),
            ) => return Err(UploadServiceError::Sealed { task_id, source }),
            other => other,
        };
        match opened.map_err(|e| e.to_string()).and_then(|o| {
            serde_json::from_slice::<TargetRecord>(&o.plain)
                .map(|r| (r, o.stale))
                .map_err(|e| e.to_string())
        }) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::error!(task_id, error = %e, "unreadable upload target; its task's files stay in the spool")
            }
        }
    }
    Ok(out)
}

/// Uploads one of another box's spooled files, retrying (200 ms doubling
/// to 2 s) until `until`; whether it is up.
async fn upload_until(
    uploader: &S3Uploader,
    entry: &super::spool::ForeignEntry,
    until: tokio::time::Instant,
    metrics: &UploadMetrics,
) -> bool {
    let mut wait = Duration::from_millis(200);
    loop {
        let result = uploader
            .put_from_file(
                &entry.key,
                &entry.path,
                entry.payload_offset,
                entry.payload_len,
            )
            .await;
        match result {
            Ok(()) => {
                metrics.uploaded_files.inc();
                metrics.uploaded_bytes.inc_by(entry.payload_len);
                return true;
            }
            Err(e) => {
                metrics
                    .failures
                    .with_label_values(&[error_kind_label(&e)])
                    .inc();
                if !entry.path.exists() || tokio::time::Instant::now() + wait > until {
                    tracing::warn!(key = %entry.key, error = %e, "another box's spooled file not uploaded");
                    return false;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The upload loop: hands due entries to uploads, sleeps until the next
/// retry or until something changes.
async fn run(shared: Arc<Shared>) {
    let limit = shared.config.upload_concurrency;
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        let free = limit.saturating_sub(in_flight.load(std::sync::atomic::Ordering::Acquire));
        let due = lock(&shared.queue).due_at_most(clock::unix_ms(), free);
        for entry in due {
            let uploader = lock(&shared.tasks)
                .get(&entry.task)
                .and_then(|t| t.uploader.clone());
            in_flight.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            let (shared, in_flight) = (shared.clone(), in_flight.clone());
            tokio::spawn(async move {
                let result = upload_one(&shared, &entry, uploader).await;
                let s = shared.clone();
                // Spool removal and retry state touch the disk.
                let _ =
                    tokio::task::spawn_blocking(move || s.finished_upload(&entry, result)).await;
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
                shared.wake.notify_one();
            });
        }
        let saturated = in_flight.load(std::sync::atomic::Ordering::Acquire) >= limit;
        let next = lock(&shared.queue).next_attempt_at();
        let now = clock::unix_ms();
        let wait = match next {
            // Every slot busy, or everything due waits behind an upload in
            // flight (a playlist behind its segments, a key's newer
            // version): only an upload's end changes that, and it wakes
            // the loop. Polling here every 10 ms rescanned a backlog of
            // tens of thousands under the queue's lock 100 times a second.
            _ if saturated => Duration::from_secs(1),
            Some(at) if at <= now => Duration::from_secs(1),
            Some(at) => Duration::from_millis((at - now).clamp(10, 60_000)),
            None => Duration::from_secs(60),
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        if shared.notices.is_closed() {
            return;
        }
    }
}

async fn upload_one(
    shared: &Arc<Shared>,
    entry: &Entry,
    uploader: Option<Arc<S3Uploader>>,
) -> Result<(), UploadError> {
    let Some(uploader) = uploader else {
        return Err(UploadError::no_target(&entry.key));
    };
    let id: EntryId = entry.id;
    let (path, offset, len) = shared
        .spool
        .payload_location(id)
        .map_err(|e| UploadError::local(&entry.key, e.to_string()))?;
    if !path.exists() {
        // A fleet's shared spool: the box that took the task over while
        // this one was paused or partitioned uploaded it and removed it.
        tracing::info!(task_id = %entry.task, key = %entry.key,
            "a spooled file was uploaded by the box that took its task over");
        return Ok(());
    }
    // Read in parts for large files (long MP4s): an upload holds a few
    // parts in memory, not the whole file.
    uploader.put_from_file(&entry.key, &path, offset, len).await
}

/// A task's recorder writes here: durable in the spool when `put` returns,
/// uploaded later.
struct SpoolStore {
    shared: Arc<Shared>,
    task_id: String,
}

impl Store for SpoolStore {
    fn put_content(&self, key: &str, content: Content<'_>) -> Result<(), StoreError> {
        let id = match self.shared.spool.put_content(&self.task_id, key, content) {
            Ok(id) => id,
            Err(e) if e.is_full() => {
                self.shared.metrics.spool_full.inc();
                return Err(StoreError::Full(e.to_string()));
            }
            Err(e) => return Err(StoreError::Spool(e)),
        };
        let size = self.shared.spool.get(id).map_or(0, |e| e.size);
        let pushed =
            lock(&self.shared.queue).push(Entry::new(id, self.task_id.as_str(), key, size));
        for old in pushed.superseded {
            if let Err(e) = self.shared.spool.remove(old) {
                tracing::warn!(entry = old, error = %e, "removing a superseded spool entry");
            }
        }
        self.shared.publish_state();
        self.shared.wake.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::params::Vendor;

    fn target(task_id: &str) -> TargetRecord {
        TargetRecord {
            task_id: task_id.to_owned(),
            context: CallbackContext {
                sdk_app_id: 1400000001,
                room: RoomId::Int(7),
                bot_user_id: "bot".to_owned(),
            },
            storage: CloudStorage {
                vendor: Vendor::AwsS3,
                region: "us-east-1".to_owned(),
                bucket: "rec".to_owned(),
                access_key: "AKID".to_owned(),
                secret_key: "secret".to_owned(),
                file_name_prefix: Vec::new(),
            },
            finished: false,
            stranded: false,
        }
    }

    /// A service on `dir` with its targets in `store` (the notice channel's
    /// receiver kept alive beside it).
    fn open_service(
        dir: &Path,
        store: &Arc<StateStore>,
    ) -> (UploadService, mpsc::Receiver<UploadNotice>) {
        let (tx, rx) = mpsc::channel(16);
        let service = UploadService::open(
            dir,
            &crate::config::Config::embedded_defaults().storage,
            &Metrics::new(),
            tx,
            Arc::new(Sealer::none()),
            TargetBook::this_box(store.clone()),
        )
        .expect("open");
        (service, rx)
    }

    fn state_store(dir: &Path) -> Arc<StateStore> {
        Arc::new(
            StateStore::open(&dir.join("state.redb"), Arc::new(Sealer::none())).expect("store"),
        )
    }

    /// Targets that a version before the fleet left as
    /// `targets/<TaskId>.json` are moved into the state store at open, and
    /// found there after the next restart.
    #[tokio::test]
    async fn target_files_of_older_versions_move_into_the_state_store() {
        let dir = tempfile::tempdir().expect("dir");
        let store = state_store(dir.path());
        let legacy = dir.path().join("targets");
        std::fs::create_dir_all(&legacy).expect("targets");
        let json = serde_json::to_vec(&target("old-task")).expect("json");
        std::fs::write(legacy.join("old-task.json"), json).expect("write");
        std::fs::write(legacy.join("half.json.tmp"), b"{").expect("write");

        let (service, _rx) = open_service(dir.path(), &store);
        assert!(!legacy.exists(), "the old folder is gone");
        let kept = store
            .records(RecordSet::UploadTargets, RecordOwner::ThisBox)
            .expect("records");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].0, "old-task");
        assert_eq!(service.targets(), vec!["old-task".to_owned()]);
        drop(service);
        let (again, _rx) = open_service(dir.path(), &store);
        assert_eq!(again.targets(), vec!["old-task".to_owned()]);
    }

    /// A task registered stays in the store until it ends with nothing
    /// left, across a restart of the service.
    #[tokio::test]
    async fn a_registered_target_survives_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let store = state_store(dir.path());
        let (service, _rx) = open_service(dir.path(), &store);
        let t = target("live-task");
        service
            .register("live-task", t.context.clone(), &t.storage)
            .expect("register");
        drop(service);
        let (again, _rx) = open_service(dir.path(), &store);
        assert_eq!(again.targets(), vec!["live-task".to_owned()]);
    }
}
