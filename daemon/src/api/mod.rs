//! The Tencent-compatible REST API (`POST /`, `X-TC-Action` routing).
//!
//! `tc3` (signature), `model` (wire shapes), `validate` (wire → domain),
//! `error` (codes), `replay` (signature → action binding) are pure, as is
//! the crate's `ratelimit`; `http` is the axum edge that ties
//! them to the task manager.

pub mod error;
pub mod forward;
pub mod http;
pub mod model;
pub mod replay;
pub mod tc3;
pub mod validate;

/// `X-TC-Version` of the TRTC API.
pub const API_VERSION: &str = "2019-07-22";
/// The service Tencent signs TRTC requests for (its own endpoint requires
/// it; kiroku accepts the label an SDK states, see `tc3::verify`).
pub const SERVICE: &str = "trtc";

/// The four actions, plus a label for everything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Describe,
    Modify,
    Delete,
}

impl Action {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "CreateCloudRecording" => Some(Action::Create),
            "DescribeCloudRecording" => Some(Action::Describe),
            "ModifyCloudRecording" => Some(Action::Modify),
            "DeleteCloudRecording" => Some(Action::Delete),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::Create => "CreateCloudRecording",
            Action::Describe => "DescribeCloudRecording",
            Action::Modify => "ModifyCloudRecording",
            Action::Delete => "DeleteCloudRecording",
        }
    }
}
