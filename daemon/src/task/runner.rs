//! A task's runner: one tokio task per live task that only waits on timers
//! and channels (no media work). It applies the MaxIdleTime rule, owns the
//! task's recorder thread, forwards Modify's changes to it, turns what the
//! recorder reports into state changes and callbacks, and once the task
//! is Exited and its files are closed, runs the end-of-task work and
//! finishes the task.

use std::time::Duration;

use tokio::sync::mpsc;

use super::images::ImageFetcher;
use super::manager::{Control, Manager};
use crate::domain::params::{MixLayout, Storage};
use crate::domain::task::{LeaveCode, TaskRecord, TaskState};
use crate::notify::event;
use crate::record::build::Recorder;
use crate::record::worker::{RecorderControl, RecorderEvent};
use crate::room::{RoomKey, RoomWatch};
use crate::task::idle::IdleTimer;
use crate::task::outputs::OutputPlan;

impl Manager {
    pub(super) fn spawn_runner(
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
        let recorder = (!exiting).then(|| {
            self.recorder_store(record)
                .and_then(|store| self.inner.recorders.start(record, room_key, store))
        });
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
}

/// How many times a task's recorder is started again after its thread
/// died, counting daemon restarts (the `ha<n>_` names go up to 3, as
/// Tencent's failover does); after that the task ends.
pub const MAX_RECORDER_RESTARTS: u8 = 3;
/// How long a dead recorder stays down (reported by `/healthz`) before it
/// is started again: a panic that repeats at once does not spin.
const RECORDER_RESTART_DELAY: Duration = Duration::from_secs(1);

impl Manager {
    /// A task's recorder thread died: start the next one under the next
    /// `ha<n>_` name, with callback 306 (the task resumed), and the layout
    /// it must show; `Err` (why) when it has been restarted
    /// [`MAX_RECORDER_RESTARTS`] times or cannot start.
    async fn restart_recorder(
        &self,
        task_id: &str,
    ) -> Result<(Recorder, Option<MixLayout>), String> {
        let (restarts, state) = {
            let st = self.inner.state.lock().await;
            st.tasks
                .get(task_id)
                .map(|l| (l.record.restarts, l.record.state))
                .ok_or("the task is gone")?
        };
        if matches!(state, TaskState::Exited { .. }) {
            // Stopped while its recorder was down: nothing to resume.
            return Err("the task stopped while its recorder was down".to_owned());
        }
        if restarts >= MAX_RECORDER_RESTARTS {
            return Err(format!(
                "the recorder failed after {restarts} restarts (at most {MAX_RECORDER_RESTARTS})"
            ));
        }
        self.task_event(
            task_id,
            |r| r.restarts = r.restarts.saturating_add(1),
            Some(event::failover(0)),
        )
        .await;
        let record = {
            let st = self.inner.state.lock().await;
            st.tasks
                .get(task_id)
                .map(|l| l.record.clone())
                .ok_or("the task is gone")?
        };
        if record.restarts <= restarts {
            return Err("the restart could not be recorded in the state store".to_owned());
        }
        let room = RoomKey {
            sdk_app_id: record.spec.sdk_app_id,
            room: record.spec.room.clone(),
        };
        let recorder = self
            .recorder_store(&record)
            .and_then(|store| self.inner.recorders.start(&record, room, store))?;
        self.inner.recorders.metrics().restarts.inc();
        tracing::warn!(
            task_id,
            restarts = record.restarts,
            "recorder restarted after its thread died"
        );
        Ok((recorder, record.spec.mix.as_ref().map(|m| m.layout.clone())))
    }
}

/// What a task's runner knows from the start.
pub(super) struct RunnerSetup {
    task_id: String,
    max_idle: Duration,
    initial_layout: Option<MixLayout>,
    plan: OutputPlan,
    /// Storage never changes with Modify.
    storage: Storage,
}

pub(super) async fn run_task(
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
    let (mut handle, mut events) = match recorder {
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
    let mut room_open = true;
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
                        // The layout first: images that arrive are kept
                        // only if the recorder's layout uses them.
                        h.send(RecorderControl::Layout(layout.clone()));
                        images.fetch(&mgr, &task_id, &layout, h);
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
                    // The recorder thread died (a panic): what it had not
                    // yet written is lost; the task goes on with a new one.
                    tracing::error!(task_id = %task_id, "the recorder thread ended unexpectedly");
                    handle = None;
                    if stopping {
                        failed_writes = Some(1);
                        break;
                    }
                    let part = format!("recorder of task {task_id}");
                    mgr.inner.health.down(&part, "its thread died; restarting");
                    tokio::time::sleep(RECORDER_RESTART_DELAY).await;
                    let restarted = mgr.restart_recorder(&task_id).await;
                    mgr.inner.health.up(&part);
                    match restarted {
                        Ok(((h, e), layout)) => {
                            // The new recorder has none of the images.
                            images = ImageFetcher::new(mgr.inner.http.clone());
                            if let Some(layout) = layout {
                                images.fetch(&mgr, &task_id, &layout, &h);
                            }
                            handle = Some(h);
                            events = Some(e);
                        }
                        Err(why) => {
                            tracing::error!(task_id = %task_id, error = %why, "the task ends: its recorder cannot go on");
                            failed_writes = Some(1);
                            mgr.stop_retrying(&task_id, LeaveCode::BotKickedByServer, Some(&why)).await;
                            break;
                        }
                    }
                }
            },
            changed = publishers.changed(), if room_open => {
                if changed.is_err() {
                    // The room registry is gone (shutdown): nothing more to
                    // watch, but the other arms (control, recorder events,
                    // the idle deadline) must keep running.
                    room_open = false;
                    continue;
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
