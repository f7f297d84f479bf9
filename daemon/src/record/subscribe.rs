//! Which of the room's tracks a task records, in both recording modes.
//!
//! - StreamType picks audio and/or video; RecordParams.MediaId picks main
//!   and/or aux video (audio is always the main stream's);
//!   SubscribeStreamUserIds admits users per kind (allow or deny lists,
//!   `prefix.*$` wildcards).
//! - A *stream* is one user's main stream (audio + camera) or aux stream
//!   (screen share). At most [`MAX_STREAMS`] are recorded, first come
//!   (room join order) first served; later ones are refused (reported
//!   once each) until a slot frees.

use std::collections::HashSet;

use crate::domain::params::{MediaSelection, StreamType, Subscription};
use crate::hls::naming::Media;
use crate::record::action::Action;
use crate::room::TrackKind;

/// Streams recorded per task at most (spec §2).
pub const MAX_STREAMS: usize = 25;

/// A track the room offers (in join order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedTrack {
    pub user_id: String,
    pub kind: TrackKind,
    /// Identifies this publication: a user who publishes again gets a new one.
    pub session_id: String,
}

pub fn media_of(kind: TrackKind) -> Media {
    match kind {
        TrackKind::Audio | TrackKind::MainVideo => Media::Main,
        TrackKind::AuxVideo => Media::Aux,
    }
}

/// Whether the task's parameters want this user's track.
pub fn wants(
    stream_type: StreamType,
    media: MediaSelection,
    subscription: &Subscription,
    user_id: &str,
    kind: TrackKind,
) -> bool {
    match kind {
        TrackKind::Audio => {
            stream_type != StreamType::VideoOnly && subscription.audio.admits(user_id)
        }
        TrackKind::MainVideo | TrackKind::AuxVideo => {
            let media_ok = matches!(
                (kind, media),
                (_, MediaSelection::MainAndAux)
                    | (TrackKind::MainVideo, MediaSelection::Main)
                    | (TrackKind::AuxVideo, MediaSelection::Aux)
            );
            stream_type != StreamType::AudioOnly && media_ok && subscription.video.admits(user_id)
        }
    }
}

/// The task's stream slots, kept across reconciles.
#[derive(Debug, Default)]
pub struct Admission {
    slots: Vec<(String, Media)>,
    refused: HashSet<(String, Media)>,
}

impl Admission {
    /// Admits `wanted` (in join order) into at most [`MAX_STREAMS`] slots.
    /// Returns the admitted tracks and the streams refused for the first
    /// time.
    pub fn admit<'a>(
        &mut self,
        wanted: &[&'a OfferedTrack],
    ) -> (Vec<&'a OfferedTrack>, Vec<(String, Media)>) {
        // Free slots nobody wants any more, then admit in join order.
        let wanted_slots: HashSet<(String, Media)> = wanted
            .iter()
            .map(|t| (t.user_id.clone(), media_of(t.kind)))
            .collect();
        self.slots.retain(|s| wanted_slots.contains(s));
        self.refused.retain(|s| wanted_slots.contains(s));
        let mut admitted = Vec::new();
        let mut refused = Vec::new();
        for t in wanted {
            let slot = (t.user_id.clone(), media_of(t.kind));
            if !self.slots.contains(&slot) {
                if self.slots.len() >= MAX_STREAMS {
                    if self.refused.insert(slot.clone()) {
                        refused.push(slot);
                    }
                    continue;
                }
                self.refused.remove(&slot);
                self.slots.push(slot);
            }
            admitted.push(*t);
        }
        (admitted, refused)
    }
}

/// What a reconcile must do: the streams refused for the first time, the
/// subscriptions to end (tag order) and the tracks to subscribe to (join
/// order).
pub struct Plan<'a> {
    pub refused: Vec<(String, Media)>,
    pub ended: Vec<u64>,
    pub started: Vec<&'a OfferedTrack>,
}

impl<'a> Plan<'a> {
    /// The part of a reconcile both recorders share: each refusal becomes
    /// a `StreamRefused` action and each ended subscription is ended by
    /// `end`, in that order; the tracks to subscribe remain.
    pub fn settle(
        self,
        actions: &mut Vec<Action>,
        mut end: impl FnMut(u64, &mut Vec<Action>),
    ) -> Vec<&'a OfferedTrack> {
        for (user_id, media) in self.refused {
            actions.push(Action::StreamRefused { user_id, media });
        }
        for tag in self.ended {
            end(tag, actions);
        }
        self.started
    }
}

impl Admission {
    /// The whole reconcile decision for both recording modes: which offered
    /// tracks the parameters want, which of them fit the stream limit, and
    /// how that differs from the `current` subscriptions.
    pub fn plan<'a, 'c>(
        &mut self,
        (stream_type, media, subscription): (StreamType, MediaSelection, &Subscription),
        offered: &'a [OfferedTrack],
        current: impl Iterator<Item = Current<'c>> + Clone,
    ) -> Plan<'a> {
        let wanted: Vec<&OfferedTrack> = offered
            .iter()
            .filter(|t| wants(stream_type, media, subscription, &t.user_id, t.kind))
            .collect();
        let (admitted, refused) = self.admit(&wanted);
        let (ended, started) = diff(current, &admitted);
        Plan {
            refused,
            ended,
            started,
        }
    }
}

/// What a recorder's live subscription says about itself, for [`diff`].
pub trait Subscribed {
    fn user_id(&self) -> &str;
    fn kind(&self) -> TrackKind;
    fn session_id(&self) -> &str;
}

impl Admission {
    /// [`Admission::plan`] against a recorder's live subscriptions by tag.
    pub fn plan_for<'a, S: Subscribed>(
        &mut self,
        wanted: (StreamType, MediaSelection, &Subscription),
        offered: &'a [OfferedTrack],
        subs: &std::collections::HashMap<u64, S>,
    ) -> Plan<'a> {
        let current = subs.iter().map(|(tag, s)| Current {
            tag: *tag,
            user_id: s.user_id(),
            kind: s.kind(),
            session_id: s.session_id(),
        });
        self.plan(wanted, offered, current)
    }
}

/// One live subscription as [`diff`] sees it.
pub struct Current<'a> {
    pub tag: u64,
    pub user_id: &'a str,
    pub kind: TrackKind,
    pub session_id: &'a str,
}

/// Subscriptions to end (not admitted any more, or replaced by a new
/// publication of the same track), in tag order, and admitted tracks that
/// have no subscription yet, in join order.
pub fn diff<'a, 'c>(
    current: impl Iterator<Item = Current<'c>> + Clone,
    admitted: &[&'a OfferedTrack],
) -> (Vec<u64>, Vec<&'a OfferedTrack>) {
    let same = |c: &Current<'_>, t: &OfferedTrack| {
        t.user_id == c.user_id && t.kind == c.kind && t.session_id == c.session_id
    };
    let mut ended: Vec<u64> = current
        .clone()
        .filter(|c| !admitted.iter().any(|t| same(c, t)))
        .map(|c| c.tag)
        .collect();
    ended.sort_unstable();
    let started = admitted
        .iter()
        .filter(|t| !current.clone().any(|c| same(&c, t)))
        .copied()
        .collect();
    (ended, started)
}
