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

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};

use crate::api::error::{codes, ApiError};
use crate::config::Config;
use crate::media::mp4::SplitLimits;
use crate::metrics::Metrics;
use crate::mix::fetch::{fetch_image, FetchLimits};
use crate::mix::overlay::{decode_image, ImageLimits};
use crate::notify::deliver::{now_ms, Outbox};
use crate::notify::event::{self, EventSubject, EventType, LeaveCode};
use crate::output::convert::{
    convert_folder, ConvertFormat, ConvertReport, ConvertRequest, ConvertedFile,
};
use crate::output::local::LocalStore;
use crate::output::uploader::{CallbackContext, NoticeKind, UploadNotice, UploadService};
use crate::output::vod::{VodEntry, VodStore};
use crate::output::TeeStore;
use crate::record::compose::{open_encoder, CompositorSource};
use crate::record::mixed::{Images, MixedRecorder, MixedSettings};
use crate::record::naming::Naming;
use crate::record::segmenter::SegmenterConfig;
use crate::record::single::{FileInfo, Settings};
use crate::record::worker::{
    self, CoreSetup, RecorderControl, RecorderEvent, RecorderHandle, RecorderMetrics, RecorderSetup,
};
use crate::room::{Registry, RoomKey, RoomWatch};
use crate::store::{Change, NewCallback, Store, TaskRecord, TaskState};
use crate::task::idle::IdleTimer;
use crate::task::lifecycle::{self, Event, Transition};
use crate::task::outputs::{task_folder, OutputPlan, Packing};
use crate::task::params::{
    MixLayout, Modification, RecordMode, RecordingSpec, Storage, StreamType, Subscription,
    Watermark,
};

pub use crate::store::StorageFile;

/// What DescribeCloudRecording answers.
#[derive(Debug, Clone)]
pub struct TaskStatus {
    pub task_id: String,
    pub status: &'static str,
    pub files: Vec<StorageFile>,
}

#[derive(Debug)]
enum Control {
    /// Finish the task (it is already Exited in the store).
    Stop,
    /// Modify replaced the subscription lists.
    Subscription(Subscription),
    /// Modify replaced the mixed layout.
    Layout(MixLayout),
    /// The daemon stops: close the files, keep the task for the restart.
    Shutdown,
}

struct Live {
    record: TaskRecord,
    control: mpsc::Sender<Control>,
    runner: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    tasks: HashMap<String, Live>,
}

struct Inner {
    config: Arc<Config>,
    rooms: Arc<Registry>,
    store: Arc<Store>,
    outbox: Outbox,
    metrics: Metrics,
    recorder_metrics: RecorderMetrics,
    storage: Arc<dyn crate::output::Store>,
    /// HLS kept for end-of-task packing (`data_dir/staging`).
    staging: Arc<LocalStore>,
    uploads: UploadService,
    vod: Arc<VodStore>,
    compositors: CompositorSource,
    /// For layout images.
    http: reqwest::Client,
    state: Mutex<State>,
}

/// The output services the manager hands tasks to.
pub struct Outputs {
    pub uploads: UploadService,
    /// What the upload service reports (turned into callbacks).
    pub notices: mpsc::Receiver<UploadNotice>,
    pub vod: Arc<VodStore>,
}

/// Cheap to clone; all clones share the same tasks.
#[derive(Clone)]
pub struct Manager {
    inner: Arc<Inner>,
}

fn new_task_id() -> String {
    let bytes: [u8; 16] = rand::random();
    hex::encode(bytes)
}

