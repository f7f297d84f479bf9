//! Recording: naming, playlists, segmenting, the shared timeline, and the
//! single-stream recorder (sans-IO core in `single`, IO in `worker`).

pub mod build;
pub mod compose;
pub mod mixed;
pub mod single;
pub mod subscribe;
pub mod timeline;
pub mod worker;
