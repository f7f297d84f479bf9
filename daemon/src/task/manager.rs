//! The task manager: every live task, its runner, and the API operations.
//!
//! ```text
//!   Create ──▶ Idle ──(first media)──▶ InProgress
//!                │                         │
//!                └──── Delete / idle / ────┴──▶ Exited ──(files finished)──▶ removed
//!                      same bot UserId
//! ```
//!
//! *Settings vs. state*: a task's `RecordingSpec` changes only through
//! Modify; its `TaskState` through the transitions above. Every transition
//! is committed to the store together with the callbacks it causes (301 on
//! create, 302 on stop) before the API answers.
//!
//! *Locking*: one async mutex (`State`) serialises mutations, including the
//! store commit, so the live-task count, the store and the outbox never
//! disagree. It is never held while waiting on anything but the store.
//!
//! Each task has a runner (a tokio task: it only waits on timers and
//! channels, no media work) that applies the MaxIdleTime rule, owns the
//! task's recorder thread (single-stream: `record::worker`), turns what the
//! recorder reports into state changes and callbacks (303 at start, 307 per
//! first segment, 304 per stored playlist, 305 at the end), and once the
//! task is Exited and its files are closed, finishes it.
//!
//! After a daemon restart a task resumes with a new recorder whose files
//! carry the spec's `ha<n>_` prefix (n = restarts, at most 3), so nothing
//! written before is overwritten; callback 306 says so.

use crate::mix::address_policy::AddressPolicy;
use crate::mix::fetch::ImageClient;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};

use super::error::TaskError;
use crate::clock;
use crate::config::Config;
use crate::domain::params::{MixLayout, Modification, RecordingSpec, Storage, Subscription};
use crate::domain::task::{LeaveCode, StorageFile, TaskRecord, TaskState};
use crate::metrics::Metrics;
use crate::notify::deliver::Outbox;
use crate::notify::event::{self, EventSubject, EventType};
use crate::output::local::LocalStore;
use crate::output::uploader::{CallbackContext, NoticeKind, UploadNotice, UploadService};
use crate::output::vod::VodStore;
use crate::output::TeeStore;
use crate::record::action::FileInfo;
use crate::record::build::RecorderFactory;
use crate::record::worker::{RecorderEvent, RecorderMetrics};
use crate::room::{Registry, RoomKey};
use crate::state::{Change, NewCallback, StateStore};
use crate::task::lifecycle::{self, Event, Transition};
use crate::task::outputs::OutputPlan;

/// What DescribeCloudRecording answers.
#[derive(Debug, Clone)]
pub struct TaskStatus {
    pub task_id: String,
    pub status: &'static str,
    pub files: Vec<StorageFile>,
}

#[derive(Debug)]
pub(super) enum Control {
    /// Finish the task (it is already Exited in the store).
    Stop,
    /// Modify replaced the subscription lists.
    Subscription(Subscription),
    /// Modify replaced the mixed layout.
    Layout(MixLayout),
    /// The daemon stops: close the files, keep the task for the restart.
    Shutdown,
}

pub(super) struct Live {
    pub(super) record: Arc<TaskRecord>,
    pub(super) control: mpsc::Sender<Control>,
    pub(super) runner: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) tasks: HashMap<String, Live>,
    /// The newest ended tasks ([`ENDED_KEPT`]), for the console.
    pub(super) ended: std::collections::VecDeque<(Arc<TaskRecord>, u64)>,
}

/// What readers see of [`State`] (see [`Inner::view`]).
#[derive(Default)]
pub(super) struct View {
    pub(super) tasks: HashMap<String, Arc<TaskRecord>>,
    pub(super) ended: std::collections::VecDeque<(Arc<TaskRecord>, u64)>,
}

/// Ended tasks the console can still list (their files stay on disk).
const ENDED_KEPT: usize = 100;

/// A task as the console lists it: live, or ended at `ended_ms`.
#[derive(Debug, Clone)]
pub struct TaskOverview {
    pub record: Arc<TaskRecord>,
    pub ended_ms: Option<u64>,
}

pub(super) struct Inner {
    pub(super) config: Arc<Config>,
    pub(super) rooms: Arc<Registry>,
    pub(super) store: Arc<StateStore>,
    pub(super) outbox: Outbox,
    pub(super) metrics: Metrics,
    pub(super) recorders: RecorderFactory,
    pub(super) storage: Arc<dyn crate::output::Store>,
    /// HLS kept for end-of-task packing (`data_dir/staging`).
    pub(super) staging: Arc<LocalStore>,
    pub(super) uploads: UploadService,
    pub(super) vod: Arc<VodStore>,
    /// For layout images.
    /// Layout images, only from addresses `[fetch]` allows.
    pub(super) http: ImageClient,
    /// Where a recorder that is down (restarting) is reported.
    pub(super) health: Arc<crate::health::Health>,
    /// Places for end-of-task packing jobs (`limits.packing_jobs`).
    pub(super) packing: Arc<tokio::sync::Semaphore>,
    /// Admission by cost and each task's measured load.
    pub(super) capacity: Arc<crate::capacity::Capacity>,
    /// Held by every change from its read to its commit (the commit
    /// waits on fsync): changes to the tasks are serialised by it.
    pub(super) state: Mutex<State>,
    /// The live tasks' records as last committed, for readers (Describe,
    /// the console, the fleet's checks): they never wait behind a commit
    /// (Describe's p99 was 45–215 ms under load while it took `state`).
    /// Rebuilt from `state` after each change, under it.
    pub(super) view: std::sync::RwLock<Arc<View>>,
}

/// The output services the manager hands tasks to.
pub struct Outputs {
    pub uploads: UploadService,
    /// What the upload service reports (turned into callbacks).
    pub notices: mpsc::Receiver<UploadNotice>,
    pub vod: Arc<VodStore>,
}

/// How long a task taken over waits, at most, for another box's spooled
/// files of it to be uploaded before it runs (`finish_foreign_spools`).
const FOREIGN_SPOOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Cheap to clone; all clones share the same tasks.
#[derive(Clone)]
pub struct Manager {
    pub(super) inner: Arc<Inner>,
}