impl Manager {
    /// Creates the manager and brings back every task the store holds.
    pub async fn start(
        config: Arc<Config>,
        store: Arc<Store>,
        records: Vec<TaskRecord>,
        outbox: Outbox,
        metrics: Metrics,
        rooms: Arc<Registry>,
        outputs: Outputs,
    ) -> Self {
        let recorder_metrics = RecorderMetrics::register(&metrics);
        let storage = Arc::new(LocalStore::new(config.data_dir.join("storage")));
        let staging = Arc::new(LocalStore::new(config.data_dir.join("staging")));
        let compositors = CompositorSource::new(config.recording.compositor);
        tracing::info!(compositor = %compositors.description, "mixed-stream compositor");
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiroku/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let mgr = Manager {
            inner: Arc::new(Inner {
                config,
                rooms,
                store,
                outbox,
                metrics,
                recorder_metrics,
                storage,
                staging,
                uploads: outputs.uploads,
                vod: outputs.vod,
                compositors,
                http,
                state: Mutex::new(State::default()),
            }),
        };
        tokio::spawn(upload_notices(Arc::downgrade(&mgr.inner), outputs.notices));
        {
            let mut st = mgr.inner.state.lock().await;
            for mut record in records {
                let exiting = matches!(record.state, TaskState::Exited { .. });
                let task_id = record.task_id.clone();
                if !exiting {
                    // Resume under the next `ha<n>_` name so that nothing
                    // the previous run wrote is overwritten.
                    record.restarts = record.restarts.saturating_add(1);
                    let callbacks = mgr
                        .callback(&record, event::failover(0), now_ms())
                        .into_iter()
                        .collect();
                    if mgr
                        .commit(Change {
                            put_task: Some(&record),
                            callbacks,
                            ..Change::default()
                        })
                        .await
                        .is_err()
                    {
                        tracing::error!(task_id = %task_id, "could not record the restart of a restored task");
                    }
                }
                let (control, runner) = mgr.spawn_runner(&record);
                if exiting {
                    let _ = control.try_send(Control::Stop);
                }
                tracing::info!(task_id = %task_id, state = record.state.api_status(), restarts = record.restarts, "task restored from the state store");
                st.tasks.insert(
                    task_id,
                    Live {
                        record,
                        control,
                        runner: Some(runner),
                    },
                );
            }
            mgr.update_gauges(&st);
        }
        mgr
    }

    fn spawn_runner(
        &self,
        record: &TaskRecord,
    ) -> (mpsc::Sender<Control>, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(16);
        let max_idle = Duration::from_secs(u64::from(record.spec.record.max_idle_seconds));
        let room_key = RoomKey {
            sdk_app_id: record.spec.sdk_app_id,
            room: record.spec.room.clone(),
        };
        let room = self.inner.rooms.watch(&room_key);
        let exiting = matches!(record.state, TaskState::Exited { .. });
        let recorder = (!exiting).then(|| self.start_recorder(record, room_key));
        let runner = tokio::spawn(run_task(
            self.clone(),
            RunnerSetup {
                task_id: record.task_id.clone(),
                max_idle,
                initial_layout: record.spec.mix.as_ref().map(|m| m.layout.clone()),
                plan: OutputPlan::of(&record.spec),
                storage: record.spec.storage.clone(),
            },
            room,
            rx,
            recorder,
        ));
        (tx, runner)
    }

    /// Starts a task's recorder thread; `Err` is why it could not start.
    fn start_recorder(
        &self,
        record: &TaskRecord,
        room: RoomKey,
    ) -> Result<(RecorderHandle, mpsc::Receiver<RecorderEvent>), String> {
        let spec = &record.spec;
        let cfg = &self.inner.config.recording;
        let naming = Naming::new(
            spec.storage.file_name_prefix(),
            &record.task_id,
            spec.sdk_app_id,
            &spec.room,
            record.restarts.min(3),
        );
        let (events_tx, events_rx) = mpsc::channel(256);
        let naming = Arc::new(naming);
        let segment = SegmenterConfig {
            target: cfg.segment,
            keyframe_grace: cfg.keyframe_grace,
        };
        let epoch_us = i64::try_from(record.created_ms)
            .unwrap_or(0)
            .saturating_mul(1000);
        let core = match (&spec.record.mode, &spec.mix) {
            (RecordMode::Mixed, Some(mix)) => {
                let encoder: Option<Box<dyn kiroku_gpu::VideoEncoder>> =
                    if spec.record.stream_type == StreamType::AudioOnly {
                        None
                    } else {
                        let settings = MixedRecorder::encoder_settings(&mix.transcode);
                        Some(
                            open_encoder(settings)
                                .map_err(|e| format!("cannot open the H.264 encoder: {e}"))?,
                        )
                    };
                CoreSetup::Mixed {
                    settings: Box::new(MixedSettings {
                        naming,
                        segment,
                        stream_type: spec.record.stream_type,
                        media: spec.record.media,
                        fill: spec.record.fill_type,
                        epoch_us,
                        transcode: mix.transcode,
                        latency_us: cfg.mix_latency.as_micros() as i64,
                    }),
                    layout: mix.layout.clone(),
                    compositor: self.inner.compositors.create(),
                    encoder,
                }
            }
            _ => CoreSetup::Single(Settings {
                naming,
                segment,
                stream_type: spec.record.stream_type,
                media: spec.record.media,
                av_merge: spec.record.av_merge,
                epoch_us,
            }),
        };
        let setup = RecorderSetup {
            task_id: record.task_id.clone(),
            core,
            subscription: spec.record.subscription.clone(),
            room,
            registry: self.inner.rooms.clone(),
            store: self.recorder_store(record)?,
            metrics: self.inner.recorder_metrics.clone(),
            events: events_tx,
        };
        worker::spawn(setup)
            .map(|h| (h, events_rx))
            .map_err(|e| format!("cannot start the recorder thread: {e}"))
    }

