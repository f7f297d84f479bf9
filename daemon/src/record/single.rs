//! Single-stream recording (RecordMode 1), sans-IO: which tracks of the
//! room to record, and every frame through the timeline into its stream.
//!
//! The worker ([`super::worker`]) owns the IO: it offers the room's tracks
//! ([`SingleRecorder::reconcile`]), feeds the frames of the tracks it was
//! told to subscribe to ([`SingleRecorder::on_frame`]), and carries out the
//! [`Action`]s in order.
//!
//! Subscription rules:
//! - StreamType picks audio and/or video; RecordParams.MediaId picks main
//!   and/or aux video (audio is always the main stream's);
//!   SubscribeStreamUserIds admits users per kind (allow or deny lists,
//!   `prefix.*$` wildcards). Modify replaces the lists; the next reconcile
//!   starts newly admitted tracks (at their next key frame) and ends
//!   removed ones cleanly.
//! - A *stream* is one user's main stream (audio + camera) or aux stream
//!   (screen share). At most [`MAX_STREAMS`] are recorded, first come
//!   (room join order) first served; later ones are refused (reported
//!   once each) until a slot frees.
//!
//! Files per stream: see [`super::stream`]. With AvMerge = 1 (and both
//! audio and video recorded) a user's audio and camera share one
//! `<MediaId>_av` stream; the aux stream has no audio and stays `aux_video`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::record::naming::{Media, Naming, TrackType};
use crate::record::segmenter::SegmenterConfig;
use crate::record::stream::{HlsStream, Output, StreamId};
use crate::record::timeline::{TrackClock, UserClock};
use crate::room::{Codec, MediaFrame, TrackKind};
use crate::task::params::{MediaSelection, StreamType, Subscription};

/// Streams recorded per task at most (spec §2).
pub const MAX_STREAMS: usize = 25;

#[derive(Debug, Clone)]
pub struct Settings {
    pub naming: Arc<Naming>,
    pub segment: SegmenterConfig,
    pub stream_type: StreamType,
    pub media: MediaSelection,
    pub av_merge: bool,
    /// Unix µs that PTS [`super::stream::BASE_90K`] stands for.
    pub epoch_us: i64,
}

/// A track the room offers (in join order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedTrack {
    pub user_id: String,
    pub kind: TrackKind,
    /// Identifies this publication: a user who publishes again gets a new one.
    pub session_id: String,
}

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
    pub clock_overflows: u64,
}

struct Sub {
    user_id: String,
    kind: TrackKind,
    session_id: String,
    stream: StreamId,
    clock: TrackClock,
}

pub struct SingleRecorder {
    settings: Settings,
    subscription: Subscription,
    subs: HashMap<u64, Sub>,
    streams: HashMap<StreamId, HlsStream>,
    users: HashMap<String, UserClock>,
    /// Admitted (user, media) stream slots.
    slots: Vec<(String, Media)>,
    refused: HashSet<(String, Media)>,
    next_tag: u64,
    media_started: bool,
    placed: Vec<(i64, MediaFrame)>,
    outputs: Vec<Output>,
    pub stats: Stats,
}

fn media_of(kind: TrackKind) -> Media {
    match kind {
        TrackKind::Audio | TrackKind::MainVideo => Media::Main,
        TrackKind::AuxVideo => Media::Aux,
    }
}

impl SingleRecorder {
    pub fn new(settings: Settings, subscription: Subscription) -> Self {
        Self {
            settings,
            subscription,
            subs: HashMap::new(),
            streams: HashMap::new(),
            users: HashMap::new(),
            slots: Vec::new(),
            refused: HashSet::new(),
            next_tag: 1,
            media_started: false,
            placed: Vec::new(),
            outputs: Vec::new(),
            stats: Stats::default(),
        }
    }

    /// ModifyCloudRecording: the lists apply from the next reconcile.
    pub fn set_subscription(&mut self, subscription: Subscription) {
        self.subscription = subscription;
    }

