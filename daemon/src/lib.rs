//! kiroku: an on-premises recording appliance for real-time audio/video
//! rooms, with a REST API wire-compatible with Tencent Cloud TRTC's cloud
//! recording.
//!
//! Module map (see `docs/architecture.md`):
//! - [`config`]: TOML → validated configuration.
//! - [`api`]: the Tencent-compatible REST API (TC3 signatures, validation,
//!   rate limits, the axum edge).
//! - [`auth`]: TRTC UserSig verification.
//! - [`task`]: recording tasks, their parameters and lifecycle.
//! - [`ingest`]: WHIP sessions on str0m; [`room`]: rooms of publishers and
//!   subscriptions to their media; [`media`]: bitstream helpers.
//! - [`notify`]: signed event callbacks from a durable outbox.
//! - [`store`]: the embedded transactional state store.
//! - [`metrics`], [`systemd`], [`server`]: operations.

pub mod api;
pub mod auth;
pub mod config;
pub mod ingest;
pub mod media;
pub mod merge;
pub mod metrics;
pub mod mix;
pub mod notify;
pub mod output;
pub mod publish;
pub mod record;
pub mod room;
pub mod server;
pub mod store;
pub mod systemd;
pub mod task;