    /// The store a task's recorder writes its HLS to: the task's storage
    /// when HLS is one of its outputs, plus staging when the files are
    /// packed at the end and no local folder keeps them.
    fn recorder_store(&self, record: &TaskRecord) -> Result<Arc<dyn crate::output::Store>, String> {
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

    fn update_gauges(&self, st: &State) {
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
    }

    /// Number of live tasks (for systemd STATUS= and logs).
    pub async fn live_count(&self) -> usize {
        self.inner.state.lock().await.tasks.len()
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

    async fn commit(&self, change: Change<'_>) -> Result<(), ApiError> {
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
            Ok(Err(e)) => {
                self.inner.metrics.store_errors.inc();
                tracing::error!(error = ?e, "state store commit failed");
                Err(ApiError::internal(
                    "the state store could not commit the change; retry with the same parameters",
                ))
            }
            Err(e) => {
                self.inner.metrics.store_errors.inc();
                tracing::error!(error = %e, "state store task panicked");
                Err(ApiError::internal(
                    "the state store could not commit the change; retry with the same parameters",
                ))
            }
        }
    }

    /// CreateCloudRecording (the spec is already validated and authorised).
    pub async fn create(&self, spec: RecordingSpec) -> Result<String, ApiError> {
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
        let live_after = st.tasks.len() + 1 - usize::from(displaced.is_some());
        if live_after > self.inner.config.limits.max_tasks {
            self.inner
                .metrics
                .tasks_refused
                .with_label_values(&["max_tasks"])
                .inc();
            return Err(ApiError::new(
                codes::RESTRICTED_CONCURRENCY,
                format!(
                    "this appliance already runs {} recording tasks (limits.max_tasks = {}); stop one or raise the limit",
                    st.tasks.len(),
                    self.inner.config.limits.max_tasks
                ),
            ));
        }
        if let Some(old) = displaced {
            self.stop_locked(&mut st, &old, LeaveCode::SameUserIdEntered)
                .await?;
        }
        // Read the clock after any displaced task stopped, so that its 302
        // is never later than this task's 301.
        let now = now_ms();
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
        let (control, runner) = self.spawn_runner(&record);
        let task_id = record.task_id.clone();
        tracing::info!(task_id = %task_id, sdk_app_id = record.spec.sdk_app_id, room = %record.spec.room,
            mode = ?record.spec.record.mode, "recording task created");
        st.tasks.insert(
            task_id.clone(),
            Live {
                record,
                control,
                runner: Some(runner),
            },
        );
        self.inner.metrics.tasks_started.inc();
        self.update_gauges(&st);
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
    ) -> Result<&'a Live, ApiError> {
        let not_exist = || {
            ApiError::new(
                codes::TASK_NOT_EXIST,
                format!("task {task_id} does not exist for SdkAppId {sdk_app_id} (never created, or already ended)"),
            )
        };
        let live = st
            .tasks
            .get(task_id)
            .filter(|l| l.record.spec.sdk_app_id == sdk_app_id)
            .ok_or_else(not_exist)?;
        let expires =
            live.record.created_ms + u64::from(live.record.spec.resource_expired_hours) * 3_600_000;
        if now >= expires {
            return Err(ApiError::new(
                codes::TASK_NOT_EXIST,
                format!(
                    "task {task_id} is past its ResourceExpiredHour ({} h): it can no longer be queried or changed",
                    live.record.spec.resource_expired_hours
                ),
            ));
        }
        Ok(live)
    }

