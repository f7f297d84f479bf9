//! The IO edge of a recording (single-stream or mixed): one OS thread per task.
//!
//! The thread subscribes to the room's tracks through one bounded channel
//! shared by all of them (frames tagged by subscription), runs the
//! [`SingleRecorder`] or [`MixedRecorder`] core (ticking the latter's
//! output clock), writes files through the [`Store`] interface,
//! and reports what the task runner must know (first media, files,
//! the end) on a bounded tokio channel. Media work never touches the
//! async runtime; a full channel drops frames at the room (counted there),
//! never blocks ingest.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};

use crate::metrics::{self, Metrics};
use crate::output::Store;
use kiroku_gpu::{Compositor, VideoEncoder};

use crate::domain::params::{MixLayout, Subscription};
use crate::record::action::{Action, FileInfo, Stats};
use crate::record::load::{thread_cpu_time, TaskLoad};
use crate::record::mixed::{Images, MixStats, MixedRecorder, MixedSettings};
use crate::record::single::{OfferedTrack, Settings, SingleRecorder};
use crate::record::timeline::unix_us;
use crate::room::{Delivery, Registry, RoomKey, Track};

/// Frames buffered between the room and a task's recorder (about 2 s of
/// 25 audio+video streams).
const CHANNEL_CAPACITY: usize = 4096;
/// How often the thread looks at controls and the room when no frame comes.
const POLL: Duration = Duration::from_millis(50);
/// A single-stream recorder that took frames rests this long before it
/// takes more, so it wakes once per batch instead of once per frame (100
/// two-user tasks woke their threads ~13,000 times a second; a tenth of
/// the box's CPU time went to switching threads). Its segments close at
/// most this much later; the channel holds seconds of frames.
const SINGLE_BATCH: Duration = Duration::from_millis(20);

/// What the task runner hears from its recorder.
#[derive(Debug, Clone, PartialEq)]
pub enum RecorderEvent {
    MediaStarted,
    /// A playlist's first segment was cut (callback 307).
    FileSliced(FileInfo),
    /// A playlist was stored for the first time (Describe, callback 304).
    PlaylistStored(FileInfo),
    /// The storage (spool or disk) is full: the task cannot go on. Sent
    /// once, at the first refused file.
    StorageFull {
        error: String,
    },
    /// Every file is written; `failed_writes` could not be.
    Finished {
        failed_writes: u64,
    },
}

/// What the task runner tells its recorder.
#[derive(Debug)]
pub enum RecorderControl {
    Subscription(Subscription),
    /// Mixed-stream tasks: a new layout (ModifyCloudRecording).
    Layout(MixLayout),
    /// Mixed-stream tasks: images fetched for the layout.
    Images(Images),
    Stop,
}

/// Which recorder core a task runs.
pub enum CoreSetup {
    Single(Settings),
    Mixed {
        settings: Box<MixedSettings>,
        layout: MixLayout,
        compositor: Box<dyn Compositor>,
        /// `None` for audio-only recordings.
        encoder: Option<Box<dyn VideoEncoder>>,
    },
}

impl std::fmt::Debug for CoreSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoreSetup::Single(_) => f.write_str("Single"),
            CoreSetup::Mixed { compositor, .. } => {
                write!(f, "Mixed(compositor: {})", compositor.name())
            }
        }
    }
}

enum Core {
    Single(Box<SingleRecorder>),
    Mixed(Box<MixedRecorder>),
}

impl Core {
    fn reconcile(&mut self, offered: &[OfferedTrack]) -> Vec<Action> {
        match self {
            Core::Single(c) => c.reconcile(offered),
            Core::Mixed(c) => c.reconcile(offered),
        }
    }

    fn on_frame(&mut self, d: Delivery) -> Vec<Action> {
        match self {
            Core::Single(c) => c.on_frame(d.tag, d.frame),
            Core::Mixed(c) => c.on_frame(d.tag, d.frame),
        }
    }