fn new_task_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

impl Manager {
    /// Creates the manager and brings back every task the store holds.
    #[allow(clippy::too_many_arguments)] // the daemon's parts, wired once
    pub async fn start(
        config: Arc<Config>,
        store: Arc<StateStore>,
        records: Vec<TaskRecord>,
        outbox: Outbox,
        metrics: Metrics,
        rooms: Arc<Registry>,
        outputs: Outputs,
        health: Arc<crate::health::Health>,
        capacity: Arc<crate::capacity::Capacity>,
    ) -> Self {
        let recorders = RecorderFactory::new(
            config.recording.clone(),
            rooms.clone(),
            RecorderMetrics::register(&metrics),
            capacity.loads().clone(),
        );
        capacity.compositor_in_use(recorders.compositor_kind());
        let storage = Arc::new(LocalStore::new(config.data_dir.join("storage")));
        let staging = Arc::new(LocalStore::new(config.data_dir.join("staging")));
        // The box's own listeners are never image servers (unless allowed).
        let own: Vec<std::net::IpAddr> = std::iter::once(config.server.listen.ip())
            .chain(std::iter::once(config.ingest.udp_listen.ip()))
            .chain(config.ingest.advertised_addresses.iter().copied())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        let http = ImageClient::new(AddressPolicy::new(config.fetch.allow.clone(), own));
        let packing = Arc::new(tokio::sync::Semaphore::new(config.limits.packing_jobs));
        // Payloads a packing job was spilling when the daemon stopped: only
        // ever copies (the job runs again from the recording).
        let scratch = config.data_dir.join("packing");
        if let Err(e) = crate::output::spill::clear(&scratch) {
            tracing::warn!(dir = %scratch.display(), error = %e, "clearing the packing scratch folder");
        }
        let mgr = Manager {
            inner: Arc::new(Inner {
                config,
                rooms,
                store,
                outbox,
                metrics,
                recorders,
                storage,
                staging,
                uploads: outputs.uploads,
                vod: outputs.vod,
                packing,
                http,
                health,
                capacity,
                state: Mutex::new(State::default()),
                view: std::sync::RwLock::default(),
            }),
        };
        tokio::spawn(upload_notices(Arc::downgrade(&mgr.inner), outputs.notices));
        mgr.adopt(records, "task restored from the state store")
            .await;
        // Upload targets of tasks not restored here: in a fleet, tasks
        // another box took over while this one was down.
        let live: std::collections::HashSet<String> =
            mgr.inner.state.lock().await.tasks.keys().cloned().collect();
        for task_id in mgr.inner.uploads.targets() {
            if !live.contains(&task_id) {
                mgr.inner.uploads.let_go(&task_id);
            }
        }
        mgr
    }

    /// Runs tasks that were running elsewhere: restored at start, or taken
    /// over from a box of the fleet that died. Each resumes under the next
    /// `ha<n>_` name (nothing the previous run wrote is overwritten) with
    /// callback 306; a task that was ending finishes. Tasks already live
    /// here are left alone.
    pub async fn adopt(&self, records: Vec<TaskRecord>, why: &'static str) {
        self.finish_foreign_spools(&records).await;
        let mut st = self.inner.state.lock().await;
        for mut record in records {
            if st.tasks.contains_key(&record.task_id) {
                continue;
            }
            let exiting = matches!(record.state, TaskState::Exited { .. });
            let task_id = record.task_id.clone();
            if !exiting {
                record.restarts = record.restarts.saturating_add(1);
                let callbacks = self
                    .callback(&record, event::failover(0), clock::unix_ms())
                    .into_iter()
                    .collect();
                if self
                    .commit(Change {
                        put_task: Some(&record),
                        callbacks,
                        ..Change::default()
                    })
                    .await
                    .is_err()
                {
                    tracing::error!(task_id = %task_id, "could not record the restart of a resumed task");
                }
            }
            self.recover_journal(&record).await;
            let (control, runner) = self.spawn_runner(&record);
            if exiting {
                let _ = control.try_send(Control::Stop);
            }
            tracing::info!(task_id = %task_id, state = record.state.api_status(), restarts = record.restarts, "{why}");
            st.tasks.insert(
                task_id,
                Live {
                    record: Arc::new(record),
                    control,
                    runner: Some(runner),
                },
            );
        }
        self.publish_state(&st);
    }

    /// A fleet's shared spool (`cluster.shared_dir`): before tasks taken
    /// over run here, what the other boxes' spools still hold of them is
    /// uploaded (the box that died had not), oldest first, so that the
    /// bucket has everything before the recovered open segments and the
    /// `ha<n>_` files follow. All tasks at once, for at most
    /// [`FOREIGN_SPOOL_WAIT`] (or `storage.drain_timeout` if shorter):
    /// what the bucket refuses meanwhile waits for its box to come back.
    async fn finish_foreign_spools(&self, records: &[TaskRecord]) {
        let dirs = self.inner.config.cluster.other_shared_spools();
        if dirs.is_empty() {
            return;
        }
        let wait = FOREIGN_SPOOL_WAIT.min(self.inner.config.storage.drain_timeout);
        let uploads = &self.inner.uploads;
        let drains = records.iter().filter_map(|r| match &r.spec.storage {
            Storage::Cloud(cloud) => {
                Some(uploads.finish_foreign(&r.task_id, cloud, dirs.clone(), wait))
            }
            Storage::Local | Storage::Vod(_) => None,
        });
        futures_util::future::join_all(drains).await;
    }

