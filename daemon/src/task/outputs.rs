//! What a task writes where: from `OutputFormat` (or, for VOD tasks,
//! `TencentVod.MediaType`) and `StorageParams` to the files a recording
//! produces. Pure.
//!
//! | storage | format | HLS to storage | packed at the end | HLS kept in staging |
//! | --- | --- | --- | --- | --- |
//! | local / S3 | hls | yes | — | no |
//! | local | hls+mp4, hls+aac | yes | MP4 / AAC from the stored HLS | no |
//! | S3 | hls+mp4, hls+aac | yes | MP4 / AAC | yes (uploaded files leave the spool) |
//! | local / S3 | mp4, aac | no | MP4 / AAC | yes |
//! | VOD | any MediaType | no | MP4 into the VOD store | yes |
//!
//! kiroku's VOD store serves MP4 files: MediaType 0 mp4, 1 hls and 3
//! hls+mp4 all give one MP4 per user and media (mixed: one); 2 aac and
//! 4 hls+aac (audio-only tasks) give an audio-only MP4 (`.mp4`, M4A
//! brand), which every player that plays the play URL can play.
//!
//! Staging (`data_dir/staging/<object key>`) holds the HLS that no local
//! storage folder holds, until the end-of-task packing has read it.

use crate::domain::params::{OutputFormat, RecordingSpec, Storage, StreamType};
use crate::output::convert::ConvertFormat;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputPlan {
    /// Playlists and segments go to the task's storage (Describe lists
    /// the playlists; 304 reports them).
    pub hls: bool,
    /// Files packed from the HLS when the recording ends (callback 310,
    /// or 311 for VOD).
    pub packing: Option<ConvertFormat>,
    /// The recorder also writes the HLS to the staging folder.
    pub staging: bool,
    /// The packed files go to the VOD store.
    pub vod: bool,
}

impl OutputPlan {
    pub fn of(spec: &RecordingSpec) -> Self {
        match &spec.storage {
            Storage::Vod(_) => OutputPlan {
                hls: false,
                packing: Some(ConvertFormat::Mp4),
                staging: true,
                vod: true,
            },
            storage => {
                let (hls, packing) = match spec.record.output_format {
                    OutputFormat::Hls => (true, None),
                    OutputFormat::HlsMp4 => (true, Some(ConvertFormat::Mp4)),
                    OutputFormat::HlsAac => (true, Some(ConvertFormat::Aac)),
                    OutputFormat::Mp4 => (false, Some(ConvertFormat::Mp4)),
                    OutputFormat::Aac => (false, Some(ConvertFormat::Aac)),
                };
                // Packing reads the HLS from local storage when it is there.
                let local_hls = hls && matches!(storage, Storage::Local);
                OutputPlan {
                    hls,
                    packing,
                    staging: packing.is_some() && !local_hls,
                    vod: false,
                }
            }
        }
    }

    /// Whether the task writes any video at all (an audio-only task's
    /// MP4 is audio-only).
    pub fn audio_only(spec: &RecordingSpec) -> bool {
        spec.record.stream_type == StreamType::AudioOnly
    }
}

/// `<Prefix>/<TaskId>`: the folder of a task's files in any store.
pub fn task_folder(prefix: &[String], task_id: &str) -> String {
    let mut parts: Vec<&str> = prefix.iter().map(String::as_str).collect();
    parts.push(task_id);
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{model, validate};

    fn spec(extra: serde_json::Value) -> RecordingSpec {
        let mut body = serde_json::json!({
            "SdkAppId": 1400000001u32, "RoomId": "12", "UserId": "bot", "UserSig": "sig",
            "RecordParams": {"RecordMode": 1},
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if k == "RecordParams" {
                    if let (Some(rp), Some(add)) = (
                        b.get_mut("RecordParams").and_then(|r| r.as_object_mut()),
                        v.as_object(),
                    ) {
                        for (k2, v2) in add {
                            rp.insert(k2.clone(), v2.clone());
                        }
                    }
                } else {
                    b.insert(k.clone(), v.clone());
                }
            }
        }
        let req: model::CreateCloudRecordingRequest =
            serde_json::from_value(body).expect("request");
        validate::create(req).expect("valid")
    }

    fn s3() -> serde_json::Value {
        serde_json::json!({"CloudStorage": {"Vendor": 1, "Region": "us-east-1", "Bucket": "b",
            "AccessKey": "a", "SecretKey": "s"}})
    }

    #[test]
    fn formats_map_to_outputs() {
        let local = |f: u32| {
            OutputPlan::of(&spec(
                serde_json::json!({"RecordParams": {"OutputFormat": f}}),
            ))
        };
        assert_eq!(
            local(0),
            OutputPlan {
                hls: true,
                packing: None,
                staging: false,
                vod: false
            }
        );
        assert_eq!(
            local(1),
            OutputPlan {
                hls: true,
                packing: Some(ConvertFormat::Mp4),
                staging: false,
                vod: false
            }
        );
        assert_eq!(
            local(3),
            OutputPlan {
                hls: false,
                packing: Some(ConvertFormat::Mp4),
                staging: true,
                vod: false
            }
        );
        let cloud = |f: u32| {
            // The aac formats need an audio-only task.
            let stream_type = if matches!(f, 2 | 4) { 1 } else { 0 };
            OutputPlan::of(&spec(serde_json::json!({
                "RecordParams": {"OutputFormat": f, "StreamType": stream_type},
                "StorageParams": s3()
            })))
        };
        assert_eq!(
            cloud(0),
            OutputPlan {
                hls: true,
                packing: None,
                staging: false,
                vod: false
            }
        );
        assert_eq!(
            cloud(1),
            OutputPlan {
                hls: true,
                packing: Some(ConvertFormat::Mp4),
                staging: true,
                vod: false
            }
        );
        assert_eq!(
            cloud(2),
            OutputPlan {
                hls: true,
                packing: Some(ConvertFormat::Aac),
                staging: true,
                vod: false
            }
        );
        assert_eq!(
            cloud(4),
            OutputPlan {
                hls: false,
                packing: Some(ConvertFormat::Aac),
                staging: true,
                vod: false
            }
        );
        let vod = OutputPlan::of(&spec(
            serde_json::json!({"StorageParams": {"CloudVod": {"TencentVod": {}}}}),
        ));
        assert_eq!(
            vod,
            OutputPlan {
                hls: false,
                packing: Some(ConvertFormat::Mp4),
                staging: true,
                vod: true
            }
        );
    }

    #[test]
    fn task_folder_joins_the_prefix() {
        assert_eq!(task_folder(&[], "t1"), "t1");
        assert_eq!(task_folder(&["p1".into(), "p2".into()], "t1"), "p1/p2/t1");
    }
}