    pub async fn describe(&self, sdk_app_id: u32, task_id: &str) -> Result<TaskStatus, ApiError> {
        let st = self.inner.state.lock().await;
        let live = self.lookup(&st, sdk_app_id, task_id, now_ms())?;
        Ok(TaskStatus {
            task_id: live.record.task_id.clone(),
            status: live.record.state.api_status(),
            files: live.record.files.clone(),
        })
    }

    /// ModifyCloudRecording. `validate` turns the raw request into a
    /// modification against the task's own parameters.
    pub async fn modify(
        &self,
        sdk_app_id: u32,
        task_id: &str,
        validate: impl FnOnce(&RecordingSpec) -> Result<Modification, ApiError>,
    ) -> Result<(), ApiError> {
        let st = self.inner.state.lock().await;
        let live = self.lookup(&st, sdk_app_id, task_id, now_ms())?;
        if matches!(live.record.state, TaskState::Exited { .. }) {
            return Err(ApiError::new(
                codes::TASK_NOT_EXIST,
                format!("task {task_id} is exiting and can no longer be modified"),
            ));
        }
        let change = validate(&live.record.spec)?;
        let mut record = live.record.clone();
        let new_subscription = change.subscription.clone();
        if let Some(sub) = change.subscription {
            record.spec.record.subscription = sub;
        }
        if let (Some(layout), Some(mix)) = (change.layout, record.spec.mix.as_mut()) {
            mix.layout = layout;
        }
        self.commit(Change {
            put_task: Some(&record),
            ..Change::default()
        })
        .await?;
        drop(st);
        let mut st = self.inner.state.lock().await;
        if let Some(live) = st.tasks.get_mut(task_id) {
            if let Some(sub) = new_subscription {
                let _ = live.control.try_send(Control::Subscription(sub));
            }
            if let (Some(new), Some(mix)) =
                (record.spec.mix.as_ref(), live.record.spec.mix.as_ref())
            {
                if new.layout != mix.layout {
                    let _ = live.control.try_send(Control::Layout(new.layout.clone()));
                }
            }
            live.record.spec = record.spec;
        }
        tracing::info!(task_id, "recording task modified");
        Ok(())
    }

    pub async fn delete(&self, sdk_app_id: u32, task_id: &str) -> Result<(), ApiError> {
        let mut st = self.inner.state.lock().await;
        self.lookup(&st, sdk_app_id, task_id, now_ms())?;
        self.stop_locked(&mut st, task_id, LeaveCode::ApiStop).await
    }

    /// Stops a task for `reason` (idempotent once it is Exited).
    async fn stop(&self, task_id: &str, reason: LeaveCode) -> Result<(), ApiError> {
        let mut st = self.inner.state.lock().await;
        self.stop_locked(&mut st, task_id, reason).await
    }

