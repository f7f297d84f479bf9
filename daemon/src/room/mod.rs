//! Rooms of publishers, and subscriptions to their media.
//!
//! A room is `(SdkAppId, RoomId)` where integer and string room ids are
//! different rooms. Users are kept in join order (layouts place them so).
//! Each user has up to three tracks (audio, main video, aux video), fed by
//! up to two WHIP sessions (main: audio + camera; aux: screen share).
//!
//! Frames flow `ingest` thread → [`Track::deliver`] → every subscriber's
//! bounded channel. A subscriber that arrives within a track's first
//! seconds is first handed the track from its start (`head.rs`). The
//! ingest thread never blocks: when a subscriber's
//! channel is full, audio frames are dropped, and video drops until the
//! next key frame while a key frame is requested from the publisher; both
//! are counted. Room events (user joined/left, track started/stopped) go to
//! a broadcast channel per room; a publisher count per room is kept in a
//! watch channel, which recording tasks use for MaxIdleTime.
//!
//! Lock order: `Registry.rooms` before `Room.state` before `Track.fanout`
//! before `Track.state`.

pub mod frame;
mod head;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{broadcast, watch};

pub use frame::{Codec, MediaFrame, TrackKind};
use head::TrackHead;

use crate::domain::params::RoomId;

use crate::sync::lock;

const PRUNE_ROOMS_ABOVE: usize = 1024;

/// Identifies a room across apps and room id types.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RoomKey {
    pub sdk_app_id: u32,
    pub room: RoomId,
}

/// Events a recording task subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    UserJoined { user_id: String },
    UserLeft { user_id: String },
    TrackStarted { user_id: String, kind: TrackKind },
    TrackStopped { user_id: String, kind: TrackKind },
}

/// Why a frame did not reach a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Audio frame dropped: the subscriber's channel was full.
    AudioOverflow,
    /// Video frame dropped: the channel was full, or we are waiting for the
    /// key frame that follows an overflow.
    VideoOverflow,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            DropReason::AudioOverflow => "audio_overflow",
            DropReason::VideoOverflow => "video_overflow",
        }
    }
}

/// Hooks the daemon implements (metrics, key frame requests) so this module
/// stays free of both.
pub trait RoomObserver: Send + Sync {
    fn frame_dropped(&self, reason: DropReason);
    /// A subscriber needs a key frame of this track.
    fn keyframe_wanted(&self, session_id: &str, kind: TrackKind);
    /// Users per non-empty room, after any join or leave.
    fn users_changed(&self, _users_per_room: &[usize]) {}
}

/// Where a subscriber's frames go: its own channel, or a channel shared by
/// every track a recorder subscribes to, with a tag naming the track.
enum Sink {
    Own(SyncSender<MediaFrame>),
    Shared { tx: SyncSender<Delivery>, tag: u64 },
}

impl Sink {
    /// Hands a frame over without blocking.
    fn try_send(&self, frame: &MediaFrame) -> Result<(), TrySendError<()>> {
        match self {
            Sink::Own(tx) => tx.try_send(frame.clone()).map_err(|e| match e {
                TrySendError::Full(_) => TrySendError::Full(()),
                TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
            }),
            Sink::Shared { tx, tag } => tx
                .try_send(Delivery {
                    tag: *tag,
                    frame: frame.clone(),
                })
                .map_err(|e| match e {
                    TrySendError::Full(_) => TrySendError::Full(()),
                    TrySendError::Disconnected(_) => TrySendError::Disconnected(()),
                }),
        }
    }
}

/// A frame on a shared channel, tagged with the subscription it belongs to.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tag: u64,
    pub frame: MediaFrame,
}

struct Subscriber {
    sink: Sink,
    /// After an overflow, video waits for the next key frame.
    awaiting_keyframe: bool,
}

/// A track's subscribers and its head, under one lock so that a new
/// subscriber gets the head and then every later frame, in order.
#[derive(Default)]
struct Fanout {
    subscribers: Vec<Subscriber>,
    head: TrackHead,
}