    /// Finishes the segments the task's previous run had open when it
    /// died, from their journal (`record::journal`), before the task runs
    /// again: each is cut to its last whole frame, stored, and closes its
    /// playlist. A failure is logged; the journal stays for the next try.
    async fn recover_journal(&self, record: &TaskRecord) {
        let dir = self
            .inner
            .config
            .recording
            .journal_dir
            .join(&record.task_id);
        if !dir.exists() {
            return;
        }
        let store = match self.recorder_store(record) {
            Ok(s) => s,
            Err(why) => {
                tracing::warn!(task_id = %record.task_id, error = %why, "open segments not recovered: no store");
                return;
            }
        };
        let task_id = record.task_id.clone();
        let recovered =
            tokio::task::spawn_blocking(move || crate::record::journal::recover(&dir, &*store))
                .await;
        match recovered {
            Ok(Ok(segments)) => {
                for s in &segments {
                    tracing::warn!(task_id = %task_id, segment = %s.file_name, playlist = %s.playlist_file_name,
                        seconds = s.seconds, "open segment recovered from the journal");
                }
            }
            Ok(Err(e)) => {
                tracing::error!(task_id = %task_id, error = %e, "open segments not recovered")
            }
            Err(e) => {
                tracing::error!(task_id = %task_id, error = %e, "open segments not recovered")
            }
        }
    }

    /// The store a task's recorder writes its HLS to: the task's storage
    /// when HLS is one of its outputs, plus staging when the files are
    /// packed at the end and no local folder keeps them.
    pub(super) fn recorder_store(
        &self,
        record: &TaskRecord,
    ) -> Result<Arc<dyn crate::output::Store>, String> {
        let plan = OutputPlan::of(&record.spec);
        let mut stores: Vec<Arc<dyn crate::output::Store>> = Vec::new();
        if plan.hls {
            stores.push(self.storage_of(record)?);
        } else if let Storage::Cloud(_) = record.spec.storage {
            // Packed files are uploaded: the bucket must work from the start.
            self.storage_of(record)?;
        }
        if plan.staging {
            stores.push(self.inner.staging.clone());
        }
        Ok(Arc::new(TeeStore::new(stores)))
    }

    /// Where a task's finished files go: local storage, or its bucket
    /// through the spool. (VOD tasks never write here: their HLS goes to
    /// staging and their MP4s to the VOD store.)
    fn storage_of(&self, record: &TaskRecord) -> Result<Arc<dyn crate::output::Store>, String> {
        match &record.spec.storage {
            Storage::Local | Storage::Vod(_) => Ok(self.inner.storage.clone()),
            Storage::Cloud(cloud) => {
                self.inner
                    .uploads
                    .register(&record.task_id, callback_context(&record.spec), cloud)
                    .map_err(|e| format!("the storage target is unusable: {e}"))?;
                Ok(self.inner.uploads.store(&record.task_id))
            }
        }
    }

    /// The live tasks as last committed (see [`Inner::view`]).
    fn view(&self) -> Arc<View> {
        let guard = self
            .inner
            .view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(&guard)
    }

    /// After each change of `st`: the readers' view, the task gauges and
    /// the capacity ledger follow it.
    fn publish_state(&self, st: &State) {
        let view = View {
            tasks: st
                .tasks
                .iter()
                .map(|(id, l)| (id.clone(), Arc::clone(&l.record)))
                .collect(),
            ended: st.ended.clone(),
        };
        *self
            .inner
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(view);
        let (mut idle, mut progress, mut exited) = (0, 0, 0);
        for live in st.tasks.values() {
            match live.record.state {
                TaskState::Idle => idle += 1,
                TaskState::InProgress => progress += 1,
                TaskState::Exited { .. } => exited += 1,
            }
        }
        let g = &self.inner.metrics.tasks;
        g.with_label_values(&["idle"]).set(idle);
        g.with_label_values(&["in_progress"]).set(progress);
        g.with_label_values(&["exited"]).set(exited);
        // The capacity ledger counts what runs: a task stops counting once
        // it is Exited (Delete has answered), and its load record goes
        // when it leaves.
        let running = st
            .tasks
            .values()
            .filter(|l| !matches!(l.record.state, TaskState::Exited { .. }))
            .map(|l| {
                let spec = &l.record.spec;
                (l.record.task_id.as_str(), spec)
            });
        let capacity = &self.inner.capacity;
        capacity.sync(
            running,
            |spec| self.publishers(spec),
            |task_id| st.tasks.contains_key(task_id),
        );
    }

    /// The users publishing in a task's room now, as (audio+video, audio
    /// only, video only): what a new task there will record.
    fn publishers(&self, spec: &RecordingSpec) -> (u32, u32, u32) {
        let key = RoomKey {
            sdk_app_id: spec.sdk_app_id,
            room: spec.room.clone(),
        };
        let (mut av, mut audio, mut video) = (0u32, 0u32, 0u32);
        for (_, tracks) in self.inner.rooms.snapshot(&key) {
            let a = tracks.iter().any(|t| !t.kind.is_video());
            let v = tracks.iter().any(|t| t.kind.is_video());
            match (a, v) {
                (true, true) => av = av.saturating_add(1),
                (true, false) => audio = audio.saturating_add(1),
                (false, true) => video = video.saturating_add(1),
                (false, false) => {}
            }
        }
        (av, audio, video)
    }

    /// A live task's record, as last committed.
    pub(super) fn record_of(&self, task_id: &str) -> Option<Arc<TaskRecord>> {
        self.view().tasks.get(task_id).cloned()
    }

    /// Whether the task is live on this box.
    pub fn runs(&self, task_id: &str) -> bool {
        self.view().tasks.contains_key(task_id)
    }

    /// Live tasks, newest first, then the newest ended ones.
    pub fn overview(&self) -> Vec<TaskOverview> {
        let view = self.view();
        let mut live: Vec<TaskOverview> = view
            .tasks
            .values()
            .map(|record| TaskOverview {
                record: Arc::clone(record),
                ended_ms: None,
            })
            .collect();
        live.sort_by_key(|t| std::cmp::Reverse(t.record.created_ms));
        live.extend(view.ended.iter().map(|(record, at)| TaskOverview {
            record: Arc::clone(record),
            ended_ms: Some(*at),
        }));
        live
    }

    /// Number of live tasks (for systemd STATUS= and logs).
    pub fn live_count(&self) -> usize {
        self.view().tasks.len()
    }

    fn callback(
        &self,
        record: &TaskRecord,
        (ty, payload): (EventType, serde_json::Value),
        now: u64,
    ) -> Option<NewCallback> {
        new_callback(
            &self.inner.config,
            &record.task_id,
            &callback_context(&record.spec),
            (ty, payload),
            now,
        )
    }