    async fn stop_locked(
        &self,
        st: &mut State,
        task_id: &str,
        reason: LeaveCode,
    ) -> Result<(), ApiError> {
        let Some(live) = st.tasks.get(task_id) else {
            return Ok(());
        };
        let Transition::To(next_state) = lifecycle::next(live.record.state, Event::Stop(reason))
        else {
            return Ok(());
        };
        let now = now_ms();
        let mut record = live.record.clone();
        record.state = next_state;
        let callbacks = self
            .callback(&record, event::recorder_stop(reason), now)
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
            live.record = record;
            let _ = live.control.try_send(Control::Stop);
        }
        self.update_gauges(st);
        Ok(())
    }

    /// Applies `change` to a live task's record and queues `callback`, in
    /// one commit. Nothing happens for a task that is gone.
    async fn task_event(
        &self,
        task_id: &str,
        change: impl FnOnce(&mut TaskRecord),
        callback: Option<(EventType, serde_json::Value)>,
    ) {
        let mut st = self.inner.state.lock().await;
        let Some(live) = st.tasks.get(task_id) else {
            return;
        };
        let mut record = live.record.clone();
        change(&mut record);
        let changed = record != live.record;
        let now = now_ms();
        let callbacks: Vec<NewCallback> = callback
            .and_then(|c| self.callback(&record, c, now))
            .into_iter()
            .collect();
        if !changed && callbacks.is_empty() {
            return;
        }
        let result = self
            .commit(Change {
                put_task: changed.then_some(&record),
                callbacks,
                ..Change::default()
            })
            .await;
        if result.is_ok() {
            if let Some(live) = st.tasks.get_mut(task_id) {
                live.record = record;
            }
            self.update_gauges(&st);
        }
    }

    async fn recorder_event(
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
                            r.files.push(file);
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
                if self
                    .stop(task_id, LeaveCode::BotKickedByServer)
                    .await
                    .is_err()
                {
                    tracing::error!(task_id, "could not stop the task whose storage is full");
                }
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
            tokio::task::spawn_blocking(move || inner.compositors.release(Duration::from_secs(5)))
                .await;
    }

    /// The end of a task's outputs, once its recorder has closed its
    /// files: packing (MP4/AAC, VOD), uploads drained, and the callbacks
    /// that report them (305; 310; 311 and 312). Also run for a task that
    /// was ending when the daemon stopped: every step can run twice.
    async fn finish_outputs(&self, task_id: &str, failed_writes: u64) {
        let record = {
            let st = self.inner.state.lock().await;
            match st.tasks.get(task_id) {
                Some(l) => l.record.clone(),
                None => return,
            }
        };
        let plan = OutputPlan::of(&record.spec);
        let packed = match plan.packing {
            Some(packing) => Some(self.pack(&record, &plan, packing).await),
            None => None,
        };
        let upload_status = match &record.spec.storage {
            Storage::Cloud(cloud) => {
                if let Err(e) =
                    self.inner
                        .uploads
                        .register(task_id, callback_context(&record.spec), cloud)
                {
                    tracing::error!(task_id, error = %e, "the task's storage target is unusable");
                }
                let drained = self
                    .inner
                    .uploads
                    .drain(task_id, self.inner.config.storage.drain_timeout)
                    .await;
                u8::from(failed_writes > 0 || drained.stranded > 0)
            }
            Storage::Local | Storage::Vod(_) => u8::from(failed_writes > 0),
        };
        self.task_event(task_id, |_| {}, Some(event::upload_stop(upload_status)))
            .await;
        let Some(packed) = packed else {
            return;
        };
        if plan.vod {
            let base = &self.inner.config.server.public_url;
            for f in &packed.vod {
                let url = format!("{base}/vod/{}.mp4", f.file_id);
                let cb = event::vod_commit(&event::VodCommit {
                    status: 0,
                    user_id: &f.user_id,
                    track_type: &f.track_type,
                    media_id: &f.media_id,
                    file_id: &f.file_id,
                    video_url: &url,
                    cache_file: &f.cache_file,
                    errmsg: "",
                });
                self.task_event(task_id, |_| {}, Some(cb)).await;
            }
            for (name, error) in &packed.failed {
                let cb = event::vod_commit(&event::VodCommit {
                    status: 2,
                    cache_file: name,
                    errmsg: error,
                    ..Default::default()
                });
                self.task_event(task_id, |_| {}, Some(cb)).await;
            }
            let ok = packed.report.status() == 0 && packed.failed.is_empty();
            self.task_event(task_id, |_| {}, Some(event::vod_stop(u8::from(!ok))))
                .await;
        } else {
            let names: Vec<String> = packed.report.files.iter().map(|f| f.name.clone()).collect();
            let mut status = packed.report.status();
            if status == 0 && upload_status != 0 {
                status = 1;
            }
            self.task_event(task_id, |_| {}, Some(event::mp4_stop(status, &names)))
                .await;
        }
        if plan.staging && packed.report.status() != 2 {
            let dir = packed.source_dir.clone();
            let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
            if let Ok(Err(e)) = removed {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(task_id, error = %e, "removing the task's staging folder");
                }
            }
        }
    }

    /// Packs a finished recording's HLS into MP4/AAC files (on a thread of
    /// its own: this is media work) and hands them to the task's storage
    /// or the VOD store.
    async fn pack(&self, record: &TaskRecord, plan: &OutputPlan, packing: Packing) -> Packed {
        let spec = &record.spec;
        let task_id = record.task_id.clone();
        let folder = task_folder(spec.storage.file_name_prefix(), &task_id);
        let root = if plan.staging { "staging" } else { "storage" };
        let source_dir = self.inner.config.data_dir.join(root).join(&folder);
        let request = ConvertRequest {
            format: match packing {
                Packing::Mp4 => ConvertFormat::Mp4,
                Packing::Aac => ConvertFormat::Aac,
            },
            limits: SplitLimits::from_max_media_file_minutes(spec.record.max_media_file_minutes),
            mixed: spec.record.mode == RecordMode::Mixed,
            sdk_app_id: spec.sdk_app_id,
            room: spec.room.clone(),
        };
        enum Sink {
            Store(Arc<dyn crate::output::Store>),
            Vod(Arc<VodStore>, u64),
        }
        let sink = match &spec.storage {
            Storage::Vod(v) => Sink::Vod(self.inner.vod.clone(), v.expire_seconds),
            Storage::Local => Sink::Store(self.inner.storage.clone()),
            Storage::Cloud(_) => Sink::Store(self.inner.uploads.store(&task_id)),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let dir = source_dir.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("pack-{}", &task_id[..task_id.len().min(8)]))
            .spawn(move || {
                let mut vod = Vec::new();
                let mut failed = Vec::new();
                let mut deliver = |f: ConvertedFile| -> Result<(), String> {
                    let result = match &sink {
                        Sink::Store(store) => store
                            .put(&format!("{folder}/{}", f.name), &f.data)
                            .map_err(|e| format!("{e}")),
                        Sink::Vod(store, keep_s) => {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map_or(0, |d| d.as_secs());
                            let entry = VodEntry {
                                file_id: String::new(),
                                task_id: task_id.clone(),
                                user_id: f.user_id.clone(),
                                track_type: f.track_type.api_name().to_owned(),
                                media_id: f.media.as_str().to_owned(),
                                cache_file: f.name.clone(),
                                size: 0,
                                created_unix_s: now,
                                expire_at_unix_s: if *keep_s == 0 { 0 } else { now + keep_s },
                            };
                            store
                                .commit(&f.data, entry)
                                .map(|e| vod.push(e))
                                .map_err(|e| e.to_string())
                        }
                    };
                    if let Err(e) = &result {
                        tracing::error!(task_id = %task_id, file = %f.name, error = %e, "a packed file could not be stored");
                        failed.push((f.name.clone(), e.clone()));
                    }
                    result
                };
                let report = convert_folder(&dir, &request, &mut deliver);
                let _ = tx.send(Packed {
                    report,
                    vod,
                    failed,
                    source_dir: dir,
                });
            });
        let packed = match spawned {
            Ok(_) => rx.await.ok(),
            Err(e) => {
                tracing::error!(task_id = %record.task_id, error = %e, "cannot start the packing thread");
                None
            }
        };
        let packed = packed.unwrap_or_else(|| Packed {
            report: ConvertReport {
                listing_failed: true,
                ..ConvertReport::default()
            },
            vod: Vec::new(),
            failed: Vec::new(),
            source_dir,
        });
        let r = &packed.report;
        if r.status() == 0 {
            tracing::info!(task_id = %record.task_id, report = %r, "recording packed");
        } else {
            tracing::error!(task_id = %record.task_id, report = %r, status = r.status(), "packing the recording went wrong");
        }
        packed
    }

    /// Called by the runner once an Exited task has nothing left to do.
    async fn finish(&self, task_id: &str) {
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
        st.tasks.remove(task_id);
        self.update_gauges(&st);
        tracing::info!(task_id, "recording task ended");
    }
}