/// Live statistics of one track (shown by the status endpoint).
#[derive(Debug, Default)]
pub struct TrackStats {
    pub frames: AtomicU64,
    pub bytes: AtomicU64,
    pub keyframes: AtomicU64,
    pub dropped: AtomicU64,
    pub discontinuities: AtomicU64,
}

/// One published track.
pub struct Track {
    pub kind: TrackKind,
    pub codec: Codec,
    session_id: String,
    pub stats: TrackStats,
    fanout: Mutex<Fanout>,
    state: Mutex<TrackState>,
    muted: AtomicBool,
}

#[derive(Debug, Clone, Default)]
struct TrackState {
    started: Option<Instant>,
    last_frame: Option<Instant>,
    width: u32,
    height: u32,
    /// Frame arrival times over the last second or so, for the rate.
    recent: std::collections::VecDeque<Instant>,
    /// When a key frame was last asked of the publisher.
    keyframe_asked: Option<Instant>,
}

/// A subscriber still waiting for its first key frame asks again after
/// this long: a request (PLI) can be lost on the way, and waiting for the
/// publisher's own next key frame loses seconds of a new recording.
///
/// Measured: a `kiroku publish` session whose publisher's side finishes its
/// handshake a moment after ours drops the first request; asking again at
/// 0.5 s still lost 0.53 s of a 32 s recording (over the 1% the recording
/// test allows), so it is asked again at 0.2 s.
const KEYFRAME_ASK_AGAIN: Duration = Duration::from_millis(200);

impl Track {
    pub fn new(kind: TrackKind, codec: Codec, session_id: &str) -> Self {
        Self {
            kind,
            codec,
            session_id: session_id.to_owned(),
            stats: TrackStats::default(),
            fanout: Mutex::new(Fanout::default()),
            state: Mutex::new(TrackState::default()),
            muted: AtomicBool::new(false),
        }
    }

    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    pub fn set_muted(&self, muted: bool) {
        self.muted.store(muted, Ordering::Relaxed);
    }

    /// Records the video resolution (from the SPS).
    pub fn set_resolution(&self, width: u32, height: u32) {
        let mut st = lock(&self.state);
        st.width = width;
        st.height = height;
    }

    /// Subscribes with a channel of `capacity` frames. A video subscriber
    /// starts at the next key frame (one is requested).
    pub fn subscribe(&self, capacity: usize, observer: &dyn RoomObserver) -> Receiver<MediaFrame> {
        let (tx, rx) = sync_channel(capacity.max(1));
        self.add_subscriber(Sink::Own(tx), observer);
        rx
    }

    /// Subscribes into a channel shared with other tracks; frames arrive
    /// tagged with `tag`. Ends with [`Track::unsubscribe`] or when the
    /// channel's receiver is dropped.
    pub fn subscribe_shared(
        &self,
        tx: SyncSender<Delivery>,
        tag: u64,
        observer: &dyn RoomObserver,
    ) {
        self.add_subscriber(Sink::Shared { tx, tag }, observer);
    }

    /// Ends a shared subscription.
    pub fn unsubscribe(&self, tag: u64) {
        lock(&self.fanout)
            .subscribers
            .retain(|s| !matches!(s.sink, Sink::Shared { tag: t, .. } if t == tag));
    }

    fn add_subscriber(&self, sink: Sink, observer: &dyn RoomObserver) {
        let video = self.kind.is_video();
        let mut fan = lock(&self.fanout);
        // The track from its start, if it started moments ago; a video
        // head starts with a key frame, so the subscriber needs no other.
        let head = fan.head.frames();
        let replayed = !head.is_empty() && head.iter().all(|f| sink.try_send(f).is_ok());
        fan.subscribers.push(Subscriber {
            sink,
            awaiting_keyframe: video && !replayed,
        });
        drop(fan);
        if video && !replayed {
            lock(&self.state).keyframe_asked = Some(Instant::now());
            observer.keyframe_wanted(&self.session_id, self.kind);
        }
    }

    /// Asks the publisher for a key frame (a recorder whose segment runs long).
    pub fn request_keyframe(&self, observer: &dyn RoomObserver) {
        if self.kind.is_video() {
            observer.keyframe_wanted(&self.session_id, self.kind);
        }
    }

