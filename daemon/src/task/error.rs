//! Why a task operation was refused. The API edge maps each to Tencent's
//! error code (`api::error`); the messages say what to do about it.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    #[error("this appliance already runs {running} recording tasks (limits.max_tasks = {limit}); stop one or raise the limit")]
    Concurrency { running: usize, limit: usize },
    #[error("SdkAppId {sdk_app_id} already runs {running} recording tasks (its apps.max_tasks = {limit}); stop one or raise the limit")]
    AppConcurrency {
        sdk_app_id: u32,
        running: usize,
        limit: usize,
    },
    /// Admission by cost (`capacity`): the box is full.
    #[error("{0}")]
    Capacity(String),
    #[error(
        "task {task_id} does not exist for SdkAppId {sdk_app_id} (never created, or already ended)"
    )]
    NotFound { task_id: String, sdk_app_id: u32 },
    #[error("task {task_id} is past its ResourceExpiredHour ({hours} h): it can no longer be queried or changed")]
    Expired { task_id: String, hours: u32 },
    #[error("task {task_id} is exiting and can no longer be modified")]
    Exiting { task_id: String },
    #[error("the state store could not commit the change; retry with the same parameters")]
    Store,
    /// Fleet mode: another box took the task over; this box let it go.
    #[error("task {task_id} now runs on another box of the fleet")]
    Fenced { task_id: String },
}
