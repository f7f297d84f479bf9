//! Tencent-style API errors: a dotted code and a message naming the field.
//!
//! Every failure a caller can see is an [`ApiError`]; the HTTP layer always
//! answers `200` with `{"Response":{"Error":{"Code","Message"},"RequestId"}}`,
//! because Tencent's SDKs lose the code on any other status. The code is a
//! `&'static str` so that it can be a bounded metrics label.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: Cow<'static, str>,
    pub message: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code: Cow::Borrowed(code),
            message: message.into(),
        }
    }

    /// `MissingParameter[.Suffix]` for a required field that is absent.
    pub fn missing(code: &'static str, field: &str) -> Self {
        Self::new(code, format!("the parameter `{field}` is required"))
    }

    /// `InvalidParameter.OutOfRange` naming the field, the value and what is allowed.
    pub fn out_of_range(field: &str, value: impl std::fmt::Display, allowed: &str) -> Self {
        Self::new(
            codes::OUT_OF_RANGE,
            format!("`{field}` = {value} is out of range: allowed {allowed}"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL, message)
    }
}

impl From<crate::task::error::TaskError> for ApiError {
    fn from(e: crate::task::error::TaskError) -> Self {
        use crate::task::error::TaskError;
        let code = match &e {
            TaskError::Concurrency { .. } | TaskError::AppConcurrency { .. } => {
                codes::RESTRICTED_CONCURRENCY
            }
            TaskError::NotFound { .. } | TaskError::Expired { .. } | TaskError::Exiting { .. } => {
                codes::TASK_NOT_EXIST
            }
            TaskError::Capacity(_) => codes::RESOURCE_INSUFFICIENT,
            TaskError::Store => codes::INTERNAL,
            TaskError::Fenced { .. } => codes::TASK_NOT_EXIST,
        };
        Self::new(code, e.to_string())
    }
}

/// Every error code kiroku answers with (kept in one place so that
/// `docs/api.md` and the metrics label set stay bounded and true).
pub mod codes {
    pub const INVALID_ACTION: &str = "InvalidAction";
    pub const NO_SUCH_VERSION: &str = "NoSuchVersion";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const REQUEST_SIZE_LIMIT: &str = "RequestSizeLimitExceeded";
    pub const REQUEST_LIMIT_EXCEEDED: &str = "RequestLimitExceeded";
    pub const INTERNAL: &str = "InternalError.CRInternalError";

    pub const BODY_PARAMS: &str = "InvalidParameter.BodyParamsError";
    pub const OUT_OF_RANGE: &str = "InvalidParameter.OutOfRange";
    pub const UNKNOWN_PARAMETER: &str = "UnknownParameter";
    pub const INVALID_VALUE: &str = "InvalidParameterValue";
    pub const INVALID_VALUE_ROOM_ID: &str = "InvalidParameterValue.RoomId";
    pub const INVALID_SDK_APP_ID: &str = "InvalidParameter.SdkAppId";
    pub const INVALID_STR_ROOM_ID: &str = "InvalidParameter.StrRoomId";
    pub const INVALID_USER_ID: &str = "InvalidParameter.UserId";
    pub const INVALID_USER_IDS: &str = "InvalidParameter.UserIds";
    pub const INVALID_USER_SIG: &str = "InvalidParameter.UserSig";
    pub const INVALID_TASK_ID: &str = "InvalidParameter.TaskId";
    pub const RECORD_AUDIO_ONLY: &str = "InvalidParameter.RecordAudioOnly";
    pub const VIDEO_RESOLUTION: &str = "InvalidParameter.VideoResolution";
    pub const AUDIO_ENCODE_PARAMS: &str = "InvalidParameter.AudioEncodeParams";
    pub const BACKGROUND_IMAGE_URL: &str = "InvalidParameter.BackgroundImageUrl";
    pub const CHECK_SUFFIX_FAILED: &str = "InvalidParameter.CheckSuffixFailed";
    pub const PRESET_LAYOUT_CONFIG: &str = "InvalidParameter.PresetLayoutConfig";
    pub const STORAGE_PARAMS: &str = "InvalidParameter.StorageParams";
    pub const NOT_FOR_MODE: &str = "InvalidParameter.NotSupportedForRecordMode";
    pub const WATERMARK: &str = "InvalidParameter.WaterMark";

