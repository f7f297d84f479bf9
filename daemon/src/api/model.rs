//! Raw request bodies of the four actions, field for field as Tencent's
//! SDKs send them (`tencentcloud.trtc.v20190722.models`).
//!
//! These structs only give the JSON a shape: every field is optional and
//! nothing is checked here beyond JSON types. `api::validate` turns them
//! into the domain types of `domain::params`; nothing downstream looks at
//! these again. Unknown fields are refused (`UnknownParameter`), as
//! Tencent's gateway does.

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CreateCloudRecordingRequest {
    pub sdk_app_id: Option<i64>,
    pub room_id: Option<String>,
    pub user_id: Option<String>,
    pub user_sig: Option<String>,
    pub record_params: Option<RecordParams>,
    pub storage_params: Option<StorageParams>,
    pub room_id_type: Option<i64>,
    pub mix_transcode_params: Option<MixTranscodeParams>,
    pub mix_layout_params: Option<MixLayoutParams>,
    pub resource_expired_hour: Option<i64>,
    pub private_map_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct DescribeCloudRecordingRequest {
    pub sdk_app_id: Option<i64>,
    pub task_id: Option<String>,
    pub recorder_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct ModifyCloudRecordingRequest {
    pub sdk_app_id: Option<i64>,
    pub task_id: Option<String>,
    pub mix_layout_params: Option<MixLayoutParams>,
    pub subscribe_stream_user_ids: Option<SubscribeStreamUserIds>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct DeleteCloudRecordingRequest {
    pub sdk_app_id: Option<i64>,
    pub task_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct RecordParams {
    pub record_mode: Option<i64>,
    pub max_idle_time: Option<i64>,
    pub stream_type: Option<i64>,
    pub subscribe_stream_user_ids: Option<SubscribeStreamUserIds>,
    pub output_format: Option<i64>,
    pub av_merge: Option<i64>,
    pub max_media_file_duration: Option<i64>,
    pub media_id: Option<i64>,
    pub fill_type: Option<i64>,
    pub subscribe_ability: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct SubscribeStreamUserIds {
    pub subscribe_audio_user_ids: Option<Vec<String>>,
    pub un_subscribe_audio_user_ids: Option<Vec<String>>,
    pub subscribe_video_user_ids: Option<Vec<String>>,
    pub un_subscribe_video_user_ids: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct StorageParams {
    pub cloud_storage: Option<CloudStorage>,
    pub cloud_vod: Option<CloudVod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CloudStorage {
    pub vendor: Option<i64>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub file_name_prefix: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct CloudVod {
    pub tencent_vod: Option<TencentVod>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct TencentVod {
    pub procedure: Option<String>,
    pub expire_time: Option<i64>,
    pub storage_region: Option<String>,
    pub class_id: Option<i64>,
    pub sub_app_id: Option<i64>,
    pub session_context: Option<String>,
    pub source_context: Option<String>,
    pub media_type: Option<i64>,
    pub user_define_record_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct MixTranscodeParams {
    pub video_params: Option<VideoParams>,
    pub audio_params: Option<AudioParams>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct VideoParams {
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub fps: Option<i64>,
    pub bit_rate: Option<i64>,
    pub gop: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct AudioParams {
    pub sample_rate: Option<i64>,
    pub channel: Option<i64>,
    pub bit_rate: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct MixLayoutParams {
    pub mix_layout_mode: Option<i64>,
    pub mix_layout_list: Option<Vec<MixLayout>>,
    pub back_ground_color: Option<String>,
    pub max_resolution_user_id: Option<String>,
    pub media_id: Option<i64>,
    pub background_image_url: Option<String>,
    pub place_holder_mode: Option<i64>,
    pub background_image_render_mode: Option<i64>,
    pub default_sub_background_image: Option<String>,
    pub water_mark_list: Option<Vec<WaterMark>>,
    pub render_mode: Option<i64>,
    pub max_resolution_user_align: Option<i64>,
    pub pure_audio_disable_layout: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct MixLayout {
    pub top: Option<i64>,
    pub left: Option<i64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub user_id: Option<String>,
    pub alpha: Option<i64>,
    pub render_mode: Option<i64>,
    pub media_id: Option<i64>,
    pub image_layer: Option<i64>,
    pub sub_background_image: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct WaterMark {
    pub water_mark_type: Option<i64>,
    pub water_mark_image: Option<WaterMarkImage>,
    pub water_mark_char: Option<WaterMarkChar>,
    pub water_mark_timestamp: Option<WaterMarkTimestamp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct WaterMarkImage {
    pub water_mark_url: Option<String>,
    pub top: Option<i64>,
    pub left: Option<i64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct WaterMarkChar {
    pub top: Option<i64>,
    pub left: Option<i64>,
    pub width: Option<i64>,
    pub height: Option<i64>,
    pub chars: Option<String>,
    pub font_size: Option<i64>,
    pub font_color: Option<String>,
    pub back_ground_color: Option<String>,
    pub font: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "PascalCase")]
pub struct WaterMarkTimestamp {
    pub pos: Option<i64>,
    pub time_zone: Option<i64>,
    pub font: Option<String>,
}
