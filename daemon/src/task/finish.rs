//! The end of a task: packing its HLS into MP4/AAC files or VOD entries,
//! draining its uploads, and the callbacks that report both. The decision
//! of what to report is a pure function ([`end_of_task_callbacks`]); the
//! packing thread, the stores and the upload drain are the thin IO edge
//! around it.

use std::sync::Arc;

use serde_json::Value;

use super::manager::{callback_context, Manager};
use crate::clock;
use crate::domain::params::{RecordMode, Storage};
use crate::domain::task::TaskRecord;
use crate::media::mp4::SplitLimits;
use crate::notify::event::{self, EventType};
use crate::output::convert::{
    convert_folder, ConvertFormat, ConvertReport, ConvertRequest, ConvertedFile,
};
use crate::output::vod::{VodEntry, VodStore};
use crate::task::outputs::{task_folder, OutputPlan};

impl Manager {
    /// The end of a task's outputs, once its recorder has closed its
    /// files: packing (MP4/AAC, VOD), uploads drained, and the callbacks
    /// that report them (305; 310; 311 and 312, chosen by
    /// [`end_of_task_callbacks`]). Also run for a task that was ending when
    /// the daemon stopped: every step can run twice.
    pub(super) async fn finish_outputs(&self, task_id: &str, failed_writes: u64) {
        let Some(record) = self.record_of(task_id) else {
            return;
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
        let callbacks = end_of_task_callbacks(
            &plan,
            upload_status,
            packed.as_ref(),
            &self.inner.config.server.public_url,
        );
        for cb in callbacks {
            self.task_event(task_id, |_| {}, Some(cb)).await;
        }
        let Some(packed) = packed else {
            return;
        };
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
    async fn pack(&self, record: &TaskRecord, plan: &OutputPlan, packing: ConvertFormat) -> Packed {
        let spec = &record.spec;
        let task_id = record.task_id.clone();
        let folder = task_folder(spec.storage.file_name_prefix(), &task_id);
        let root = if plan.staging { "staging" } else { "storage" };
        let source_dir = self.inner.config.data_dir.join(root).join(&folder);
        let request = ConvertRequest {
            format: packing,
            limits: SplitLimits::from_max_media_file_minutes(spec.record.max_media_file_minutes),
            mixed: spec.record.mode == RecordMode::Mixed,
            sdk_app_id: spec.sdk_app_id,
            room: spec.room.clone(),
            scratch: self.inner.config.data_dir.join("packing"),
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
        // One place of the packing pool for the whole job: a burst of
        // ending tasks packs `limits.packing_jobs` at a time (each job
        // reads and writes a whole recording: they would only compete
        // for the disk), the others wait.
        let waiting = self.inner.packing.available_permits() == 0;
        if waiting {
            tracing::info!(task_id = %task_id, "waiting for a packing place (limits.packing_jobs)");
        }
        let permit = self.inner.packing.clone().acquire_owned().await.ok();
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
                            .put_content(&format!("{folder}/{}", f.name), f.file.content())
                            .map_err(|e| format!("{e}")),
                        Sink::Vod(store, keep_s) => {
                            let now = clock::unix_secs();
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
                                .commit_content(f.file.content(), entry)
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
                drop(permit);
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
}

/// What end-of-task packing produced.
pub(super) struct Packed {
    report: ConvertReport,
    /// Files committed to the VOD store.
    vod: Vec<VodEntry>,
    /// Files made but not stored: (name, why).
    failed: Vec<(String, String)>,
    /// Where the HLS was read from.
    source_dir: std::path::PathBuf,
}

/// The callbacks that end a task's outputs, in order: 305 (uploads: 0 all
/// stored, 1 something not stored yet), then for VOD one 311 per committed
/// file, one 311 (status 2) per file that could not be committed and 312;
/// otherwise 310 with the packed file names (status 1 when packing went
/// right but uploads did not). Pure: what happened in, callbacks out.
pub(super) fn end_of_task_callbacks(
    plan: &OutputPlan,
    upload_status: u8,
    packed: Option<&Packed>,
    public_url: &str,
) -> Vec<(EventType, Value)> {
    let mut out = vec![event::upload_stop(upload_status)];
    let Some(packed) = packed else {
        return out;
    };
    if plan.vod {
        for f in &packed.vod {
            let url = format!("{public_url}/vod/{}.mp4", f.file_id);
            out.push(event::vod_commit(&event::VodCommit {
                status: 0,
                user_id: &f.user_id,
                track_type: &f.track_type,
                media_id: &f.media_id,
                file_id: &f.file_id,
                video_url: &url,
                cache_file: &f.cache_file,
                errmsg: "",
            }));
        }
        for (name, error) in &packed.failed {
            out.push(event::vod_commit(&event::VodCommit {
                status: 2,
                cache_file: name,
                errmsg: error,
                ..Default::default()
            }));
        }
        let ok = packed.report.status() == 0 && packed.failed.is_empty();
        out.push(event::vod_stop(u8::from(!ok)));
    } else {
        let names: Vec<String> = packed.report.files.iter().map(|f| f.name.clone()).collect();
        let mut status = packed.report.status();
        if status == 0 && upload_status != 0 {
            status = 1;
        }
        out.push(event::mp4_stop(status, &names));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::convert::DeliveredFile;

    fn plan(vod: bool) -> OutputPlan {
        OutputPlan {
            hls: !vod,
            packing: Some(ConvertFormat::Mp4),
            staging: vod,
            vod,
        }
    }

    fn packed(files: &[&str], vod: Vec<VodEntry>, failed: Vec<(String, String)>) -> Packed {
        Packed {
            report: ConvertReport {
                files: files
                    .iter()
                    .map(|n| DeliveredFile {
                        name: (*n).to_owned(),
                        size: 1,
                        duration_ms: 1,
                    })
                    .collect(),
                playlists: 1,
                ..ConvertReport::default()
            },
            vod,
            failed,
            source_dir: std::path::PathBuf::from("/nowhere"),
        }
    }

    fn types(cbs: &[(EventType, Value)]) -> Vec<u32> {
        cbs.iter().map(|(t, _)| *t as u32).collect()
    }

    #[test]
    fn hls_only_reports_the_upload_end_alone() {
        let plan = OutputPlan {
            packing: None,
            ..plan(false)
        };
        let cbs = end_of_task_callbacks(&plan, 1, None, "http://box");
        assert_eq!(types(&cbs), [305]);
        assert_eq!(cbs[0].1["Status"], 1);
    }

    #[test]
    fn mp4_reports_its_files_and_the_upload_status_lowers_its_own() {
        let p = packed(&["a.mp4", "b.mp4"], Vec::new(), Vec::new());
        let cbs = end_of_task_callbacks(&plan(false), 0, Some(&p), "http://box");
        assert_eq!(types(&cbs), [305, 310]);
        assert_eq!(cbs[1].1["Status"], 0);
        assert_eq!(cbs[1].1["FileList"], serde_json::json!(["a.mp4", "b.mp4"]));
        // Packed fine but not all uploaded: 310 says 1.
        let cbs = end_of_task_callbacks(&plan(false), 1, Some(&p), "http://box");
        assert_eq!(cbs[1].1["Status"], 1);
    }

    #[test]
    fn vod_reports_each_commit_each_failure_then_the_end() {
        let entry = VodEntry {
            file_id: "f1".into(),
            task_id: "t".into(),
            user_id: "u".into(),
            track_type: "audio_video".into(),
            media_id: "main".into(),
            cache_file: "a.mp4".into(),
            size: 1,
            created_unix_s: 0,
            expire_at_unix_s: 0,
        };
        let p = packed(
            &["a.mp4"],
            vec![entry],
            vec![("b.mp4".into(), "disk full".into())],
        );
        let cbs = end_of_task_callbacks(&plan(true), 0, Some(&p), "http://box");
        assert_eq!(types(&cbs), [305, 311, 311, 312]);
        assert_eq!(cbs[1].1["Status"], 0);
        assert_eq!(cbs[1].1["VideoUrl"], "http://box/vod/f1.mp4");
        assert_eq!(cbs[2].1["Status"], 2);
        assert_eq!(cbs[3].1["Status"], 1, "a failed commit fails the VOD end");
    }
}
