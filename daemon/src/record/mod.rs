//! The recorders: what turns a room's media into HLS files for one task.
//!
//! ```text
//!   room fan-out ──▶ worker (thread) ──▶ single | mixed (sans-IO cores) ──▶ actions ──▶ output::Store
//!                       ▲ build (from the task record)    ▲ timeline, subscribe
//! ```
//!
//! - `single` (one HLS stream per user and media) and `mixed` (one
//!   composited stream) are pure cores: frames and time in, files and
//!   events out. `timeline` maps each user's RTP clocks onto the shared
//!   server timeline; `subscribe` decides which tracks a task records.
//! - `action` is what both cores hand the worker (actions, file reports,
//!   counters).
//! - `worker` is the IO edge: one thread per task, the bounded frame
//!   channel, store writes, metrics, events to the task runner. `build`
//!   puts a recorder together from a task record; `compose` hands out
//!   compositors (per task on the CPU, or the shared wgpu service).
//! - `load` is what each recorder costs and how far behind it runs, read
//!   by `capacity` (admission, `/v1/capacity`, metrics).
//!
//! Out of scope: when a task starts or stops (`task`), where files end up
//! (`output`), HLS naming and segmenting themselves (`hls`).

pub mod action;
pub mod build;
pub mod compose;
pub mod journal;
pub mod load;
pub mod mixed;
pub mod single;
pub mod subscribe;
pub mod timeline;
pub mod worker;
