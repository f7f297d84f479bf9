//! Recording: naming, playlists, segmenting, the shared timeline, and the
//! single-stream recorder (sans-IO core in `single`, IO in `worker`).

pub mod compose;
pub mod mixed;
pub mod naming;
pub mod playlist;
pub mod segmenter;
pub mod single;
pub mod stream;
pub mod subscribe;
pub mod timeline;
pub mod worker;