    async fn commit(&self, change: Change<'_>) -> Result<(), TaskError> {
        // The store blocks on fsync; keep it off the runtime's workers.
        let store = self.inner.store.clone();
        let put = change.put_task.cloned();
        let remove = change.remove_task.map(str::to_owned);
        let callbacks = change.callbacks;
        let result = tokio::task::spawn_blocking(move || {
            store.apply(Change {
                put_task: put.as_ref(),
                remove_task: remove.as_deref(),
                callbacks,
            })
        })
        .await;
        match result {
            Ok(Ok(queued)) => {
                self.inner.outbox.queued(queued);
                Ok(())
            }
            Ok(Err(crate::state::StoreError::Fenced { task_id, owner })) => {
                tracing::warn!(task_id = %task_id, owner = %owner, "another box of the fleet took this task over: this box lets it go");
                self.let_go(&task_id);
                Err(TaskError::Fenced { task_id })
            }
            Ok(Err(e)) => {
                self.inner.metrics.store_errors.inc();
                tracing::error!(error = ?e, "state store commit failed");
                Err(TaskError::Store)
            }
            Err(e) => {
                self.inner.metrics.store_errors.inc();
                tracing::error!(error = %e, "state store task panicked");
                Err(TaskError::Store)
            }
        }
    }

    /// Fleet mode: the task runs on another box now. Its runner is told to
    /// stop (the recorder closes its files here) and, once the task leaves
    /// the table, nothing more is committed or sent for it. Runs on its
    /// own task: the caller may hold the manager's lock.
    /// Ids of the live tasks that are not ending (what this box claims to
    /// run; the fleet checks them against the database).
    pub fn running_task_ids(&self) -> Vec<String> {
        self.view()
            .tasks
            .iter()
            .filter(|(_, r)| !matches!(r.state, TaskState::Exited { .. }))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Fleet mode: another box runs the task now (it took it over while
    /// this box could not reach the database): its recorder stops and it
    /// leaves this box, which writes nothing more for it.
    pub fn let_go(&self, task_id: &str) {
        let (mgr, task_id) = (self.clone(), task_id.to_owned());
        tokio::spawn(async move {
            let mut st = mgr.inner.state.lock().await;
            if let Some(live) = st.tasks.remove(&task_id) {
                let _ = live.control.try_send(Control::Stop);
                mgr.inner.metrics.tasks_fenced.inc();
            }
            mgr.publish_state(&st);
        });
    }

    /// CreateCloudRecording (the spec is already validated and authorised).
    pub async fn create(&self, spec: RecordingSpec) -> Result<String, TaskError> {
        let mut st = self.inner.state.lock().await;
        // A new task whose bot UserId is already in the room replaces the
        // old one, as TRTC does (302 LeaveCode 101 for the old task).
        let displaced: Option<String> = st
            .tasks
            .values()
            .find(|l| {
                l.record.spec.sdk_app_id == spec.sdk_app_id
                    && l.record.spec.room == spec.room
                    && l.record.spec.bot_user_id == spec.bot_user_id
                    && !matches!(l.record.state, TaskState::Exited { .. })
            })
            .map(|l| l.record.task_id.clone());
        // A task that is Exited (Delete answered, its files closing) no
        // longer counts: a Create right after a Delete is admitted.
        let is_running = |l: &&Live| !matches!(l.record.state, TaskState::Exited { .. });
        let live_now = st.tasks.values().filter(is_running).count();
        let live_after = live_now + 1 - usize::from(displaced.is_some());
        if live_after > self.inner.config.limits.max_tasks {
            self.inner
                .metrics
                .tasks_refused
                .with_label_values(&["max_tasks"])
                .inc();
            return Err(TaskError::Concurrency {
                running: live_now,
                limit: self.inner.config.limits.max_tasks,
            });
        }
        let app_limit = self
            .inner
            .config
            .app(spec.sdk_app_id)
            .and_then(|a| a.max_tasks);
        if let Some(limit) = app_limit {
            let running = st
                .tasks
                .values()
                .filter(is_running)
                .filter(|l| l.record.spec.sdk_app_id == spec.sdk_app_id)
                .count();
            if running + 1 - usize::from(displaced.is_some()) > limit {
                self.inner
                    .metrics
                    .tasks_refused
                    .with_label_values(&["app_max_tasks"])
                    .inc();
                return Err(TaskError::AppConcurrency {
                    sdk_app_id: spec.sdk_app_id,
                    running,
                    limit,
                });
            }
        }
        // Admission by cost: what this task will cost beside the running
        // ones (a displaced task's cost is freed).
        let shape = crate::capacity::Capacity::shape(&spec, self.publishers(&spec));
        let admitted = match &displaced {
            Some(old) => self.inner.capacity.admit_replacing(&shape, old),
            None => self.inner.capacity.admit(&shape),
        };
        if let Err(full) = admitted {
            self.inner
                .metrics
                .tasks_refused
                .with_label_values(&["capacity"])
                .inc();
            tracing::warn!(error = %full, "task refused: the box is full");
            return Err(TaskError::Capacity(full.to_string()));
        }
        if let Some(old) = displaced {
            self.stop_locked(&mut st, &old, LeaveCode::SameUserIdEntered, None)
                .await?;
        }
        // Read the clock after any displaced task stopped, so that its 302
        // is never later than this task's 301.
        let now = clock::unix_ms();
        let record = TaskRecord {
            task_id: new_task_id(),
            spec,
            state: TaskState::Idle,
            created_ms: now,
            files: Vec::new(),
            restarts: 0,
        };
        let callbacks = self
            .callback(&record, event::recorder_start(0), now)
            .into_iter()
            .collect();
        self.commit(Change {
            put_task: Some(&record),
            callbacks,
            ..Change::default()
        })
        .await?;
        self.inner.capacity.add(
            &record.task_id,
            record.spec.sdk_app_id,
            record.spec.room.to_string(),
            shape,
        );
        let (control, runner) = self.spawn_runner(&record);
        let task_id = record.task_id.clone();
        tracing::info!(task_id = %task_id, sdk_app_id = record.spec.sdk_app_id, room = %record.spec.room,
            mode = ?record.spec.record.mode, "recording task created");
        st.tasks.insert(
            task_id.clone(),
            Live {
                record: Arc::new(record),
                control,
                runner: Some(runner),
            },
        );
        self.inner.metrics.tasks_started.inc();
        self.publish_state(&st);
        Ok(task_id)
    }

    /// The live task for an API call, or `TaskNotExist` (unknown, ended,
    /// another app's, or past its ResourceExpiredHour).
    fn lookup<'a>(
        &self,
        st: &'a State,
        sdk_app_id: u32,
        task_id: &str,
        now: u64,
    ) -> Result<&'a Live, TaskError> {
        let live = st.tasks.get(task_id);
        open_to(live.map(|l| &*l.record), sdk_app_id, task_id, now)?;
        live.ok_or_else(|| TaskError::NotFound {
            task_id: task_id.to_owned(),
            sdk_app_id,
        })
    }