    /// The latest video resolution (from the SPS), if known.
    pub fn resolution(&self) -> Option<(u32, u32)> {
        let st = lock(&self.state);
        (st.width > 0 && st.height > 0).then_some((st.width, st.height))
    }

    pub fn subscriber_count(&self) -> usize {
        lock(&self.fanout).subscribers.len()
    }

    /// Fans a frame out to every subscriber without blocking.
    pub fn deliver(&self, frame: &MediaFrame, observer: &dyn RoomObserver) {
        self.stats.frames.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(frame.data.len() as u64, Ordering::Relaxed);
        if frame.keyframe && self.kind.is_video() {
            self.stats.keyframes.fetch_add(1, Ordering::Relaxed);
        }
        if !frame.contiguous {
            self.stats.discontinuities.fetch_add(1, Ordering::Relaxed);
        }
        {
            let mut st = lock(&self.state);
            let now = frame.received_at;
            st.started.get_or_insert(now);
            st.last_frame = Some(now);
            st.recent.push_back(now);
            while st
                .recent
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > Duration::from_secs(2))
            {
                st.recent.pop_front();
            }
        }
        let video = self.kind.is_video();
        let mut want_keyframe = false;
        let mut still_waiting = false;
        let mut fan = lock(&self.fanout);
        fan.head.push(frame, video);
        fan.subscribers.retain_mut(|s| {
            if video && s.awaiting_keyframe {
                if !frame.keyframe {
                    still_waiting = true;
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    observer.frame_dropped(DropReason::VideoOverflow);
                    return true;
                }
                s.awaiting_keyframe = false;
            }
            match s.sink.try_send(frame) {
                Ok(()) => true,
                Err(TrySendError::Full(())) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    if video {
                        s.awaiting_keyframe = true;
                        want_keyframe = true;
                        observer.frame_dropped(DropReason::VideoOverflow);
                    } else {
                        observer.frame_dropped(DropReason::AudioOverflow);
                    }
                    true
                }
                // The subscriber went away: forget it.
                Err(TrySendError::Disconnected(())) => false,
            }
        });
        drop(fan);
        // The state is locked again only while a subscriber waits (not on
        // every frame).
        let ask = want_keyframe
            || (still_waiting
                && lock(&self.state).keyframe_asked.is_none_or(|t| {
                    frame.received_at.saturating_duration_since(t) >= KEYFRAME_ASK_AGAIN
                }));
        if ask {
            lock(&self.state).keyframe_asked = Some(frame.received_at);
            observer.keyframe_wanted(&self.session_id, self.kind);
        }
    }

    /// A snapshot for the status endpoint.
    pub fn status(&self, now: Instant) -> TrackStatus {
        let st = lock(&self.state).clone();
        let window = st
            .recent
            .front()
            .zip(st.recent.back())
            .map(|(a, b)| b.saturating_duration_since(*a).as_secs_f64())
            .unwrap_or(0.0);
        let fps = if st.recent.len() > 1 && window > 0.0 {
            (st.recent.len() - 1) as f64 / window
        } else {
            0.0
        };
        let silent_for = st
            .last_frame
            .map(|t| now.saturating_duration_since(t).as_secs_f64());
        let state = if self.muted.load(Ordering::Relaxed) {
            "muted"
        } else if silent_for.is_none_or(|s| s > 2.0) {
            "silent"
        } else {
            "publishing"
        };
        TrackStatus {
            kind: self.kind,
            codec: self.codec,
            state,
            width: (st.width > 0).then_some(st.width),
            height: (st.height > 0).then_some(st.height),
            frame_rate: (fps * 10.0).round() / 10.0,
            frames: self.stats.frames.load(Ordering::Relaxed),
            keyframes: self.stats.keyframes.load(Ordering::Relaxed),
            bytes: self.stats.bytes.load(Ordering::Relaxed),
            dropped_for_subscribers: self.stats.dropped.load(Ordering::Relaxed),
            discontinuities: self.stats.discontinuities.load(Ordering::Relaxed),
            silent_for_seconds: silent_for.map(|s| (s * 10.0).round() / 10.0),
            subscribers: self.subscriber_count(),
            session_id: self.session_id.clone(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TrackStatus {
    pub kind: TrackKind,
    pub codec: Codec,
    /// `publishing`, `silent` (no frame for 2 s) or `muted` (the publisher
    /// stopped sending the track: str0m paused its stream).
    pub state: &'static str,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frame_rate: f64,
    pub frames: u64,
    pub keyframes: u64,
    pub bytes: u64,
    pub dropped_for_subscribers: u64,
    pub discontinuities: u64,
    pub silent_for_seconds: Option<f64>,
    pub subscribers: usize,
    pub session_id: String,
}

/// Network-level statistics a session reports (from str0m's stats).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SessionNetStats {
    pub packets: u64,
    pub bytes: u64,
    pub nacks_sent: u64,
    pub plis_sent: u64,
    pub firs_sent: u64,
    pub loss_fraction: Option<f32>,
    pub rtt_ms: Option<f64>,
}

struct User {
    user_id: String,
    joined_at: SystemTime,
    tracks: HashMap<TrackKind, Arc<Track>>,
    /// session id → is aux; net stats per session.
    sessions: HashMap<String, (bool, SessionNetStats)>,
}

struct RoomState {
    /// Join order.
    users: Vec<User>,
}

struct Room {
    state: Mutex<RoomState>,
    /// Bumped on every change of users or tracks.
    version: Arc<AtomicU64>,
    events: broadcast::Sender<RoomEvent>,
    publishers: watch::Sender<usize>,
}

/// All rooms of the appliance.
pub struct Registry {
    rooms: Mutex<HashMap<RoomKey, Arc<Room>>>,
    observer: Arc<dyn RoomObserver>,
}

/// A live view of one room for a recording task.
pub struct RoomWatch {
    pub events: broadcast::Receiver<RoomEvent>,
    /// Number of users with at least one session in the room.
    pub publishers: watch::Receiver<usize>,
    /// Changes whenever users or tracks change (cheap to poll).
    pub version: Arc<AtomicU64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct UserStatus {
    pub user_id: String,
    pub joined_at_ms: u64,
    pub sessions: Vec<SessionStatus>,
    pub tracks: Vec<TrackStatus>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionStatus {
    pub session_id: String,
    pub stream: &'static str,
    #[serde(flatten)]
    pub net: SessionNetStats,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomStatus {
    pub sdk_app_id: u32,
    pub room_id: serde_json::Value,
    pub room_id_type: &'static str,
    pub users: Vec<UserStatus>,
}

impl Registry {
    pub fn new(observer: Arc<dyn RoomObserver>) -> Self {
        Self {
            rooms: Mutex::new(HashMap::new()),
            observer,
        }
    }

    pub fn observer(&self) -> &dyn RoomObserver {
        self.observer.as_ref()
    }

    fn room(&self, key: &RoomKey) -> Arc<Room> {
        let mut rooms = lock(&self.rooms);
        if rooms.len() >= PRUNE_ROOMS_ABOVE && !rooms.contains_key(key) {
            // Rooms that were only watched by tasks that have ended.
            rooms.retain(|_, r| {
                !lock(&r.state).users.is_empty()
                    || r.events.receiver_count() > 0
                    || r.publishers.receiver_count() > 0
            });
        }
        rooms
            .entry(key.clone())
            .or_insert_with(|| {
                let (events, _) = broadcast::channel(256);
                let (publishers, _) = watch::channel(0);
                Arc::new(Room {
                    state: Mutex::new(RoomState { users: Vec::new() }),
                    version: Arc::new(AtomicU64::new(0)),
                    events,
                    publishers,
                })
            })
            .clone()
    }

    /// Watches a room (creating it empty if nobody published yet).
    pub fn watch(&self, key: &RoomKey) -> RoomWatch {
        let room = self.room(key);
        RoomWatch {
            events: room.events.subscribe(),
            publishers: room.publishers.subscribe(),
            version: room.version.clone(),
        }
    }

    fn report(&self) {
        let rooms = lock(&self.rooms);
        let counts: Vec<usize> = rooms
            .values()
            .map(|r| lock(&r.state).users.len())
            .filter(|n| *n > 0)
            .collect();
        drop(rooms);
        self.observer.users_changed(&counts);
    }

    /// A WHIP session starts publishing `tracks` for `user_id` (called again
    /// for the same session when it adds tracks later).
    pub fn add_session(
        &self,
        key: &RoomKey,
        user_id: &str,
        session_id: &str,
        aux: bool,
        tracks: Vec<Arc<Track>>,
    ) {
        let room = self.room(key);
        let mut events = Vec::new();
        {
            let mut st = lock(&room.state);
            let idx = match st.users.iter().position(|u| u.user_id == user_id) {
                Some(i) => i,
                None => {
                    st.users.push(User {
                        user_id: user_id.to_owned(),
                        joined_at: SystemTime::now(),
                        tracks: HashMap::new(),
                        sessions: HashMap::new(),
                    });
                    events.push(RoomEvent::UserJoined {
                        user_id: user_id.to_owned(),
                    });
                    st.users.len() - 1
                }
            };
            let user = &mut st.users[idx];
            user.sessions
                .insert(session_id.to_owned(), (aux, SessionNetStats::default()));
            for t in tracks {
                events.push(RoomEvent::TrackStarted {
                    user_id: user_id.to_owned(),
                    kind: t.kind,
                });
                user.tracks.insert(t.kind, t);
            }
            let n = st.users.len();
            room.version.fetch_add(1, Ordering::AcqRel);
            room.publishers.send_replace(n);
        }
        for e in events {
            let _ = room.events.send(e);
        }
        self.report();
    }

    /// A WHIP session ended: its tracks stop; the user leaves with their last session.
    pub fn remove_session(&self, key: &RoomKey, user_id: &str, session_id: &str) {
        let Some(room) = lock(&self.rooms).get(key).cloned() else {
            return;
        };
        let mut events = Vec::new();
        {
            let mut st = lock(&room.state);
            if let Some(idx) = st.users.iter().position(|u| u.user_id == user_id) {
                let user = &mut st.users[idx];
                if user.sessions.remove(session_id).is_some() {
                    let stopped: Vec<TrackKind> = user
                        .tracks
                        .iter()
                        .filter(|(_, t)| t.session_id == session_id)
                        .map(|(k, _)| *k)
                        .collect();
                    for kind in stopped {
                        user.tracks.remove(&kind);
                        events.push(RoomEvent::TrackStopped {
                            user_id: user_id.to_owned(),
                            kind,
                        });
                    }
                    if user.sessions.is_empty() {
                        st.users.remove(idx);
                        events.push(RoomEvent::UserLeft {
                            user_id: user_id.to_owned(),
                        });
                    }
                }
            }
            let n = st.users.len();
            room.version.fetch_add(1, Ordering::AcqRel);
            room.publishers.send_replace(n);
        }
        for e in events {
            let _ = room.events.send(e);
        }
        // Forget empty rooms nobody watches.
        {
            let mut rooms = lock(&self.rooms);
            if let Some(r) = rooms.get(key) {
                let empty = lock(&r.state).users.is_empty();
                if empty && r.events.receiver_count() == 0 && r.publishers.receiver_count() == 0 {
                    rooms.remove(key);
                }
            }
        }
        self.report();
    }

    pub fn update_net_stats(
        &self,
        key: &RoomKey,
        user_id: &str,
        session_id: &str,
        stats: SessionNetStats,
    ) {
        let Some(room) = lock(&self.rooms).get(key).cloned() else {
            return;
        };
        let mut st = lock(&room.state);
        if let Some(u) = st.users.iter_mut().find(|u| u.user_id == user_id) {
            if let Some(s) = u.sessions.get_mut(session_id) {
                s.1 = stats;
            }
        }
    }

    /// Users of a room in join order.
    pub fn users(&self, key: &RoomKey) -> Vec<String> {
        let Some(room) = lock(&self.rooms).get(key).cloned() else {
            return Vec::new();
        };
        let st = lock(&room.state);
        st.users.iter().map(|u| u.user_id.clone()).collect()
    }

    /// Every user in join order with their tracks (a recorder reconciles
    /// its subscriptions against this).
    pub fn snapshot(&self, key: &RoomKey) -> Vec<(String, Vec<Arc<Track>>)> {
        let Some(room) = lock(&self.rooms).get(key).cloned() else {
            return Vec::new();
        };
        let st = lock(&room.state);
        st.users
            .iter()
            .map(|u| {
                let mut tracks: Vec<Arc<Track>> = u.tracks.values().cloned().collect();
                tracks.sort_by_key(|t| t.kind as u8);
                (u.user_id.clone(), tracks)
            })
            .collect()
    }

    /// A user's published track, if any.
    pub fn track(&self, key: &RoomKey, user_id: &str, kind: TrackKind) -> Option<Arc<Track>> {
        let room = lock(&self.rooms).get(key).cloned()?;
        let st = lock(&room.state);
        st.users
            .iter()
            .find(|u| u.user_id == user_id)?
            .tracks
            .get(&kind)
            .cloned()
    }

    /// Everything, for `GET /v1/rooms`.
    pub fn status(&self) -> Vec<RoomStatus> {
        let now = Instant::now();
        let rooms: Vec<(RoomKey, Arc<Room>)> = lock(&self.rooms)
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        let mut out: Vec<RoomStatus> = rooms
            .into_iter()
            .filter_map(|(key, room)| {
                let st = lock(&room.state);
                if st.users.is_empty() {
                    return None;
                }
                let users = st
                    .users
                    .iter()
                    .map(|u| {
                        let mut tracks: Vec<TrackStatus> =
                            u.tracks.values().map(|t| t.status(now)).collect();
                        tracks.sort_by_key(|t| t.kind as u8);
                        let mut sessions: Vec<SessionStatus> = u
                            .sessions
                            .iter()
                            .map(|(id, (aux, net))| SessionStatus {
                                session_id: id.clone(),
                                stream: if *aux { "aux" } else { "main" },
                                net: net.clone(),
                            })
                            .collect();
                        sessions.sort_by(|a, b| a.stream.cmp(b.stream));
                        UserStatus {
                            user_id: u.user_id.clone(),
                            joined_at_ms: u
                                .joined_at
                                .duration_since(SystemTime::UNIX_EPOCH)
                                .map(|d| d.as_millis() as u64)
                                .unwrap_or(0),
                            sessions,
                            tracks,
                        }
                    })
                    .collect();
                Some(RoomStatus {
                    sdk_app_id: key.sdk_app_id,
                    room_id: key.room.to_json(),
                    room_id_type: match key.room {
                        RoomId::Int(_) => "integer",
                        RoomId::Str(_) => "string",
                    },
                    users,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (a.sdk_app_id, a.room_id.to_string()).cmp(&(b.sdk_app_id, b.room_id.to_string()))
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[derive(Default)]
    struct Counting {
        drops: AtomicUsize,
        keyframe_requests: AtomicUsize,
    }

    impl RoomObserver for Counting {
        fn frame_dropped(&self, _reason: DropReason) {
            self.drops.fetch_add(1, Ordering::Relaxed);
        }
        fn keyframe_wanted(&self, _session_id: &str, _kind: TrackKind) {
            self.keyframe_requests.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn frame(keyframe: bool, n: u64) -> MediaFrame {
        MediaFrame {
            codec: Codec::H264,
            data: Arc::from(vec![n as u8; 4]),
            keyframe,
            rtp_time: n * 3000,
            clock_rate: 90_000,
            ntp_time: None,
            received_at: Instant::now(),
            received_wall: SystemTime::now(),
            report_stamp: None,
            contiguous: true,
        }
    }

    #[test]
    fn a_slow_video_subscriber_skips_to_the_next_keyframe() {
        let obs = Counting::default();
        let track = Track::new(TrackKind::MainVideo, Codec::H264, "s1");
        let rx = track.subscribe(2, &obs);
        assert_eq!(
            obs.keyframe_requests.load(Ordering::Relaxed),
            1,
            "a new video subscriber asks for a key frame"
        );
        track.deliver(&frame(false, 0), &obs); // dropped: waiting for the first key frame
        track.deliver(&frame(true, 1), &obs);
        track.deliver(&frame(false, 2), &obs);
        track.deliver(&frame(false, 3), &obs); // channel full (2): overflow
        track.deliver(&frame(false, 4), &obs); // still waiting for a key frame
        assert_eq!(obs.keyframe_requests.load(Ordering::Relaxed), 2);
        let got: Vec<u8> = rx.try_iter().map(|f| f.data[0]).collect();
        assert_eq!(got, vec![1, 2]);
        track.deliver(&frame(false, 5), &obs);
        track.deliver(&frame(true, 6), &obs);
        track.deliver(&frame(false, 7), &obs);
        let got: Vec<u8> = rx.try_iter().map(|f| f.data[0]).collect();
        assert_eq!(got, vec![6, 7], "delivery resumes at the key frame");
        assert_eq!(obs.drops.load(Ordering::Relaxed), 4);
        assert_eq!(track.stats.dropped.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_subscriber_waiting_for_its_first_key_frame_asks_again() {
        // The request made at subscribing is lost (a PLI on a lossy path):
        // the publisher's own next key frame may be seconds away.
        let obs = Counting::default();
        let track = Track::new(TrackKind::MainVideo, Codec::H264, "s1");
        let rx = track.subscribe(64, &obs);
        let t0 = Instant::now();
        let at = |ms: u64, key: bool, n: u64| {
            let mut f = frame(key, n);
            f.received_at = t0 + Duration::from_millis(ms);
            f
        };
        for (i, ms) in (0..1_100).step_by(67).enumerate() {
            track.deliver(&at(ms, false, i as u64), &obs);
        }
        // Asked at subscribing, then once per 0.2 s of waiting (at the
        // frames of 201, 402, 603, 804 and 1005 ms).
        assert_eq!(obs.keyframe_requests.load(Ordering::Relaxed), 6);
        track.deliver(&at(1_150, true, 99), &obs);
        for (i, ms) in (1_200..3_000).step_by(67).enumerate() {
            track.deliver(&at(ms, false, i as u64), &obs);
        }
        assert_eq!(
            obs.keyframe_requests.load(Ordering::Relaxed),
            6,
            "no more once the key frame came"
        );
        assert_eq!(rx.try_iter().next().map(|f| f.data[0]), Some(99));
    }

    #[test]
    fn a_subscriber_arriving_just_after_the_start_gets_the_track_from_its_first_key_frame() {
        // The recorder subscribes 300 ms after the publisher's first key
        // frame went by (its look at the room came late).
        let obs = Counting::default();
        let track = Track::new(TrackKind::MainVideo, Codec::H264, "s1");
        let t0 = Instant::now();
        let at = |ms: u64, key: bool, n: u64| {
            let mut f = frame(key, n);
            f.received_at = t0 + Duration::from_millis(ms);
            f
        };
        track.deliver(&at(0, false, 0), &obs); // a stray delta before the key frame
        for (n, ms) in (33..300).step_by(67).enumerate() {
            track.deliver(&at(ms, n == 0, n as u64 + 1), &obs);
        }
        let rx = track.subscribe(64, &obs);
        assert_eq!(
            obs.keyframe_requests.load(Ordering::Relaxed),
            0,
            "the head starts at a key frame: none is asked for"
        );
        track.deliver(&at(300, false, 9), &obs);
        let got: Vec<u8> = rx.try_iter().map(|f| f.data[0]).collect();
        assert_eq!(
            got,
            vec![1, 2, 3, 4, 9],
            "the head, then what came after, in order"
        );
        assert_eq!(obs.drops.load(Ordering::Relaxed), 0);

        // Past the span, a new subscriber starts at the next key frame.
        track.deliver(&at(2_100, false, 10), &obs);
        let late = track.subscribe(64, &obs);
        assert_eq!(obs.keyframe_requests.load(Ordering::Relaxed), 1);
        track.deliver(&at(2_167, false, 11), &obs);
        track.deliver(&at(2_233, true, 12), &obs);
        let got: Vec<u8> = late.try_iter().map(|f| f.data[0]).collect();
        assert_eq!(got, vec![12]);
    }

    #[test]
    fn a_head_that_does_not_fit_the_channel_falls_back_to_the_next_key_frame() {
        let obs = Counting::default();
        let track = Track::new(TrackKind::MainVideo, Codec::H264, "s1");
        let t0 = Instant::now();
        for n in 0..4u64 {
            let mut f = frame(n == 0, n);
            f.received_at = t0 + Duration::from_millis(n * 33);
            track.deliver(&f, &obs);
        }
        let rx = track.subscribe(2, &obs);
        assert_eq!(obs.keyframe_requests.load(Ordering::Relaxed), 1);
        let partial: Vec<u8> = rx.try_iter().map(|f| f.data[0]).collect();
        assert_eq!(partial, vec![0, 1], "what fitted");
        let mut f = frame(false, 4);
        f.received_at = t0 + Duration::from_millis(133);
        track.deliver(&f, &obs);
        assert_eq!(rx.try_iter().count(), 0, "waits for a key frame");
    }

    #[test]
    fn a_slow_audio_subscriber_just_loses_packets() {
        let obs = Counting::default();
        let track = Track::new(TrackKind::Audio, Codec::Opus, "s1");
        let rx = track.subscribe(1, &obs);
        let mut f = frame(true, 0);
        f.codec = Codec::Opus;
        track.deliver(&f, &obs);
        track.deliver(&f, &obs);
        assert_eq!(rx.try_iter().count(), 1);
        assert_eq!(obs.drops.load(Ordering::Relaxed), 1);
        assert_eq!(obs.keyframe_requests.load(Ordering::Relaxed), 0);
        drop(rx);
        track.deliver(&f, &obs);
        assert_eq!(
            track.subscriber_count(),
            0,
            "gone subscribers are forgotten"
        );
    }

    #[test]
    fn users_join_in_order_and_events_flow() {
        let reg = Registry::new(Arc::new(Counting::default()));
        let key = RoomKey {
            sdk_app_id: 1,
            room: RoomId::Int(7),
        };
        let mut w = reg.watch(&key);
        let t_b = Arc::new(Track::new(TrackKind::Audio, Codec::Opus, "sb"));
        reg.add_session(&key, "bob", "sb", false, vec![t_b]);
        let t_a = Arc::new(Track::new(TrackKind::MainVideo, Codec::H264, "sa"));
        reg.add_session(&key, "alice", "sa", false, vec![t_a]);
        let t_a2 = Arc::new(Track::new(TrackKind::AuxVideo, Codec::H264, "sa2"));
        reg.add_session(&key, "alice", "sa2", true, vec![t_a2]);
        assert_eq!(reg.users(&key), vec!["bob", "alice"]);
        assert_eq!(*w.publishers.borrow_and_update(), 2);
        assert!(reg.track(&key, "alice", TrackKind::AuxVideo).is_some());
        reg.remove_session(&key, "alice", "sa2");
        assert_eq!(
            reg.users(&key),
            vec!["bob", "alice"],
            "alice still publishes her main stream"
        );
        reg.remove_session(&key, "alice", "sa");
        reg.remove_session(&key, "bob", "sb");
        assert_eq!(*w.publishers.borrow_and_update(), 0);
        let mut events = Vec::new();
        while let Ok(e) = w.events.try_recv() {
            events.push(e);
        }
        assert_eq!(
            events.first(),
            Some(&RoomEvent::UserJoined {
                user_id: "bob".into()
            })
        );
        assert!(events.contains(&RoomEvent::TrackStopped {
            user_id: "alice".into(),
            kind: TrackKind::AuxVideo
        }));
        assert_eq!(
            events.last(),
            Some(&RoomEvent::UserLeft {
                user_id: "bob".into()
            })
        );
        let other = RoomKey {
            sdk_app_id: 1,
            room: RoomId::Str("7".into()),
        };
        assert!(
            reg.users(&other).is_empty(),
            "string room 7 is not integer room 7"
        );
    }
}