    fn wants(&self, user_id: &str, kind: TrackKind) -> bool {
        let st = self.settings.stream_type;
        match kind {
            TrackKind::Audio => {
                st != StreamType::VideoOnly && self.subscription.audio.admits(user_id)
            }
            TrackKind::MainVideo | TrackKind::AuxVideo => {
                let media_ok = matches!(
                    (kind, self.settings.media),
                    (_, MediaSelection::MainAndAux)
                        | (TrackKind::MainVideo, MediaSelection::Main)
                        | (TrackKind::AuxVideo, MediaSelection::Aux)
                );
                st != StreamType::AudioOnly && media_ok && self.subscription.video.admits(user_id)
            }
        }
    }

    fn stream_id(&self, user_id: &str, kind: TrackKind) -> StreamId {
        let merged = self.settings.av_merge && self.settings.stream_type == StreamType::AudioVideo;
        let track_type = match kind {
            TrackKind::Audio if merged => TrackType::AudioVideo,
            TrackKind::MainVideo if merged => TrackType::AudioVideo,
            TrackKind::Audio => TrackType::Audio,
            TrackKind::MainVideo | TrackKind::AuxVideo => TrackType::Video,
        };
        StreamId {
            user_id: user_id.to_owned(),
            media: media_of(kind),
            track_type,
        }
    }

    /// Brings the subscriptions in line with what the room offers.
    pub fn reconcile(&mut self, offered: &[OfferedTrack]) -> Vec<Action> {
        let mut actions = Vec::new();
        let wanted: Vec<&OfferedTrack> = offered
            .iter()
            .filter(|t| self.wants(&t.user_id, t.kind))
            .collect();
        // Free slots nobody wants any more, then admit in join order.
        let wanted_slots: HashSet<(String, Media)> = wanted
            .iter()
            .map(|t| (t.user_id.clone(), media_of(t.kind)))
            .collect();
        self.slots.retain(|s| wanted_slots.contains(s));
        self.refused.retain(|s| wanted_slots.contains(s));
        let mut admitted: Vec<&OfferedTrack> = Vec::new();
        for t in wanted {
            let slot = (t.user_id.clone(), media_of(t.kind));
            if !self.slots.contains(&slot) {
                if self.slots.len() >= MAX_STREAMS {
                    if self.refused.insert(slot.clone()) {
                        actions.push(Action::StreamRefused {
                            user_id: slot.0,
                            media: slot.1,
                        });
                    }
                    continue;
                }
                self.refused.remove(&slot);
                self.slots.push(slot);
            }
            admitted.push(t);
        }
        // End subscriptions that are no longer admitted (or were replaced
        // by a new publication of the same track).
        let mut ended: Vec<u64> = self
            .subs
            .iter()
            .filter(|(_, s)| {
                !admitted.iter().any(|t| {
                    t.user_id == s.user_id && t.kind == s.kind && t.session_id == s.session_id
                })
            })
            .map(|(tag, _)| *tag)
            .collect();
        ended.sort_unstable();
        for tag in ended {
            self.end_sub(tag, &mut actions);
        }
        // Start the new ones.
        for t in admitted {
            let exists = self.subs.values().any(|s| {
                s.user_id == t.user_id && s.kind == t.kind && s.session_id == t.session_id
            });
            if exists {
                continue;
            }
            let tag = self.next_tag;
            self.next_tag += 1;
            let stream = self.stream_id(&t.user_id, t.kind);
            let naming = self.settings.naming.clone();
            let (epoch, cfg) = (self.settings.epoch_us, self.settings.segment);
            self.streams
                .entry(stream.clone())
                .or_insert_with(|| HlsStream::new(stream.clone(), naming, epoch, cfg))
                .begin_track(t.kind);
            let clock_rate = if t.kind.is_video() { 90_000 } else { 48_000 };
            self.subs.insert(
                tag,
                Sub {
                    user_id: t.user_id.clone(),
                    kind: t.kind,
                    session_id: t.session_id.clone(),
                    stream,
                    clock: TrackClock::new(clock_rate),
                },
            );
            actions.push(Action::Subscribe {
                tag,
                user_id: t.user_id.clone(),
                kind: t.kind,
                session_id: t.session_id.clone(),
            });
        }
        actions
    }