type Recorder = (RecorderHandle, mpsc::Receiver<RecorderEvent>);

/// What end-of-task packing produced.
struct Packed {
    report: ConvertReport,
    /// Files committed to the VOD store.
    vod: Vec<VodEntry>,
    /// Files made but not stored: (name, why).
    failed: Vec<(String, String)>,
    /// Where the HLS was read from.
    source_dir: std::path::PathBuf,
}

fn callback_context(spec: &RecordingSpec) -> CallbackContext {
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
        };
        let Some(cb) = new_callback(&mgr.inner.config, &n.task_id, &n.context, ev, now_ms()) else {
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

/// Fetches a mixed task's layout images in the background: each URL once
/// per task; a failure is logged, counted and reported by callback 309,
/// and the recording goes on without that image.
struct ImageFetcher {
    http: reqwest::Client,
    tried: std::collections::HashSet<String>,
}

impl ImageFetcher {
    fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            tried: Default::default(),
        }
    }

    fn fetch(
        &mut self,
        mgr: &Manager,
        task_id: &str,
        layout: &MixLayout,
        recorder: &RecorderHandle,
    ) {
        let urls: Vec<String> = layout_image_urls(layout)
            .into_iter()
            .filter(|u| self.tried.insert(u.clone()))
            .collect();
        if urls.is_empty() {
            return;
        }
        let (mgr, task_id, http) = (mgr.clone(), task_id.to_owned(), self.http.clone());
        let control = recorder.sender();
        tokio::spawn(async move {
            let limits = FetchLimits::default();
            for url in urls {
                let result = match fetch_image(&http, &url, &limits).await {
                    Ok(bytes) => tokio::task::spawn_blocking(move || {
                        decode_image(&bytes, &ImageLimits::default()).map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string())),
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(picture) => {
                        let mut images = Images::new();
                        images.insert(url, Arc::new(picture));
                        let _ = control.send(RecorderControl::Images(images));
                    }
                    Err(error) => {
                        tracing::warn!(task_id = %task_id, url, error, "layout image could not be downloaded; recording goes on without it");
                        mgr.inner.recorder_metrics.image_failures.inc();
                        mgr.task_event(&task_id, |_| {}, Some(event::download_image_error(&url)))
                            .await;
                    }
                }
            }
        });
    }
}