    /// DescribeCloudRecording, from the view: it never waits behind a
    /// commit.
    pub fn describe(&self, sdk_app_id: u32, task_id: &str) -> Result<TaskStatus, TaskError> {
        let view = self.view();
        let record = view.tasks.get(task_id).map(|r| &**r);
        let record = open_to(record, sdk_app_id, task_id, clock::unix_ms())?;
        Ok(TaskStatus {
            task_id: record.task_id.clone(),
            status: record.state.api_status(),
            files: record.files.clone(),
        })
    }

    /// ModifyCloudRecording. `validate` turns the raw request into a
    /// modification against the task's own parameters (its errors are the
    /// caller's own, passed through).
    pub async fn modify<E: From<TaskError>>(
        &self,
        sdk_app_id: u32,
        task_id: &str,
        validate: impl FnOnce(&RecordingSpec) -> Result<Modification, E>,
    ) -> Result<(), E> {
        // One lock from the lookup to the in-memory change: a task event
        // queued meanwhile must see the record with the Modify, or its
        // commit would write the old parameters back.
        let mut st = self.inner.state.lock().await;
        let live = self.lookup(&st, sdk_app_id, task_id, clock::unix_ms())?;
        if matches!(live.record.state, TaskState::Exited { .. }) {
            return Err(TaskError::Exiting {
                task_id: task_id.to_owned(),
            }
            .into());
        }
        let change = validate(&live.record.spec)?;
        let mut record = TaskRecord::clone(&live.record);
        if let Some(sub) = &change.subscription {
            record.spec.record.subscription = sub.clone();
        }
        if let (Some(layout), Some(mix)) = (&change.layout, record.spec.mix.as_mut()) {
            mix.layout = layout.clone();
        }
        self.commit(Change {
            put_task: Some(&record),
            ..Change::default()
        })
        .await?;
        if let Some(live) = st.tasks.get_mut(task_id) {
            if let Some(sub) = change.subscription {
                let _ = live.control.try_send(Control::Subscription(sub));
            }
            if let (Some(new), Some(mix)) =
                (record.spec.mix.as_ref(), live.record.spec.mix.as_ref())
            {
                if new.layout != mix.layout {
                    let _ = live.control.try_send(Control::Layout(new.layout.clone()));
                }
            }
            live.record = Arc::new(record);
        }
        self.publish_state(&st);
        tracing::info!(task_id, "recording task modified");
        Ok(())
    }

    pub async fn delete(&self, sdk_app_id: u32, task_id: &str) -> Result<(), TaskError> {
        let mut st = self.inner.state.lock().await;
        self.lookup(&st, sdk_app_id, task_id, clock::unix_ms())?;
        self.stop_locked(&mut st, task_id, LeaveCode::ApiStop, None)
            .await
    }

    /// Stops a task for `reason` (idempotent once it is Exited).
    pub(super) async fn stop(&self, task_id: &str, reason: LeaveCode) -> Result<(), TaskError> {
        let mut st = self.inner.state.lock().await;
        self.stop_locked(&mut st, task_id, reason, None).await
    }