    fn control(&mut self, c: RecorderControl) {
        match (self, c) {
            (Core::Single(core), RecorderControl::Subscription(s)) => core.set_subscription(s),
            (Core::Mixed(core), RecorderControl::Subscription(s)) => core.set_subscription(s),
            (Core::Mixed(core), RecorderControl::Layout(l)) => {
                core.modify_layout(l, unix_us(SystemTime::now()))
            }
            (Core::Mixed(core), RecorderControl::Images(i)) => core.add_images(i),
            _ => {}
        }
    }

    /// Output frames due now (mixed only).
    fn tick(&mut self) -> Vec<Action> {
        match self {
            Core::Single(_) => Vec::new(),
            Core::Mixed(c) => c.tick(unix_us(SystemTime::now())),
        }
    }

    /// How far the output clock trails its due time (mixed; zero for a
    /// recorder that keeps up, and for single-stream cores).
    fn output_behind(&self) -> Duration {
        match self {
            Core::Mixed(c) => match c.next_due_us() {
                Some(due) => {
                    let late = unix_us(SystemTime::now()) - due;
                    Duration::from_micros(u64::try_from(late).unwrap_or(0))
                }
                None => Duration::ZERO,
            },
            Core::Single(_) => Duration::ZERO,
        }
    }

    /// How long until the core wants [`Self::tick`] again, at most `POLL`.
    fn wait(&self) -> Duration {
        match self {
            Core::Mixed(c) => match c.next_due_us() {
                Some(due) => {
                    let left = due - unix_us(SystemTime::now());
                    Duration::from_micros(left.clamp(0, POLL.as_micros() as i64) as u64)
                }
                None => POLL,
            },
            Core::Single(_) => POLL,
        }
    }

    fn finish(&mut self) -> Vec<Action> {
        match self {
            Core::Single(c) => c.finish(),
            Core::Mixed(c) => c.finish(unix_us(SystemTime::now())),
        }
    }

    fn stats(&self) -> Stats {
        match self {
            Core::Single(c) => c.stats,
            Core::Mixed(c) => c.stats,
        }
    }

    fn stream_errors(&self) -> u64 {
        match self {
            Core::Single(c) => c.stream_errors(),
            Core::Mixed(c) => c.stream_errors(),
        }
    }

    fn segments_ended_early(&self) -> u64 {
        match self {
            Core::Single(c) => c.segments_ended_early(),
            Core::Mixed(c) => c.segments_ended_early(),
        }
    }

    fn active_streams(&self) -> usize {
        match self {
            Core::Single(c) => c.active_streams(),
            Core::Mixed(c) => c.active_streams(),
        }
    }

    fn mix_stats(&self) -> MixStats {
        match self {
            Core::Single(_) => MixStats::default(),
            Core::Mixed(c) => c.mix_stats,
        }
    }
}

/// Recorder metrics, registered once in the daemon's registry.
#[derive(Clone)]
pub struct RecorderMetrics {
    pub frames: IntCounter,
    pub stray_frames: IntCounter,
    pub segments: IntCounter,
    pub bytes: IntCounter,
    pub write_failures: IntCounter,
    pub streams_refused: IntCounter,
    pub keyframe_requests: IntCounter,
    pub clock_events: IntCounterVec,
    pub media_errors: IntCounter,
    pub streams: IntGauge,
    pub recorders: IntGauge,
    pub mix_ticks: IntCounter,
    pub mix_events: IntCounterVec,
    /// Seconds of processing per mixed task and stage; a task's series
    /// are removed when its recorder ends.
    pub mix_stage_seconds: prometheus::CounterVec,
    pub image_failures: IntCounter,
    pub panics: IntCounter,
    pub restarts: IntCounter,
    pub segments_ended_early: IntCounter,
    pub journal_failures: IntCounter,
    /// From a segment's cut (the arrival of the frame that closed it, or
    /// the mixed output tick it ended at) to the end of its write.
    pub segment_latency: Histogram,
    /// How long each write to the store or spool took: the part of
    /// `segment_latency` spent writing (the rest is the recorder's queue).
    pub store_write: Histogram,
}