    fn end_sub(&mut self, tag: u64, actions: &mut Vec<Action>) {
        let Some(mut sub) = self.subs.remove(&tag) else {
            return;
        };
        actions.push(Action::Unsubscribe { tag });
        let user = self.users.entry(sub.user_id.clone()).or_default();
        sub.clock.flush(user, &mut self.placed);
        self.place(tag, &sub.stream, actions);
        if let Some(stream) = self.streams.get_mut(&sub.stream) {
            stream.end_track(sub.kind, &mut self.outputs);
        }
        self.drain_outputs(&sub.stream, tag, actions);
        // A user who has no track left starts a fresh clock when back.
        if !self.subs.values().any(|s| s.user_id == sub.user_id) {
            self.users.remove(&sub.user_id);
        }
    }

    /// A frame of subscription `tag`.
    pub fn on_frame(&mut self, tag: u64, frame: MediaFrame) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(sub) = self.subs.get_mut(&tag) else {
            self.stats.stray_frames += 1;
            return actions;
        };
        self.stats.frames += 1;
        if !self.media_started {
            self.media_started = true;
            actions.push(Action::MediaStarted);
        }
        let user = self.users.entry(sub.user_id.clone()).or_default();
        let notes = sub.clock.push(frame, user, &mut self.placed);
        self.stats.clock_fallbacks += u64::from(notes.arrival_fallback);
        self.stats.reanchors += u64::from(notes.reanchored);
        self.stats.clock_overflows += notes.overflowed as u64;
        let stream = sub.stream.clone();
        self.place(tag, &stream, &mut actions);
        actions
    }

    /// Feeds the placed frames of `tag` into its stream.
    fn place(&mut self, tag: u64, stream_id: &StreamId, actions: &mut Vec<Action>) {
        if self.placed.is_empty() {
            return;
        }
        if let Some(stream) = self.streams.get_mut(stream_id) {
            for (t, frame) in self.placed.drain(..) {
                match frame.codec {
                    Codec::H264 => {
                        stream.push_video(t, frame.keyframe, &frame.data, &mut self.outputs)
                    }
                    Codec::Opus => stream.push_opus(t, &frame.data, &mut self.outputs),
                }
            }
        }
        self.placed.clear();
        self.drain_outputs(stream_id, tag, actions);
    }

    fn drain_outputs(&mut self, stream_id: &StreamId, tag: u64, actions: &mut Vec<Action>) {
        for o in self.outputs.drain(..) {
            actions.push(match o {
                Output::Segment { key, data } => Action::Store { key, data },
                Output::Playlist {
                    key,
                    file_name,
                    text,
                    begin_ms,
                } => Action::StorePlaylist {
                    key,
                    text,
                    file: FileInfo {
                        user_id: stream_id.user_id.clone(),
                        file_name,
                        track_type: stream_id.track_type,
                        begin_ms,
                    },
                },
                Output::FirstSegment {
                    file_name,
                    begin_ms,
                } => Action::FileSliced(FileInfo {
                    user_id: stream_id.user_id.clone(),
                    file_name,
                    track_type: stream_id.track_type,
                    begin_ms,
                }),
                Output::WantKeyframe => Action::RequestKeyframe { tag },
            });
        }
    }

    /// The task ends: every subscription ends and every playlist is closed.
    pub fn finish(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut tags: Vec<u64> = self.subs.keys().copied().collect();
        tags.sort_unstable();
        for tag in tags {
            self.end_sub(tag, &mut actions);
        }
        let mut ids: Vec<StreamId> = self.streams.keys().cloned().collect();
        ids.sort_by(|a, b| (&a.user_id, a.media.as_str()).cmp(&(&b.user_id, b.media.as_str())));
        for id in ids {
            if let Some(s) = self.streams.get_mut(&id) {
                s.finish(&mut self.outputs);
            }
            self.drain_outputs(&id, 0, &mut actions);
        }
        actions
    }

    /// Streams with at least one active subscription.
    pub fn active_streams(&self) -> usize {
        let ids: HashSet<&StreamId> = self.subs.values().map(|s| &s.stream).collect();
        ids.len()
    }

    /// Errors inside streams (corrupt audio), summed.
    pub fn stream_errors(&self) -> u64 {
        self.streams.values().map(|s| s.errors).sum()
    }
}