    pub const MISSING: &str = "MissingParameter";
    pub const MISSING_SDK_APP_ID: &str = "MissingParameter.SdkAppId";
    pub const MISSING_ROOM_ID: &str = "MissingParameter.RoomId";
    pub const MISSING_USER_ID: &str = "MissingParameter.UserId";
    pub const MISSING_USER_SIG: &str = "MissingParameter.UserSig";
    pub const MISSING_RECORD_PARAMS: &str = "MissingParameter.RecordParams";
    pub const MISSING_RECORD_MODE: &str = "MissingParameter.RecordMode";
    pub const MISSING_STORAGE_PARAMS: &str = "MissingParameter.StorageParams";
    pub const MISSING_CLOUD_STORAGE: &str = "MissingParameter.CloudStorage";
    pub const MISSING_VENDOR: &str = "MissingParameter.Vendor";
    pub const MISSING_REGION: &str = "MissingParameter.Region";
    pub const MISSING_BUCKET: &str = "MissingParameter.Bucket";
    pub const MISSING_ACCESS_KEY: &str = "MissingParameter.AccessKey";
    pub const MISSING_SECRET_KEY: &str = "MissingParameter.SecretKey";
    pub const MISSING_TASK_ID: &str = "MissingParameter.TaskId";
    pub const MISSING_PRESET_LAYOUT: &str = "MissingParameter.PresetLayoutConfig";

    pub const TASK_NOT_EXIST: &str = "FailedOperation.TaskNotExist";
    pub const RESTRICTED_CONCURRENCY: &str = "FailedOperation.RestrictedConcurrency";
    /// Admission by cost refused a Create (the box is full).
    pub const RESOURCE_INSUFFICIENT: &str = "ResourceInsufficient.RequestRejection";
    pub const SDK_APP_ID_NOT_EXIST: &str = "FailedOperation.SdkAppIdNotExist";
    /// kiroku's own (fleet mode, docs/fleet.md): another box of the fleet
    /// records the room; the message names it. Tencent has no such case.
    pub const ROOM_ON_ANOTHER_BOX: &str = "FailedOperation.RoomOnAnotherBox";

    /// Every code above; the set the `code` metrics label can take
    /// (plus the `AuthFailure.*` codes of `api::tc3` and "Success").
    pub const ALL: &[&str] = &[
        INVALID_ACTION,
        NO_SUCH_VERSION,
        UNSUPPORTED_PROTOCOL,
        REQUEST_SIZE_LIMIT,
        REQUEST_LIMIT_EXCEEDED,
        INTERNAL,
        BODY_PARAMS,
        OUT_OF_RANGE,
        UNKNOWN_PARAMETER,
        INVALID_VALUE,
        INVALID_VALUE_ROOM_ID,
        INVALID_SDK_APP_ID,
        INVALID_STR_ROOM_ID,
        INVALID_USER_ID,
        INVALID_USER_IDS,
        INVALID_USER_SIG,
        INVALID_TASK_ID,
        RECORD_AUDIO_ONLY,
        VIDEO_RESOLUTION,
        AUDIO_ENCODE_PARAMS,
        BACKGROUND_IMAGE_URL,
        CHECK_SUFFIX_FAILED,
        PRESET_LAYOUT_CONFIG,
        STORAGE_PARAMS,
        NOT_FOR_MODE,
        WATERMARK,
        MISSING,
        MISSING_SDK_APP_ID,
        MISSING_ROOM_ID,
        MISSING_USER_ID,
        MISSING_USER_SIG,
        MISSING_RECORD_PARAMS,
        MISSING_RECORD_MODE,
        MISSING_STORAGE_PARAMS,
        MISSING_CLOUD_STORAGE,
        MISSING_VENDOR,
        MISSING_REGION,
        MISSING_BUCKET,
        MISSING_ACCESS_KEY,
        MISSING_SECRET_KEY,
        MISSING_TASK_ID,
        MISSING_PRESET_LAYOUT,
        TASK_NOT_EXIST,
        RESTRICTED_CONCURRENCY,
        SDK_APP_ID_NOT_EXIST,
        ROOM_ON_ANOTHER_BOX,
    ];
}
