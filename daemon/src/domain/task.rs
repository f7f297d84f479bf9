//! What a task is and where it stands: the records every layer talks
//! about (the API answers with them, the state store keeps them, the
//! manager changes them, callbacks report them). No behaviour that does IO.

use serde::{Deserialize, Serialize};

use crate::domain::params::RecordingSpec;

/// Where a task is in its life (spec §3.2: Idle / InProgress / Exited).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Created; no media pulled yet.
    Idle,
    /// Media is being recorded.
    InProgress,
    /// Stopping: files are being finished and uploaded.
    Exited { leave_code: LeaveCode },
}

impl TaskState {
    /// The `Status` string DescribeCloudRecording answers.
    pub fn api_status(self) -> &'static str {
        match self {
            TaskState::Idle => "Idle",
            TaskState::InProgress => "InProgress",
            TaskState::Exited { .. } => "Exited",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: String,
    pub spec: RecordingSpec,
    pub state: TaskState,
    pub created_ms: u64,
    /// Playlists stored so far (Describe's StorageFileList).
    #[serde(default)]
    pub files: Vec<StorageFile>,
    /// How many times the daemon restarted under this task: files written
    /// after the n-th carry the spec's `ha<n>_` prefix (at most 3).
    #[serde(default)]
    pub restarts: u8,
}

/// One `StorageFileList` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StorageFile {
    pub user_id: String,
    pub file_name: String,
    pub track_type: String,
    pub begin_time_stamp: u64,
}

/// `LeaveCode` of RECORDER_STOP (302).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
