//! What a recorder core ([`super::single`], [`super::mixed`]) asks its
//! worker ([`super::worker`]) to do, what it reports about its files, and
//! the counters the worker turns into metrics: the recorders' shared
//! vocabulary.

use crate::hls::naming::{Media, TrackType};
use crate::room::TrackKind;

/// A file as Describe and callbacks report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    pub user_id: String,
    pub file_name: String,
    pub track_type: TrackType,
    pub begin_ms: u64,
}

/// What the worker must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Subscribe {
        tag: u64,
        user_id: String,
        kind: TrackKind,
        session_id: String,
    },
    Unsubscribe {
        tag: u64,
    },
    /// Store a segment.
    Store {
        key: String,
        data: Vec<u8>,
    },
    /// Store (replace) a playlist.
    StorePlaylist {
        key: String,
        text: String,
        file: FileInfo,
    },
    /// A playlist's first segment was cut (callback 307).
    FileSliced(FileInfo),
    RequestKeyframe {
        tag: u64,
    },
    /// The first media of the task arrived.
    MediaStarted,
    /// A stream over the per-task limit is not recorded.
    StreamRefused {
        user_id: String,
        media: Media,
    },
}

/// Counters the worker turns into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub frames: u64,
    /// Frames of a subscription that had already ended (in flight).
    pub stray_frames: u64,
    pub clock_fallbacks: u64,
    pub reanchors: u64,
    /// Tracks whose sender reports were refused as impossible.
    pub reports_refused: u64,
    pub clock_overflows: u64,
}
