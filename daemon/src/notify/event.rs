//! Callback events: body and signature exactly as spec §7.
//!
//! ```json
//! {"EventGroupId":3,"EventType":301,"CallbackTs":1700000000123,
//!  "EventInfo":{"RoomId":1234,"EventTs":1700000000,"EventMsTs":1700000000123,
//!               "UserId":"<bot>","TaskId":"<task>","Payload":{"Status":0}}}
//! ```
//!
//! `Sign` = base64(HMAC-SHA256(callback_key, raw body)). The body is built
//! once, when the event happens, and stored with its signature; retries send
//! the same bytes, so receivers can de-duplicate on the body (delivery is
//! at-least-once). `CallbackTs` is therefore the time the event was queued.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::domain::params::RoomId;
use crate::domain::task::LeaveCode;

pub const EVENT_GROUP_CLOUD_RECORDING: u32 = 3;

/// The event types of spec §7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum EventType {
    RecorderStart = 301,
    RecorderStop = 302,
    UploadStart = 303,
    FileInfo = 304,
    UploadStop = 305,
    Failover = 306,
    FileSlice = 307,
    UploadError = 308,
    DownloadImageError = 309,
    Mp4Stop = 310,
    VodCommit = 311,
    VodStop = 312,
}

/// Who an event is about.
#[derive(Debug, Clone)]
pub struct EventSubject<'a> {
    pub room: &'a RoomId,
    pub bot_user_id: &'a str,
    pub task_id: &'a str,
}

/// The raw JSON body of a callback.
pub fn body(event: EventType, subject: &EventSubject<'_>, payload: Value, now_ms: u64) -> String {
    json!({
        "EventGroupId": EVENT_GROUP_CLOUD_RECORDING,
        "EventType": event as u32,
        "CallbackTs": now_ms,
        "EventInfo": {
            "RoomId": subject.room.to_json(),
            "EventTs": now_ms / 1000,
            "EventMsTs": now_ms,
            "UserId": subject.bot_user_id,
            "TaskId": subject.task_id,
            "Payload": payload,
        }
    })
    .to_string()
}

/// The `Sign` header: base64(HMAC-SHA256(key, body)).
pub fn sign(key: &str, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    mac.update(body.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub fn recorder_start(status: u8) -> (EventType, Value) {
    (EventType::RecorderStart, json!({ "Status": status }))
}

pub fn recorder_stop(code: LeaveCode) -> (EventType, Value) {
    (EventType::RecorderStop, json!({ "LeaveCode": code as u8 }))
}

pub fn upload_start(status: u8) -> (EventType, Value) {
    (EventType::UploadStart, json!({ "Status": status }))
}

/// 304: a playlist landed in storage for the first time.
pub fn file_info(playlist: &str) -> (EventType, Value) {
    (EventType::FileInfo, json!({ "FileList": playlist }))
}

/// 305: 0 all files stored, 1 some could not be.
pub fn upload_stop(status: u8) -> (EventType, Value) {
    (EventType::UploadStop, json!({ "Status": status }))
}

/// 306: the task resumed on this recorder (after a daemon restart).
pub fn failover(status: u8) -> (EventType, Value) {
    (EventType::Failover, json!({ "Status": status }))
}

/// 307: a playlist's first segment was cut.
pub fn file_slice(
    playlist: &str,
    user_id: &str,
    track_type: &str,
    begin_ms: u64,
) -> (EventType, Value) {
    (
        EventType::FileSlice,
        json!({
            "FileName": playlist,
            "UserId": user_id,
            "TrackType": track_type,
            "BeginTimeStamp": begin_ms,
        }),
    )
}

/// 309: an image of the mixed layout (watermark, background,
/// placeholder) could not be downloaded; the recording goes on without it.
pub fn download_image_error(url: &str, reason: &str) -> (EventType, Value) {
    // `Url` is Tencent's field; `Reason` is kiroku's (why: a refused
    // address, a status, a timeout), which Tencent's receivers ignore.
    (
        EventType::DownloadImageError,
        json!({ "Url": url, "Reason": reason }),
    )
}

/// 308: the storage service refused or failed an upload; `Code` and
/// `Message` are the service's own (or a transport error's).
pub fn upload_error(code: &str, message: &str) -> (EventType, Value) {
    (
        EventType::UploadError,
        json!({ "Code": code, "Message": message }),
    )
}

/// 310: the MP4 (or AAC) conversion ended. Status 0 every file stored,
/// 1 some files are still waiting for upload, 2 the conversion failed.
pub fn mp4_stop(status: u8, files: &[String]) -> (EventType, Value) {
    (
        EventType::Mp4Stop,
        json!({ "Status": status, "FileList": files }),
    )
}

/// The fields of one 311 (VOD_COMMIT) callback.
#[derive(Debug, Clone, Default)]
pub struct VodCommit<'a> {
    /// 0 ok, 1 stranded, 2 failed.
    pub status: u8,
    /// Empty in mixed mode.
    pub user_id: &'a str,
    pub track_type: &'a str,
    pub media_id: &'a str,
    pub file_id: &'a str,
    pub video_url: &'a str,
    pub cache_file: &'a str,
    pub errmsg: &'a str,
}

/// 311: one recording file is in the VOD store.
pub fn vod_commit(c: &VodCommit<'_>) -> (EventType, Value) {
    (
        EventType::VodCommit,
        json!({
            "Status": c.status,
            "UserId": c.user_id,
            "TrackType": c.track_type,
            "MediaId": c.media_id,
            "FileId": c.file_id,
            "VideoUrl": c.video_url,
            "CacheFile": c.cache_file,
            "Errmsg": c.errmsg,
        }),
    )
}

/// 312: the VOD job ended (0 ok, 1 failed).
pub fn vod_stop(status: u8) -> (EventType, Value) {
    (EventType::VodStop, json!({ "Status": status }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_matches_the_spec_shape() {
        let room = RoomId::Int(1234);
        let subject = EventSubject {
            room: &room,
            bot_user_id: "bot",
            task_id: "t1",
        };
        let (ty, payload) = recorder_stop(LeaveCode::Idle);
        let b = body(ty, &subject, payload, 1_700_000_000_123);
        let v: Value = serde_json::from_str(&b).expect("json");
        assert_eq!(
            v,
            json!({"EventGroupId":3,"EventType":302,"CallbackTs":1_700_000_000_123u64,
                   "EventInfo":{"RoomId":1234,"EventTs":1_700_000_000u64,"EventMsTs":1_700_000_000_123u64,
                                "UserId":"bot","TaskId":"t1","Payload":{"LeaveCode":99}}})
        );
        let str_room = RoomId::Str("1234".into());
        let b = body(
            EventType::RecorderStart,
            &EventSubject {
                room: &str_room,
                ..subject
            },
            json!({"Status": 0}),
            0,
        );
        assert!(b.contains(r#""RoomId":"1234""#), "{b}");
    }

    #[test]
    fn sign_is_base64_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            sign("Jefe", "what do ya want for nothing?"),
            base64::engine::general_purpose::STANDARD.encode(
                hex::decode("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
                    .expect("hex")
            )
        );
    }
}