    /// A stop the daemon decides itself (a full disk, a recorder that
    /// cannot go on): a commit that fails is retried with backoff, as
    /// [`Self::task_event`] does, until the task stops or is gone. Nobody
    /// is waiting on an answer, and the task must not go on recording.
    pub(super) async fn stop_retrying(&self, task_id: &str, reason: LeaveCode, why: Option<&str>) {
        let mut wait = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            let stopped = {
                let mut st = self.inner.state.lock().await;
                self.stop_locked(&mut st, task_id, reason, why).await
            };
            if matches!(stopped, Ok(()) | Err(TaskError::Fenced { .. })) {
                return;
            }
            failures = failures.saturating_add(1);
            self.inner.metrics.commit_retries.inc();
            tracing::error!(
                task_id,
                failures,
                retry_in_ms = wait.as_millis() as u64,
                "the task's stop could not be committed; retrying"
            );
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    async fn stop_locked(
        &self,
        st: &mut State,
        task_id: &str,
        reason: LeaveCode,
        why: Option<&str>,
    ) -> Result<(), TaskError> {
        let Some(live) = st.tasks.get(task_id) else {
            return Ok(());
        };
        let Transition::To(next_state) = lifecycle::next(live.record.state, Event::Stop(reason))
        else {
            return Ok(());
        };
        let now = clock::unix_ms();
        let mut record = TaskRecord::clone(&live.record);
        record.state = next_state;
        let (ty, mut payload) = event::recorder_stop(reason);
        if let (Some(why), Some(fields)) = (why, payload.as_object_mut()) {
            fields.insert("Reason".into(), serde_json::Value::from(why));
        }
        let callbacks = self
            .callback(&record, (ty, payload), now)
            .into_iter()
            .collect();
        self.commit(Change {
            put_task: Some(&record),
            callbacks,
            ..Change::default()
        })
        .await?;
        tracing::info!(task_id, reason = reason.label(), "recording task stopping");
        self.inner
            .metrics
            .tasks_stopped
            .with_label_values(&[reason.label()])
            .inc();
        if let Some(live) = st.tasks.get_mut(task_id) {
            live.record = Arc::new(record);
            let _ = live.control.try_send(Control::Stop);
        }
        self.publish_state(st);
        Ok(())
    }

    /// Applies `change` to a live task's record and queues `callback`, in
    /// one commit. Nothing happens for a task that is gone.
    ///
    /// A commit that fails (a full disk, a failing store) is retried with
    /// backoff until it succeeds or the task is gone: a callback is never
    /// dropped. The manager's lock is not held while waiting, so the API
    /// and other tasks go on; this task's runner waits.
    pub(super) async fn task_event(
        &self,
        task_id: &str,
        change: impl Fn(&mut TaskRecord),
        callback: Option<(EventType, serde_json::Value)>,
    ) {
        let mut wait = Duration::from_millis(100);
        let mut failures = 0u32;
        loop {
            match self
                .try_task_event(task_id, &change, callback.clone())
                .await
            {
                Ok(()) | Err(TaskError::Fenced { .. }) => return,
                Err(_) => {}
            }
            failures = failures.saturating_add(1);
            self.inner.metrics.commit_retries.inc();
            tracing::error!(task_id, failures, retry_in_ms = wait.as_millis() as u64,
                "a task's change and its callback could not be committed; retrying (nothing is dropped)");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }

    async fn try_task_event(
        &self,
        task_id: &str,
        change: &impl Fn(&mut TaskRecord),
        callback: Option<(EventType, serde_json::Value)>,
    ) -> Result<(), TaskError> {
        let mut st = self.inner.state.lock().await;
        let Some(live) = st.tasks.get(task_id) else {
            return Ok(());
        };
        let mut record = TaskRecord::clone(&live.record);
        change(&mut record);
        let changed = record != *live.record;
        let now = clock::unix_ms();
        let callbacks: Vec<NewCallback> = callback
            .and_then(|c| self.callback(&record, c, now))
            .into_iter()
            .collect();
        if !changed && callbacks.is_empty() {
            return Ok(());
        }
        self.commit(Change {
            put_task: changed.then_some(&record),
            callbacks,
            ..Change::default()
        })
        .await?;
        if let Some(live) = st.tasks.get_mut(task_id) {
            live.record = Arc::new(record);
        }
        self.publish_state(&st);
        Ok(())
    }

    pub(super) async fn recorder_event(
        &self,
        task_id: &str,
        e: RecorderEvent,
        plan: &OutputPlan,
        storage: &Storage,
    ) {
        let storage_file = |f: &FileInfo| StorageFile {
            user_id: f.user_id.clone(),
            file_name: f.file_name.clone(),
            track_type: f.track_type.api_name().to_owned(),
            begin_time_stamp: f.begin_ms,
        };
        match e {
            RecorderEvent::MediaStarted => {
                self.task_event(
                    task_id,
                    |r| {
                        if let Transition::To(s) = lifecycle::next(r.state, Event::MediaStarted) {
                            r.state = s;
                        }
                    },
                    None,
                )
                .await;
            }
            RecorderEvent::FileSliced(f) => {
                let cb = event::file_slice(
                    &f.file_name,
                    &f.user_id,
                    f.track_type.api_name(),
                    f.begin_ms,
                );
                self.task_event(task_id, |_| {}, Some(cb)).await;
            }
            RecorderEvent::PlaylistStored(f) => {
                // VOD tasks list no files; formats without HLS store no
                // playlists (the recorder's go to staging only).
                if !plan.hls {
                    return;
                }
                let file = storage_file(&f);
                // A local file is in its storage now; a bucket's playlist is
                // reported by the upload service after its first upload.
                let info =
                    matches!(storage, Storage::Local).then(|| event::file_info(&f.file_name));
                self.task_event(
                    task_id,
                    |r| {
                        if !r.files.iter().any(|x| x.file_name == file.file_name) {
                            r.files.push(file.clone());
                        }
                    },
                    info,
                )
                .await;
            }
            RecorderEvent::StorageFull { error } => {
                tracing::error!(
                    task_id,
                    error,
                    "storage full: the task stops (other tasks go on recording)"
                );
                self.task_event(
                    task_id,
                    |_| {},
                    Some(event::upload_error("LocalStorageFull", &error)),
                )
                .await;
                self.stop_retrying(task_id, LeaveCode::BotKickedByServer, None)
                    .await;
            }
            RecorderEvent::Finished { .. } => {}
        }
    }

    /// Daemon shutdown: every recorder closes its files (tasks stay in the
    /// store and resume after the restart). Waits at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let runners: Vec<tokio::task::JoinHandle<()>> = {
            let mut st = self.inner.state.lock().await;
            st.tasks
                .values_mut()
                .filter_map(|l| {
                    let _ = l.control.try_send(Control::Shutdown);
                    l.runner.take()
                })
                .collect()
        };
        let all = async {
            for r in runners {
                let _ = r.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "some recorders did not close their files in time"
            );
        }
        let inner = self.inner.clone();
        let _ =
            tokio::task::spawn_blocking(move || inner.recorders.release(Duration::from_secs(5)))
                .await;
    }