impl RecorderMetrics {
    pub fn register(m: &Metrics) -> Self {
        let r = m.registry();
        let c = |n: &str, h: &str| metrics::counter(r, n, h);
        let g = |n: &str, h: &str| metrics::gauge(r, n, h);
        let clock_events = metrics::counter_vec(
            r,
            "kiroku_recorder_clock_events_total",
            "Timeline events: arrival_fallback (no sender report in time), reanchor (RTP drifted from sender reports), report_refused (a sender report contradicting the track's long-run RTP rate, ignored), overflow (frames dropped while waiting)",
            &["event"],
        );
        for e in ["arrival_fallback", "reanchor", "report_refused", "overflow"] {
            clock_events.with_label_values(&[e]).reset();
        }
        let mix_events = metrics::counter_vec(
            r,
            "kiroku_mix_events_total",
            "Mixed-stream pipeline events: output_dropped (output frames dropped evenly while the task runs behind real time: overload), tick_skipped (output frames skipped at once to catch up from more than 1 s behind), decode_error, frame_dropped (input frames dropped, queue full), encode_error, compose_error",
            &["event"],
        );
        for e in [
            "output_dropped",
            "tick_skipped",
            "decode_error",
            "frame_dropped",
            "encode_error",
            "compose_error",
        ] {
            mix_events.with_label_values(&[e]).reset();
        }
        let segment_latency = Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "kiroku_recorder_segment_latency_seconds",
                "From a segment's cut (arrival of the frame that closed it; for mixed tasks the output tick it ended at) to the end of its write to the store or spool",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0]),
        )
        .expect("valid metric");
        r.register(Box::new(segment_latency.clone()))
            .expect("unique metric");
        let store_write = Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "kiroku_recorder_store_write_seconds",
                "How long one segment or playlist write to the store or spool took, fsync included: the part of kiroku_recorder_segment_latency_seconds spent writing (the rest is the recorder's queue)",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0]),
        )
        .expect("valid metric");
        r.register(Box::new(store_write.clone()))
            .expect("unique metric");
        Self {
            segment_latency,
            store_write,
            frames: c(
                "kiroku_recorder_frames_total",
                "Frames received by recorders",
            ),
            stray_frames: c(
                "kiroku_recorder_stray_frames_total",
                "Frames that arrived after their subscription ended (not recorded)",
            ),
            segments: c("kiroku_recorder_segments_total", "HLS segments written"),
            bytes: c(
                "kiroku_recorder_bytes_total",
                "Bytes of segments and playlists written",
            ),
            journal_failures: c(
                "kiroku_recorder_journal_failures_total",
                "Writes to the journal of open segments that failed (a crash then loses more of the open segment)",
            ),
            segments_ended_early: c(
                "kiroku_recorder_segments_ended_early_total",
                "HLS segments ended without a key frame to cut at (none for 20 s past the grace, or 64 MiB held); the stream resumes at the next key frame after a discontinuity",
            ),
            panics: c(
                "kiroku_recorder_panics_total",
                "Recorder threads that panicked (their task's recorder is restarted, at most 3 times)",
            ),
            restarts: c(
                "kiroku_recorder_restarts_total",
                "Recorders restarted after their thread died (the task goes on under the next ha<n>_ name, callback 306)",
            ),
            write_failures: c(
                "kiroku_recorder_write_failures_total",
                "Segment or playlist writes that failed",
            ),
            streams_refused: c(
                "kiroku_recorder_streams_refused_total",
                "Streams not recorded because the task already records 25",
            ),
            keyframe_requests: c(
                "kiroku_recorder_keyframe_requests_total",
                "Key frames requested because a segment ran long",
            ),
            clock_events,
            media_errors: c(
                "kiroku_recorder_media_errors_total",
                "Audio packets that could not be transcoded",
            ),
            streams: g(
                "kiroku_recorder_streams",
                "Streams (user main/aux) being recorded now",
            ),
            recorders: g("kiroku_recorders", "Recorder threads running"),
            mix_ticks: c(
                "kiroku_mix_frames_total",
                "Output frames composited and encoded by mixed-stream recorders",
            ),
            mix_events,
            mix_stage_seconds: metrics::float_counter_vec(
                r,
                "kiroku_mix_stage_seconds_total",
                "Processing time of a mixed task's pipeline by stage: decode, compose, encode, audio (mix + AAC), mux (TS + segments)",
                &["task_id", "stage"],
            ),
            image_failures: c(
                "kiroku_mix_image_failures_total",
                "Layout images (watermarks, backgrounds, placeholders) that could not be downloaded or decoded (callback 309)",
            ),
        }
    }
}

