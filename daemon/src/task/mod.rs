//! Recording tasks, the orchestrator above the recorders, storage and
//! callbacks: the task table and the API operations (`manager`), one
//! runner per task (`runner`), the end-of-task work (`finish`), layout
//! images (`images`), the lifecycle and idle rules, which outputs a task
//! produces (`outputs`), and the typed errors the API maps to Tencent's
//! codes (`error`).

mod finish;
mod images;
mod runner;

pub mod error;
pub mod idle;
pub mod lifecycle;
pub mod manager;
pub mod outputs;