    /// Drain: stops the recorders of a room's tasks as a shutdown does
    /// (their files closed and kept, their records left in the store) and
    /// lets the tasks go from this box, so that another can take them;
    /// returns their ids.
    pub async fn hand_off_room(&self, sdk_app_id: u32, room: &str, grace: Duration) -> Vec<String> {
        let (ids, runners): (Vec<String>, Vec<tokio::task::JoinHandle<()>>) = {
            let mut st = self.inner.state.lock().await;
            let ids: Vec<String> = st
                .tasks
                .iter()
                .filter(|(_, l)| {
                    l.record.spec.sdk_app_id == sdk_app_id && l.record.spec.room.fleet_key() == room
                })
                .map(|(id, _)| id.clone())
                .collect();
            let mut runners = Vec::new();
            for id in &ids {
                if let Some(live) = st.tasks.get_mut(id) {
                    let _ = live.control.try_send(Control::Shutdown);
                    runners.extend(live.runner.take());
                }
            }
            (ids, runners)
        };
        // The tasks stay in the table until their recorders have reported
        // their last files (the records then hold them).
        let all = async {
            for r in runners {
                let _ = r.await;
            }
        };
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout_at(deadline, all).await.is_err() {
            tracing::warn!(
                sdk_app_id,
                room,
                "some recorders of a handed-off room did not close their files in time"
            );
        }
        // Their files in the upload spool go up before the box leaves.
        while ids.iter().any(|id| self.inner.uploads.pending(id) > 0) {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(sdk_app_id, room, "a handed-off room's files are still in the upload spool: they go up when this box is back");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut st = self.inner.state.lock().await;
        for id in &ids {
            st.tasks.remove(id);
            self.inner.uploads.let_go(id);
        }
        self.publish_state(&st);
        ids
    }

    /// Called by the runner once an Exited task has nothing left to do.
    pub(super) async fn finish(&self, task_id: &str) {
        let mut st = self.inner.state.lock().await;
        let Some(live) = st.tasks.get(task_id) else {
            return;
        };
        if lifecycle::next(live.record.state, Event::Finished) != Transition::Remove {
            return;
        }
        if self
            .commit(Change {
                remove_task: Some(task_id),
                ..Change::default()
            })
            .await
            .is_err()
        {
            // Left in the store as Exited: the next start finishes it.
            return;
        }
        if let Some(live) = st.tasks.remove(task_id) {
            st.ended.push_front((live.record, clock::unix_ms()));
            st.ended.truncate(ENDED_KEPT);
        }
        self.publish_state(&st);
        tracing::info!(task_id, "recording task ended");
    }
}

pub(super) fn callback_context(spec: &RecordingSpec) -> CallbackContext {
    CallbackContext {
        sdk_app_id: spec.sdk_app_id,
        room: spec.room.clone(),
        bot_user_id: spec.bot_user_id.clone(),
    }
}

/// A signed callback of `task_id` to its app's callback URL (`None` when
/// the app has none).
fn new_callback(
    config: &Config,
    task_id: &str,
    context: &CallbackContext,
    (ty, payload): (EventType, serde_json::Value),
    now: u64,
) -> Option<NewCallback> {
    let target = config.app(context.sdk_app_id)?.callback.as_ref()?;
    let subject = EventSubject {
        room: &context.room,
        bot_user_id: &context.bot_user_id,
        task_id,
    };
    let body = event::body(ty, &subject, payload, now);
    Some(NewCallback {
        task_id: task_id.to_owned(),
        sdk_app_id: context.sdk_app_id,
        event_type: ty as u32,
        url: target.url.clone(),
        sign: event::sign(&target.key, &body),
        body,
        created_ms: now,
    })
}

/// Turns what the upload service reports into callbacks, in order. The
/// task may be gone already (files uploaded after it ended), so the
/// callback's subject comes with the notice.
async fn upload_notices(inner: std::sync::Weak<Inner>, mut notices: mpsc::Receiver<UploadNotice>) {
    while let Some(n) = notices.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mgr = Manager { inner };
        let ev = match &n.kind {
            NoticeKind::PlaylistUploaded { file_name } => event::file_info(file_name),
            NoticeKind::UploadFailed { code, message } => event::upload_error(code, message),
            NoticeKind::StrandedRecovered => event::upload_stop(2),
            NoticeKind::LeftBehind => event::upload_stop(1),
        };
        let Some(cb) = new_callback(
            &mgr.inner.config,
            &n.task_id,
            &n.context,
            ev,
            clock::unix_ms(),
        ) else {
            continue;
        };
        // Serialised with task changes, so a task's callbacks keep their order.
        let _st = mgr.inner.state.lock().await;
        if mgr
            .commit(Change {
                callbacks: vec![cb],
                ..Change::default()
            })
            .await
            .is_err()
        {
            tracing::error!(task_id = %n.task_id, "an upload callback could not be queued");
        }
    }
}