pub struct RecorderHandle {
    control: mpsc::Sender<RecorderControl>,
    thread: Option<JoinHandle<()>>,
}

impl RecorderHandle {
    pub fn send(&self, c: RecorderControl) {
        let _ = self.control.send(c);
    }

    /// A sender for background jobs (image fetches) that outlive a call.
    pub fn sender(&self) -> mpsc::Sender<RecorderControl> {
        self.control.clone()
    }
}

impl Drop for RecorderHandle {
    fn drop(&mut self) {
        let _ = self.control.send(RecorderControl::Stop);
        // The thread reports Finished before it exits; joining here would
        // block the runtime, so it is detached.
        drop(self.thread.take());
    }
}

pub struct RecorderSetup {
    pub task_id: String,
    pub core: CoreSetup,
    pub subscription: Subscription,
    pub room: RoomKey,
    pub registry: Arc<Registry>,
    pub store: Arc<dyn Store>,
    /// The task's folder in the journal of open segments.
    pub journal: Option<std::path::PathBuf>,
    pub metrics: RecorderMetrics,
    pub events: tokio::sync::mpsc::Sender<RecorderEvent>,
    /// Where the thread publishes its cost and lag (`capacity` reads it).
    pub load: Arc<TaskLoad>,
}

/// Starts the recorder thread of a task.
pub fn spawn(setup: RecorderSetup) -> std::io::Result<RecorderHandle> {
    let (control_tx, control_rx) = mpsc::channel();
    let name = format!("rec-{}", &setup.task_id[..setup.task_id.len().min(8)]);
    let thread = std::thread::Builder::new().name(name).spawn(move || {
        let (task_id, metrics) = (setup.task_id.clone(), setup.metrics.clone());
        if !crate::sched::mark_batch_work() {
            tracing::debug!(%task_id, "the kernel kept the recorder thread's scheduling policy");
        }
        // A panic ends the thread; its events channel closes with it, which
        // is how the task's runner learns that it must restart it.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(setup, control_rx)))
            .is_err()
        {
            metrics.panics.inc();
            tracing::error!(%task_id, "the recorder thread panicked");
        }
    })?;
    Ok(RecorderHandle {
        control: control_tx,
        thread: Some(thread),
    })
}

struct Worker {
    task_id: String,
    registry: Arc<Registry>,
    store: Arc<dyn Store>,
    journal: Option<crate::record::journal::SegmentJournal>,
    metrics: RecorderMetrics,
    events: tokio::sync::mpsc::Sender<RecorderEvent>,
    tx: SyncSender<Delivery>,
    /// The room's tracks by (user, kind, session), from the last snapshot.
    offered: HashMap<(String, crate::room::TrackKind, String), Arc<Track>>,
    subscribed: HashMap<u64, Arc<Track>>,
    stored_playlists: HashSet<String>,
    failed_writes: u64,
    storage_full: bool,
    reported: Stats,
    reported_mix: MixStats,
    reported_errors: u64,
    reported_ended_early: u64,
    streams: i64,
    load: Arc<TaskLoad>,
    /// When the input that the actions being carried out answer arrived
    /// (a frame's arrival, a due output tick): segment latency runs from it.
    cause: Instant,
}

