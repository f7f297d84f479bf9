//! What a recorder core ([`super::single`], [`super::mixed`]) asks its
//! worker ([`super::worker`]) to do, what it reports about its files, and
//! the counters the worker turns into metrics: the recorders' shared
//! vocabulary.

use crate::hls::naming::{Media, TrackType};
use crate::record::timeline::ClockNotes;
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
    /// Make part of an open segment durable (`record::journal`).
    Journal(crate::hls::stream::JournalWrite),
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

impl Stats {
    /// Counts a frame for a subscription (`known`) or a stray one (its
    /// subscription already ended); the task's first frame starts its
    /// media.
    pub fn arrived(&mut self, known: bool, media_started: &mut bool, actions: &mut Vec<Action>) {
        if !known {
            self.stray_frames += 1;
            return;
        }
        self.frames += 1;
        if !*media_started {
            *media_started = true;
            actions.push(Action::MediaStarted);
        }
    }

    /// Counts what placing one frame on the timeline noted.
    pub fn count_clock(&mut self, notes: ClockNotes) {
        self.clock_fallbacks += u64::from(notes.arrival_fallback);
        self.reanchors += u64::from(notes.reanchored);
        self.reports_refused += u64::from(notes.reports_refused);
        self.clock_overflows += notes.overflowed as u64;
    }
}