/// `record` for an API call of `sdk_app_id`, or `TaskNotExist` (unknown,
/// ended, another app's), or `Expired` past its ResourceExpiredHour.
fn open_to<'a>(
    record: Option<&'a TaskRecord>,
    sdk_app_id: u32,
    task_id: &str,
    now: u64,
) -> Result<&'a TaskRecord, TaskError> {
    let record = record
        .filter(|r| r.spec.sdk_app_id == sdk_app_id)
        .ok_or_else(|| TaskError::NotFound {
            task_id: task_id.to_owned(),
            sdk_app_id,
        })?;
    let hours = record.spec.resource_expired_hours;
    let expires = record
        .created_ms
        .saturating_add(u64::from(hours).saturating_mul(3_600_000));
    if now >= expires {
        return Err(TaskError::Expired {
            task_id: task_id.to_owned(),
            hours,
        });
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{model, validate};
    use crate::domain::params::{UserFilter, UserPattern};
    use crate::room::{DropReason, RoomObserver, TrackKind};

    struct NoObserver;
    impl RoomObserver for NoObserver {
        fn frame_dropped(&self, _r: DropReason) {}
        fn keyframe_wanted(&self, _s: &str, _k: TrackKind) {}
    }

    /// A manager on a fresh store in its own folder (removed on drop).
    struct Fixture {
        mgr: Manager,
        store: Arc<StateStore>,
        dir: std::path::PathBuf,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn fixture(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("kiroku-mgr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let store = Arc::new(
            StateStore::open(
                &dir.join("state.redb"),
                Arc::new(crate::sealing::Sealer::none()),
            )
            .expect("store"),
        );
        let metrics = Metrics::new();
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut config = Config::embedded_defaults();
        config.data_dir = dir.clone();
        let config = Arc::new(config);
        let (outbox, _worker) = crate::notify::deliver::start(
            store.clone(),
            Vec::new(),
            config.callbacks,
            metrics.clone(),
            stop_rx,
        );
        let rooms = Arc::new(Registry::new(Arc::new(NoObserver)));
        let (notices_tx, notices) = mpsc::channel(16);
        let uploads = UploadService::open(
            &dir,
            &config.storage,
            &metrics,
            notices_tx,
            Arc::new(crate::sealing::Sealer::none()),
            crate::output::uploader::TargetBook::this_box(store.clone()),
        )
        .expect("upload service");
        let outputs = Outputs {
            uploads,
            notices,
            vod: Arc::new(VodStore::open(dir.join("vod")).expect("vod")),
        };
        let mgr = Manager::start(
            config,
            store.clone(),
            Vec::new(),
            outbox,
            metrics,
            rooms,
            outputs,
            Arc::new(crate::health::Health::new()),
            Arc::new(crate::capacity::Capacity::new(
                crate::capacity::CapacitySettings {
                    profile_path: dir.join("capacity.json"),
                    fraction: 0.8,
                    admit_by_cost: true,
                },
                Arc::default(),
                &crate::metrics::Metrics::new(),
            )),
        )
        .await;
        Fixture { mgr, store, dir }
    }

    #[tokio::test]
    async fn resource_expired_hour_hides_the_task_but_it_keeps_running() {
        let fx = fixture("expiry").await;
        let mgr = fx.mgr.clone();
        let raw: model::CreateCloudRecordingRequest = serde_json::from_value(serde_json::json!({
            "SdkAppId": 1, "RoomId": "5", "UserId": "bot", "UserSig": "s",
            "RecordParams": {"RecordMode": 1, "MaxIdleTime": 86400}, "ResourceExpiredHour": 6
        }))
        .expect("shape");
        let task_id = mgr
            .create(validate::create(raw).expect("valid"))
            .await
            .expect("created");
        let st = mgr.inner.state.lock().await;
        let created = st.tasks[&task_id].record.created_ms;
        let six_hours = 6 * 3_600_000;
        assert!(mgr
            .lookup(&st, 1, &task_id, created + six_hours - 1)
            .is_ok());
        let err = mgr
            .lookup(&st, 1, &task_id, created + six_hours)
            .err()
            .expect("expired");
        assert!(
            matches!(err, TaskError::Expired { hours: 6, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("ResourceExpiredHour"), "{err}");
        assert!(
            mgr.lookup(&st, 2, &task_id, created).is_err(),
            "another app never sees the task"
        );
        assert!(
            st.tasks.contains_key(&task_id),
            "the task itself keeps running"
        );
        drop(st);
    }

    /// A single-stream task of app 1 in room 7 that waits a day for media.
    async fn create_single_task(fx: &Fixture) -> String {
        let raw: model::CreateCloudRecordingRequest = serde_json::from_value(serde_json::json!({
            "SdkAppId": 1, "RoomId": "7", "UserId": "bot", "UserSig": "s",
            "RecordParams": {"RecordMode": 1, "MaxIdleTime": 86400}
        }))
        .expect("shape");
        fx.mgr
            .create(validate::create(raw).expect("valid"))
            .await
            .expect("created")
    }

    /// A Modify whose commit is followed, before the in-memory record
    /// changes, by a recorder event on the same task: the event must commit
    /// the record *with* the Modify, or a restart brings the old
    /// parameters back. tokio's mutex is fair, so an event queued while the
    /// Modify waits takes the lock the moment the Modify lets go of it.
    #[tokio::test]
    async fn modify_racing_a_recorder_event_survives_a_restart() {
        let fx = fixture("modify-race").await;
        let task_id = create_single_task(&fx).await;
        let wanted = Subscription {
            audio: UserFilter::Deny(vec![UserPattern::Exact("muted".into())]),
            video: UserFilter::All,
        };
        let file = StorageFile {
            user_id: "alice".into(),
            file_name: "1_7_alice_main.m3u8".into(),
            track_type: "audio_video".into(),
            begin_time_stamp: 1,
        };

        let held = fx.mgr.inner.state.lock().await;
        let modify = tokio::spawn({
            let mgr = fx.mgr.clone();
            let task_id = task_id.clone();
            let wanted = wanted.clone();
            async move {
                mgr.modify(1, &task_id, move |_| {
                    Ok::<_, TaskError>(Modification {
                        subscription: Some(wanted),
                        layout: None,
                    })
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let event = tokio::spawn({
            let mgr = fx.mgr.clone();
            let task_id = task_id.clone();
            let file = file.clone();
            async move {
                mgr.task_event(&task_id, |r| r.files.push(file.clone()), None)
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(held);
        modify.await.expect("modify task").expect("modified");
        event.await.expect("event task");

        let stored = fx.store.load_tasks().expect("load");
        let record = stored
            .iter()
            .find(|r| r.task_id == task_id)
            .expect("task stored");
        assert_eq!(
            record.spec.record.subscription, wanted,
            "the stored task lost the Modify"
        );
        assert_eq!(record.files, vec![file], "the stored task lost the event");
        let st = fx.mgr.inner.state.lock().await;
        assert_eq!(
            *st.tasks[&task_id].record, *record,
            "memory and store agree"
        );
    }

    /// Describe, the console and the fleet read the view: a change waiting
    /// on its commit (here: the lock held, as a slow fsync holds it) does
    /// not hold them up, and they see what was last committed.
    #[tokio::test]
    async fn readers_do_not_wait_behind_a_commit_and_see_what_was_committed() {
        let fx = fixture("view").await;
        let task_id = create_single_task(&fx).await;
        let file = StorageFile {
            user_id: "alice".into(),
            file_name: "1_7_alice_main.m3u8".into(),
            track_type: "audio_video".into(),
            begin_time_stamp: 1,
        };
        fx.mgr
            .task_event(&task_id, |r| r.files.push(file.clone()), None)
            .await;

        let held = fx.mgr.inner.state.lock().await;
        let status = fx.mgr.describe(1, &task_id).expect("described");
        assert_eq!(status.files, vec![file]);
        assert!(matches!(
            fx.mgr.describe(2, &task_id),
            Err(TaskError::NotFound { .. })
        ));
        assert!(fx.mgr.runs(&task_id));
        assert_eq!(fx.mgr.live_count(), 1);
        assert_eq!(fx.mgr.overview().len(), 1);
        assert_eq!(fx.mgr.running_task_ids(), vec![task_id.clone()]);
        drop(held);
    }
}