impl Drop for Worker {
    /// The gauges are given back however the thread ends (a panic too).
    fn drop(&mut self) {
        self.load.stopped();
        self.metrics.streams.sub(self.streams);
        self.metrics.recorders.dec();
        // The task's series go with it (a panic too).
        for (stage, _) in crate::record::mixed::StageTimes::default().seconds() {
            let _ = self
                .metrics
                .mix_stage_seconds
                .remove_label_values(&[self.task_id.as_str(), stage]);
        }
    }
}

fn run(setup: RecorderSetup, control: mpsc::Receiver<RecorderControl>) {
    let RecorderSetup {
        task_id,
        core,
        subscription,
        room,
        registry,
        store,
        journal,
        metrics,
        events,
        load,
    } = setup;
    metrics.recorders.inc();
    load.started();
    let (tx, rx) = mpsc::sync_channel::<Delivery>(CHANNEL_CAPACITY);
    // Holding the watch keeps the room (and its version counter) alive.
    let watch = registry.watch(&room);
    let mut core = match core {
        CoreSetup::Single(settings) => {
            Core::Single(Box::new(SingleRecorder::new(settings, subscription)))
        }
        CoreSetup::Mixed {
            settings,
            layout,
            compositor,
            encoder,
        } => match MixedRecorder::new(*settings, subscription, layout, compositor, encoder) {
            Ok(c) => Core::Mixed(Box::new(c)),
            Err(e) => {
                tracing::error!(%task_id, error = %e, "mixed recorder could not start");
                metrics.recorders.dec();
                let _ = events.blocking_send(RecorderEvent::Finished { failed_writes: 1 });
                return;
            }
        },
    };
    let mut w = Worker {
        task_id,
        registry,
        store,
        journal: journal.map(crate::record::journal::SegmentJournal::new),
        metrics,
        events,
        tx,
        offered: HashMap::new(),
        subscribed: HashMap::new(),
        stored_playlists: HashSet::new(),
        failed_writes: 0,
        storage_full: false,
        reported: Stats::default(),
        reported_mix: MixStats::default(),
        reported_errors: 0,
        reported_ended_early: 0,
        streams: 0,
        load,
        cause: Instant::now(),
    };
    let mut seen_version = None;
    'outer: loop {
        crate::faults::recorder_checkpoint(&w.task_id);
        let mut force = false;
        loop {
            match control.try_recv() {
                Ok(RecorderControl::Stop) | Err(TryRecvError::Disconnected) => break 'outer,
                Ok(c) => {
                    force |= matches!(c, RecorderControl::Subscription(_));
                    core.control(c);
                }
                Err(TryRecvError::Empty) => break,
            }
        }
        let version = watch.version.load(Ordering::Acquire);
        if force || seen_version != Some(version) {
            seen_version = Some(version);
            // Frames queued before the room changed were delivered while
            // their tracks still published: record them before the change
            // can end their subscriptions. (A recorder running behind — a
            // loaded box — lost the last seconds of every user who left.)
            while let Ok(d) = rx.try_recv() {
                w.took(&d);
                let actions = core.on_frame(d);
                w.execute(actions);
            }
            let offered = w.snapshot(&room);
            let actions = core.reconcile(&offered);
            w.execute(actions);
        }
        match rx.recv_timeout(core.wait()) {
            Ok(d) => {
                w.took(&d);
                let actions = core.on_frame(d);
                w.execute(actions);
                // Take what is queued before looking at controls again.
                for _ in 0..256 {
                    match rx.try_recv() {
                        Ok(d) => {
                            w.took(&d);
                            let actions = core.on_frame(d);
                            w.execute(actions);
                        }
                        Err(_) => break,
                    }
                }
                if matches!(core, Core::Single(_)) {
                    std::thread::sleep(SINGLE_BATCH);
                }
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                // Nothing queued: a single-stream recorder is level with
                // real time.
                if matches!(core, Core::Single(_)) {
                    w.load.set_behind(Duration::ZERO);
                }
            }
        }
        if let Core::Mixed(_) = core {
            let behind = core.output_behind();
            w.load.set_behind(behind);
            w.cause = Instant::now()
                .checked_sub(behind)
                .unwrap_or_else(Instant::now);
        }
        let actions = core.tick();
        w.execute(actions);
        w.update_stats(&core);
    }
    // Record what is already queued, then close every file.
    while let Ok(d) = rx.try_recv() {
        let actions = core.on_frame(d);
        w.execute(actions);
    }
    let actions = core.finish();
    w.execute(actions);
    w.update_stats(&core);
    let mix = core.mix_stats();
    tracing::info!(task_id = %w.task_id, failed_writes = w.failed_writes, stages = ?mix.stages,
        hold_wait_ms = mix.hold_wait_us / 1000, "recorder finished");
    let _ = w.events.blocking_send(RecorderEvent::Finished {
        failed_writes: w.failed_writes,
    });
}

