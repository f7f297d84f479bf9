//! kiroku: an on-premises recording appliance for real-time audio/video
//! rooms, with a REST API wire-compatible with Tencent Cloud TRTC's cloud
//! recording.
//!
//! Module map, from the ground floor up (imports flow downward only; see
//! `docs/architecture.md`):
//! - [`domain`]: the shared vocabulary (task parameters, records, states,
//!   leave codes); [`config`]: TOML → validated configuration; [`clock`]:
//!   the one wall-clock reader; [`metrics`], [`sync`], [`systemd`];
//!   [`auth`]: TRTC UserSig.
//! - [`media`]: bitstreams (H.264, AAC, TS mux and demux, the MP4 packer);
//!   [`room`]: rooms of publishers and the fan-out of their media;
//!   [`state`]: the transactional state store (embedded or PostgreSQL); [`publish`]:
//!   `kiroku publish`, a synthetic WHIP publisher.
//! - [`hls`]: object names, playlists, segmenting, one HLS stream;
//!   [`notify`]: signed event callbacks from a durable outbox.
//! - [`mix`]: layouts, mixed audio, overlays; [`output`]: storage, spool,
//!   uploads, VOD, end-of-task packing; [`merge`]: `kiroku merge`.
//! - [`record`]: the single-stream and mixed recorders and their threads.
//! - [`task`]: the orchestrator (task table, runners, end-of-task work).
//! - [`api`]: the Tencent-compatible REST API; [`ingest`]: WHIP sessions
//!   on str0m; [`http_edge`]: the HTTP listener's connection limits and
//!   timeouts; [`server`]: the daemon's wiring.

pub mod api;
pub mod auth;
pub mod benchmark;
pub mod capacity;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod console;
pub mod doctor;
pub mod domain;
pub mod drain;
pub mod errors;
pub mod faults;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod heap;
pub mod hls;
pub mod http_edge;
pub mod ingest;
pub mod media;
pub mod merge;
pub mod metrics;
pub mod mix;
pub mod notify;
pub mod output;
pub mod publish;
pub mod ratelimit;
pub mod record;
pub mod room;
pub mod sched;
pub mod sealing;
pub mod server;
pub mod state;
pub mod sync;
pub mod systemd;
pub mod task;
pub mod tls;
