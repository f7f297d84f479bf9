//! Building a task's recorder: from its record (validated parameters,
//! restarts, creation time) to a running recorder thread of the right kind
//! (single-stream core or mixed core with its compositor and encoder).
//! The task manager decides *when* a recorder runs and where its files go;
//! this module knows *how* one is put together.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::RecordingConfig;
use crate::domain::params::{RecordMode, StreamType};
use crate::domain::task::TaskRecord;
use crate::hls::naming::Naming;
use crate::hls::segmenter::SegmenterConfig;
use crate::record::compose::{open_encoder, CompositorSource};
use crate::record::load::LoadBoard;
use crate::record::mixed::{MixedRecorder, MixedSettings};
use crate::record::single::Settings;
use crate::record::worker::{
    self, CoreSetup, RecorderEvent, RecorderHandle, RecorderMetrics, RecorderSetup,
};
use crate::room::{Registry, RoomKey};

/// A running recorder and what it reports.
pub type Recorder = (RecorderHandle, mpsc::Receiver<RecorderEvent>);

/// What every recorder of the daemon shares: the recording settings, the
/// compositors (one wgpu service for all mixed tasks), the room registry
/// and the metrics.
pub struct RecorderFactory {
    config: RecordingConfig,
    compositors: CompositorSource,
    registry: Arc<Registry>,
    metrics: RecorderMetrics,
    loads: Arc<LoadBoard>,
}

impl RecorderFactory {
    pub fn new(
        config: RecordingConfig,
        registry: Arc<Registry>,
        metrics: RecorderMetrics,
        loads: Arc<LoadBoard>,
    ) -> Self {
        let compositors = CompositorSource::new(config.compositor);
        tracing::info!(compositor = %compositors.description, "mixed-stream compositor");
        Self {
            config,
            compositors,
            registry,
            metrics,
            loads,
        }
    }

    /// What the compositor of mixed tasks is (`cpu` or `wgpu …`).
    pub fn compositor_kind(&self) -> &str {
        &self.compositors.description
    }

    pub fn metrics(&self) -> &RecorderMetrics {
        &self.metrics
    }

    /// Starts a task's recorder thread writing into `store`; `Err` is why
    /// it could not start.
    pub fn start(
        &self,
        record: &TaskRecord,
        room: RoomKey,
        store: Arc<dyn crate::output::Store>,
    ) -> Result<Recorder, String> {
        let spec = &record.spec;
        let cfg = &self.config;
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
            max_keyframe_wait: cfg.max_keyframe_wait,
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
                        Some(crate::faults::encoder(open_encoder(settings).map_err(
                            |e| format!("cannot open the H.264 encoder: {e}"),
                        )?))
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
                        latency_us: i64::try_from(cfg.mix_latency.as_micros()).unwrap_or(i64::MAX),
                        stopwatch: std::time::Instant::now,
                    }),
                    layout: mix.layout.clone(),
                    compositor: self.compositors.create(),
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
            registry: self.registry.clone(),
            store,
            journal: Some(self.config.journal_dir.join(&record.task_id)),
            metrics: self.metrics.clone(),
            events: events_tx,
            load: self.loads.task(&record.task_id),
        };
        worker::spawn(setup)
            .map(|h| (h, events_rx))
            .map_err(|e| format!("cannot start the recorder thread: {e}"))
    }

    /// Releases the shared GPU compositor (joins its thread) before the
    /// process exits; waits at most `timeout`.
    pub fn release(&self, timeout: Duration) {
        self.compositors.release(timeout);
    }
}