impl Worker {
    /// A frame is taken from the channel: what it causes runs from its
    /// arrival, and its wait is how far this recorder is behind.
    fn took(&mut self, d: &Delivery) {
        self.cause = d.frame.received_at;
        self.load.set_behind(d.frame.received_at.elapsed());
    }

    fn snapshot(&mut self, room: &RoomKey) -> Vec<OfferedTrack> {
        self.offered.clear();
        let mut offered = Vec::new();
        for (user_id, tracks) in self.registry.snapshot(room) {
            for t in tracks {
                offered.push(OfferedTrack {
                    user_id: user_id.clone(),
                    kind: t.kind,
                    session_id: t.session_id().to_owned(),
                });
                self.offered
                    .insert((user_id.clone(), t.kind, t.session_id().to_owned()), t);
            }
        }
        offered
    }

    fn event(&self, e: RecorderEvent) {
        // The runner is gone only when the task is being torn down.
        let _ = self.events.blocking_send(e);
    }

    fn execute(&mut self, actions: Vec<Action>) {
        for a in actions {
            match a {
                Action::Subscribe {
                    tag,
                    user_id,
                    kind,
                    session_id,
                } => {
                    if let Some(track) = self.offered.get(&(user_id.clone(), kind, session_id)) {
                        track.subscribe_shared(self.tx.clone(), tag, self.registry.observer());
                        self.subscribed.insert(tag, track.clone());
                        tracing::info!(task_id = %self.task_id, user_id, kind = kind.label(), "recording track");
                    }
                }
                Action::Unsubscribe { tag } => {
                    if let Some(track) = self.subscribed.remove(&tag) {
                        track.unsubscribe(tag);
                    }
                }
                Action::Store { key, data } => {
                    if self.put(&key, &data) {
                        self.metrics.segments.inc();
                        self.metrics
                            .segment_latency
                            .observe(self.cause.elapsed().as_secs_f64());
                        if let Some(j) = self.journal.as_mut() {
                            j.stored(&key);
                        }
                    }
                }
                Action::Journal(write) => {
                    if let Some(j) = self.journal.as_mut() {
                        if let Err(e) = j.write(&write) {
                            self.metrics.journal_failures.inc();
                            tracing::warn!(task_id = %self.task_id, error = %e, "open segment not journaled");
                        }
                    }
                }
                Action::StorePlaylist { key, text, file } => {
                    if self.put(&key, text.as_bytes())
                        && self.stored_playlists.insert(file.file_name.clone())
                    {
                        self.event(RecorderEvent::PlaylistStored(file));
                    }
                }
                Action::FileSliced(file) => self.event(RecorderEvent::FileSliced(file)),
                Action::RequestKeyframe { tag } => {
                    if let Some(track) = self.subscribed.get(&tag) {
                        track.request_keyframe(self.registry.observer());
                        self.metrics.keyframe_requests.inc();
                    }
                }
                Action::MediaStarted => self.event(RecorderEvent::MediaStarted),
                Action::StreamRefused { user_id, media } => {
                    self.metrics.streams_refused.inc();
                    tracing::warn!(task_id = %self.task_id, user_id, media = media.as_str(),
                        limit = crate::record::single::MAX_STREAMS,
                        "stream not recorded: the task already records the maximum number of streams");
                }
            }
        }
    }

