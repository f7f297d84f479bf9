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

use crate::task::params::RoomId;

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

/// `LeaveCode` of RECORDER_STOP (302).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[repr(u8)]
pub enum LeaveCode {
    /// Stopped by DeleteCloudRecording.
    ApiStop = 0,
    BotKickedByClient = 1,
    RoomDismissedByClient = 2,
    BotKickedByServer = 3,
    RoomDismissedByServer = 4,
    /// No publisher for MaxIdleTime.
    Idle = 99,
    RoomTimeout = 100,
    /// A new task joined the room with the same bot UserId.
    SameUserIdEntered = 101,
}

impl LeaveCode {
    /// A bounded metrics label.
    pub fn label(self) -> &'static str {
        match self {
            LeaveCode::ApiStop => "api",
            LeaveCode::BotKickedByClient => "kicked_by_client",
            LeaveCode::RoomDismissedByClient => "dismissed_by_client",
            LeaveCode::BotKickedByServer => "kicked_by_server",
            LeaveCode::RoomDismissedByServer => "dismissed_by_server",
            LeaveCode::Idle => "idle",
            LeaveCode::RoomTimeout => "room_timeout",
            LeaveCode::SameUserIdEntered => "same_user_id",
        }
    }
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
pub fn download_image_error(url: &str) -> (EventType, Value) {
    (EventType::DownloadImageError, json!({ "Url": url }))
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