/// Every image URL a layout uses.
fn layout_image_urls(layout: &MixLayout) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    let mut add = |u: &Option<String>| {
        if let Some(u) = u {
            if !urls.contains(u) {
                urls.push(u.clone());
            }
        }
    };
    add(&layout.background_image);
    add(&layout.placeholder_image);
    for t in &layout.custom {
        add(&t.sub_background_image);
    }
    for w in &layout.watermarks {
        if let Watermark::Image { url, .. } = w {
            add(&Some(url.clone()));
        }
    }
    urls
}

/// What a task's runner knows from the start.
struct RunnerSetup {
    task_id: String,
    max_idle: Duration,
    initial_layout: Option<MixLayout>,
    plan: OutputPlan,
    /// Storage never changes with Modify.
    storage: Storage,
}

async fn run_task(
    mgr: Manager,
    setup: RunnerSetup,
    room: RoomWatch,
    mut control: mpsc::Receiver<Control>,
    recorder: Option<Result<Recorder, String>>,
) {
    let RunnerSetup {
        task_id,
        max_idle,
        initial_layout,
        plan,
        storage,
    } = setup;
    let mut images = ImageFetcher::new(mgr.inner.http.clone());
    let (handle, mut events) = match recorder {
        Some(Ok((h, e))) => {
            mgr.task_event(&task_id, |_| {}, Some(event::upload_start(0)))
                .await;
            if let Some(layout) = initial_layout {
                images.fetch(&mgr, &task_id, &layout, &h);
            }
            (Some(h), Some(e))
        }
        Some(Err(why)) => {
            tracing::error!(task_id = %task_id, error = %why, "recorder could not start");
            mgr.task_event(&task_id, |_| {}, Some(event::upload_start(1)))
                .await;
            (None, None)
        }
        None => (None, None),
    };
    let mut publishers = room.publishers;
    let now = || tokio::time::Instant::now().into_std();
    let mut timer = IdleTimer::new(max_idle, now());
    timer.set_publishers(*publishers.borrow_and_update(), now());
    let mut stopping = false;
    let mut control_open = true;
    let mut shutting_down = false;
    let mut failed_writes = None;
    loop {
        let deadline = timer
            .deadline()
            .filter(|_| !stopping)
            .map(tokio::time::Instant::from_std);
        tokio::select! {
            cmd = control.recv(), if control_open => match cmd {
                Some(Control::Subscription(s)) => {
                    if let Some(h) = &handle {
                        h.send(RecorderControl::Subscription(s));
                    }
                }
                Some(Control::Layout(layout)) => {
                    if let Some(h) = &handle {
                        images.fetch(&mgr, &task_id, &layout, h);
                        h.send(RecorderControl::Layout(layout));
                    }
                }
                Some(c @ (Control::Stop | Control::Shutdown)) => {
                    shutting_down = matches!(c, Control::Shutdown);
                    stopping = true;
                    match &handle {
                        // The recorder closes its files and then reports Finished.
                        Some(h) if events.is_some() => h.send(RecorderControl::Stop),
                        _ => break,
                    }
                }
                None => {
                    control_open = false;
                    if let Some(h) = &handle {
                        h.send(RecorderControl::Stop);
                    } else {
                        break;
                    }
                }
            },
            ev = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            } => match ev {
                Some(RecorderEvent::Finished { failed_writes: n }) => {
                    failed_writes = Some(n);
                    break;
                }
                Some(e) => mgr.recorder_event(&task_id, e, &plan, &storage).await,
                None => {
                    tracing::error!(task_id = %task_id, "the recorder thread ended unexpectedly");
                    mgr.inner.recorder_metrics.write_failures.inc();
                    events = None;
                    failed_writes = Some(1);
                    if stopping {
                        break;
                    }
                }
            },
            changed = publishers.changed() => {
                if changed.is_err() {
                    // The room registry is gone (shutdown): nothing more to watch.
                    std::future::pending::<()>().await;
                }
                let n = *publishers.borrow_and_update();
                timer.set_publishers(n, now());
            }
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {
                if timer.expired(now()) {
                    tracing::info!(task_id = %task_id, max_idle_s = max_idle.as_secs(), "no publisher for MaxIdleTime");
                    stopping = mgr.stop(&task_id, LeaveCode::Idle).await.is_ok();
                    if !stopping {
                        // The store refused the stop; try again shortly.
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        }
    }
    drop(handle);
    if shutting_down {
        // Files are closed; the task resumes after the restart.
        return;
    }
    mgr.finish_outputs(&task_id, failed_writes.unwrap_or(0))
        .await;
    mgr.finish(&task_id).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{model, validate};
    use crate::room::{DropReason, RoomObserver, TrackKind};

    struct NoObserver;
    impl RoomObserver for NoObserver {
        fn frame_dropped(&self, _r: DropReason) {}
        fn keyframe_wanted(&self, _s: &str, _k: TrackKind) {}
    }

    #[tokio::test]
    async fn resource_expired_hour_hides_the_task_but_it_keeps_running() {
        let dir = std::env::temp_dir().join(format!("kiroku-mgr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let store = Arc::new(Store::open(&dir.join("state.redb")).expect("store"));
        let metrics = Metrics::new();
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let config = Arc::new(Config::embedded_defaults());
        let (outbox, _worker) = crate::notify::deliver::start(
            store.clone(),
            Vec::new(),
            config.callbacks,
            metrics.clone(),
            stop_rx,
        );
        let rooms = Arc::new(Registry::new(Arc::new(NoObserver)));
        let (notices_tx, notices) = mpsc::channel(16);
        let uploads = UploadService::open(&dir, &config.storage, &metrics, notices_tx)
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
        )
        .await;
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
        assert_eq!(err.code, codes::TASK_NOT_EXIST);
        assert!(
            err.message.contains("ResourceExpiredHour"),
            "{}",
            err.message
        );
        assert!(
            mgr.lookup(&st, 2, &task_id, created).is_err(),
            "another app never sees the task"
        );
        assert!(
            st.tasks.contains_key(&task_id),
            "the task itself keeps running"
        );
        drop(st);
        drop(mgr);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