    fn put(&mut self, key: &str, data: &[u8]) -> bool {
        let started = Instant::now();
        let written = self.store.put(key, data);
        self.metrics
            .store_write
            .observe(started.elapsed().as_secs_f64());
        match written {
            Ok(()) => {
                self.metrics.bytes.inc_by(data.len() as u64);
                true
            }
            Err(e) => {
                if matches!(e, crate::output::StoreError::Full(_)) && !self.storage_full {
                    self.storage_full = true;
                    self.event(RecorderEvent::StorageFull {
                        error: e.to_string(),
                    });
                }
                self.failed_writes += 1;
                self.metrics.write_failures.inc();
                tracing::error!(task_id = %self.task_id, key, error = %e, cause = ?std::error::Error::source(&e), "recording file could not be written");
                false
            }
        }
    }

    fn update_stats(&mut self, core: &Core) {
        let m = core.mix_stats();
        let r = self.reported_mix;
        self.metrics.mix_ticks.inc_by(m.ticks - r.ticks);
        let me = &self.metrics.mix_events;
        for (label, now, before) in [
            (
                "output_dropped",
                m.output_frames_dropped,
                r.output_frames_dropped,
            ),
            ("tick_skipped", m.ticks_skipped, r.ticks_skipped),
            ("decode_error", m.decode_errors, r.decode_errors),
            ("frame_dropped", m.frames_dropped, r.frames_dropped),
            ("encode_error", m.encode_errors, r.encode_errors),
            ("compose_error", m.compose_errors, r.compose_errors),
        ] {
            me.with_label_values(&[label]).inc_by(now - before);
        }
        let seconds = m.stages.seconds();
        for ((stage, now), (_, before)) in seconds.iter().zip(r.stages.seconds()) {
            if *now > before {
                self.metrics
                    .mix_stage_seconds
                    .with_label_values(&[self.task_id.as_str(), stage])
                    .inc_by(now - before);
            }
        }
        self.reported_mix = m;
        let s = core.stats();
        let r = self.reported;
        self.metrics.frames.inc_by(s.frames - r.frames);
        self.metrics
            .stray_frames
            .inc_by(s.stray_frames - r.stray_frames);
        let ce = &self.metrics.clock_events;
        ce.with_label_values(&["arrival_fallback"])
            .inc_by(s.clock_fallbacks - r.clock_fallbacks);
        ce.with_label_values(&["reanchor"])
            .inc_by(s.reanchors - r.reanchors);
        ce.with_label_values(&["report_refused"])
            .inc_by(s.reports_refused - r.reports_refused);
        ce.with_label_values(&["overflow"])
            .inc_by(s.clock_overflows - r.clock_overflows);
        self.reported = s;
        let errors = core.stream_errors();
        self.metrics
            .media_errors
            .inc_by(errors.saturating_sub(self.reported_errors));
        self.reported_errors = errors;
        let ended = core.segments_ended_early();
        self.metrics
            .segments_ended_early
            .inc_by(ended.saturating_sub(self.reported_ended_early));
        self.reported_ended_early = ended;
        let streams = core.active_streams() as i64;
        self.metrics.streams.add(streams - self.streams);
        self.streams = streams;
        let video = self
            .subscribed
            .values()
            .filter(|t| t.kind.is_video())
            .count();
        let audio = self.subscribed.len() - video;
        self.load.set_streams(
            u32::try_from(video).unwrap_or(u32::MAX),
            u32::try_from(audio).unwrap_or(u32::MAX),
        );
        self.load
            .set_output_frames_dropped(m.ticks_skipped + m.output_frames_dropped);
        self.load.set_thread_cpu(thread_cpu_time());
    }
}
