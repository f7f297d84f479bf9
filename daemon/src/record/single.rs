//! Single-stream recording (RecordMode 1), sans-IO: which tracks of the
//! room to record, and every frame through the timeline into its stream.
//!
//! The worker ([`super::worker`]) owns the IO: it offers the room's tracks
//! ([`SingleRecorder::reconcile`]), feeds the frames of the tracks it was
//! told to subscribe to ([`SingleRecorder::on_frame`]), and carries out the
//! [`Action`]s in order.
//!
//! Subscription rules are [`super::subscribe`]'s. Modify replaces the
//! lists; the next reconcile starts newly admitted tracks (at their next
//! key frame) and ends removed ones cleanly.
//!
//! Files per stream: see [`crate::hls::stream`]. With AvMerge = 1 (and both
//! audio and video recorded) a user's audio and camera share one
//! `<MediaId>_av` stream; the aux stream has no audio and stays `aux_video`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::domain::params::{MediaSelection, StreamType, Subscription};
use crate::hls::naming::{Naming, TrackType};
use crate::hls::segmenter::SegmenterConfig;
use crate::hls::stream::{HlsStream, Output, StreamId};
use crate::record::action::{Action, FileInfo, Stats};
use crate::record::subscribe::{media_of, Admission, Subscribed};
pub use crate::record::subscribe::{OfferedTrack, MAX_STREAMS};
use crate::record::timeline::{TrackClock, UserClock};
use crate::room::{Codec, MediaFrame, TrackKind};

#[derive(Debug, Clone)]
pub struct Settings {
    pub naming: Arc<Naming>,
    pub segment: SegmenterConfig,
    pub stream_type: StreamType,
    pub media: MediaSelection,
    pub av_merge: bool,
    /// Unix µs that PTS [`crate::hls::stream::BASE_90K`] stands for.
    pub epoch_us: i64,
}

struct Sub {
    user_id: String,
    kind: TrackKind,
    session_id: String,
    /// Shared so that routing a frame does not copy the id.
    stream: Arc<StreamId>,
    clock: TrackClock,
}

impl Subscribed for Sub {
    fn user_id(&self) -> &str {
        &self.user_id
    }
    fn kind(&self) -> TrackKind {
        self.kind
    }
    fn session_id(&self) -> &str {
        &self.session_id
    }
}

pub struct SingleRecorder {
    settings: Settings,
    subscription: Subscription,
    subs: HashMap<u64, Sub>,
    streams: HashMap<StreamId, HlsStream>,
    users: HashMap<String, UserClock>,
    admission: Admission,
    next_tag: u64,
    media_started: bool,
    placed: Vec<(i64, MediaFrame)>,
    outputs: Vec<Output>,
    pub stats: Stats,
}

impl SingleRecorder {
    pub fn new(settings: Settings, subscription: Subscription) -> Self {
        Self {
            settings,
            subscription,
            subs: HashMap::new(),
            streams: HashMap::new(),
            users: HashMap::new(),
            admission: Admission::default(),
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
        let st = &self.settings;
        let plan = self.admission.plan_for(
            (st.stream_type, st.media, &self.subscription),
            offered,
            &self.subs,
        );
        let started = plan.settle(&mut actions, |tag, actions| self.end_sub(tag, actions));
        // Start the new ones.
        for t in started {
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
                    stream: Arc::new(stream),
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
        let known = self.subs.contains_key(&tag);
        self.stats
            .arrived(known, &mut self.media_started, &mut actions);
        let Some(sub) = self.subs.get_mut(&tag) else {
            return actions;
        };
        if !self.users.contains_key(&sub.user_id) {
            self.users.insert(sub.user_id.clone(), UserClock::default());
        }
        let Some(user) = self.users.get_mut(&sub.user_id) else {
            return actions;
        };
        let notes = sub.clock.push(frame, user, &mut self.placed);
        self.stats.count_clock(notes);
        let stream = Arc::clone(&sub.stream);
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

    /// The subscription that carries `stream_id`'s video: `tag` itself when
    /// it is a video track, else the stream's video subscription (AvMerge).
    fn video_tag_of(&self, stream_id: &StreamId, tag: u64) -> Option<u64> {
        if self.subs.get(&tag).is_some_and(|s| s.kind.is_video()) {
            return Some(tag);
        }
        self.subs
            .iter()
            .filter(|(_, s)| s.kind.is_video() && *s.stream == *stream_id)
            .map(|(t, _)| *t)
            .min()
    }

    fn drain_outputs(&mut self, stream_id: &StreamId, tag: u64, actions: &mut Vec<Action>) {
        // Looked up only when a key frame is wanted (rare), not per frame.
        let video_tag = self
            .outputs
            .iter()
            .any(|o| matches!(o, Output::WantKeyframe))
            .then(|| self.video_tag_of(stream_id, tag))
            .flatten();
        for o in self.outputs.drain(..) {
            actions.push(match o {
                Output::Segment { key, data } => Action::Store { key, data },
                Output::Journal(write) => Action::Journal(write),
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
                // Only a video track can answer with a key frame: in a
                // merged (AvMerge) stream the segment may run long while
                // audio is being placed, so ask the stream's video track.
                Output::WantKeyframe => match video_tag {
                    Some(tag) => Action::RequestKeyframe { tag },
                    None => continue,
                },
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
        let ids: HashSet<&StreamId> = self.subs.values().map(|s| &*s.stream).collect();
        ids.len()
    }

    /// Errors inside streams (corrupt audio), summed.
    pub fn stream_errors(&self) -> u64 {
        self.streams.values().map(|s| s.errors).sum()
    }

    /// Segments ended without a key frame (see `hls::segmenter`).
    pub fn segments_ended_early(&self) -> u64 {
        self.streams.values().map(|s| s.ended_early).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::params::{RoomId, UserFilter, UserPattern};
    use crate::hls::naming::Media;
    use crate::hls::stream::tests::{annexb, PPS, SPS_720P};
    use crate::hls::stream::BASE_90K;
    use crate::media::ts::{PID_AUDIO, PID_VIDEO};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// The task epoch: 2023-11-14 22:13:20.000 UTC.
    const EPOCH_US: i64 = 1_700_000_000_000_000;
    /// Media sits this far after whole milliseconds, so that the
    /// timeline's µs rounding never moves a key frame's PTS.
    const SLACK_US: i64 = 50;
    /// The smallest network delay of every publisher: the offset the
    /// timeline finds is the clock skew plus this.
    const MIN_DELAY_US: i64 = 20_000;
    const USER: &str = "1686119";
    const FOLDER: &str = "rec/task-1/";
    /// `<SdkAppId>_<RoomId>__UserId_s_<base64 of USER>__UserId_e_`.
    const STEM: &str = "1400123456_12345__UserId_s_MTY4NjExOQ..__UserId_e_";

    fn at(us: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    }

    fn naming() -> Arc<Naming> {
        Arc::new(Naming::new(
            &["rec".to_owned()],
            "task-1",
            1_400_123_456,
            &RoomId::Int(12345),
            0,
        ))
    }

    fn recorder(
        stream_type: StreamType,
        media: MediaSelection,
        av_merge: bool,
        subscription: Subscription,
    ) -> SingleRecorder {
        SingleRecorder::new(
            Settings {
                naming: naming(),
                segment: SegmenterConfig {
                    target: Duration::from_secs(4),
                    keyframe_grace: Duration::from_secs(2),
                    max_keyframe_wait: crate::hls::segmenter::MAX_KEYFRAME_WAIT,
                },
                stream_type,
                media,
                av_merge,
                epoch_us: EPOCH_US,
            },
            subscription,
        )
    }

    fn offer(user_id: &str, kind: TrackKind, session_id: &str) -> OfferedTrack {
        OfferedTrack {
            user_id: user_id.to_owned(),
            kind,
            session_id: session_id.to_owned(),
        }
    }

    /// Both tracks of a user's main stream.
    fn main_of(user_id: &str, session_id: &str) -> Vec<OfferedTrack> {
        vec![
            offer(user_id, TrackKind::Audio, session_id),
            offer(user_id, TrackKind::MainVideo, session_id),
        ]
    }

    /// One line per action, file keys without the task folder.
    fn summary(a: &Action) -> String {
        let short = |k: &str| k.strip_prefix(FOLDER).unwrap_or(k).to_owned();
        match a {
            Action::Subscribe {
                tag,
                user_id,
                kind,
                session_id,
            } => format!("subscribe {tag} {user_id} {} {session_id}", kind.label()),
            Action::Unsubscribe { tag } => format!("unsubscribe {tag}"),
            Action::Store { key, .. } => format!("store {}", short(key)),
            Action::StorePlaylist { key, .. } => format!("playlist {}", short(key)),
            Action::FileSliced(f) => format!("sliced {}", f.file_name),
            Action::RequestKeyframe { tag } => format!("keyframe {tag}"),
            Action::MediaStarted => "media started".to_owned(),
            Action::StreamRefused { user_id, media } => {
                format!("refused {user_id} {}", media.as_str())
            }
            Action::Journal(w) => format!("journal {}", short(&w.key)),
        }
    }

    /// Journal writes (`hls::stream`'s tests cover them) left out.
    fn summaries(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter(|a| !matches!(a, Action::Journal(_)))
            .map(summary)
            .collect()
    }

    /// Summaries with repeats in a row folded: a stream that ends stores
    /// its playlist after the last segment and again with `#EXT-X-ENDLIST`;
    /// these tests do not insist on the first of the two.
    fn folded(actions: &[Action]) -> Vec<String> {
        let mut lines = summaries(actions);
        lines.dedup();
        lines
    }

    /// The summaries that mention `needle` (a stream's `<MediaId>_<Type>`).
    fn of_stream(actions: &[Action], needle: &str) -> Vec<String> {
        summaries(actions)
            .into_iter()
            .filter(|s| s.contains(needle))
            .collect()
    }

    fn subscribe_line(tag: u64, user_id: &str, kind: TrackKind, session_id: &str) -> String {
        format!("subscribe {tag} {user_id} {} {session_id}", kind.label())
    }

    fn stores<'a>(actions: &'a [Action], needle: &str) -> Vec<(&'a str, &'a [u8])> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Store { key, data } if key.contains(needle) => {
                    Some((key.as_str(), data.as_slice()))
                }
                _ => None,
            })
            .collect()
    }

    fn last_playlist<'a>(actions: &'a [Action], needle: &str) -> (&'a str, &'a FileInfo) {
        actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::StorePlaylist { key, text, file } if key.contains(needle) => {
                    Some((text.as_str(), file))
                }
                _ => None,
            })
            .expect("a playlist")
    }

    /// The PTS of every PES that starts on `pid` in a TS segment.
    fn pes_pts(ts: &[u8], pid: u16) -> Vec<u64> {
        pes_list(ts)
            .into_iter()
            .filter(|(p, _)| *p == pid)
            .map(|(_, pts)| pts)
            .collect()
    }

    /// (PID, PTS) of every PES of a TS segment, in the order their first
    /// packets stand in the file. Packet-level on purpose: the tests check
    /// that order (presentation order within a segment), and
    /// `media::ts_demux` hands PES out in the order they *end*.
    fn pes_list(ts: &[u8]) -> Vec<(u16, u64)> {
        assert_eq!(ts.len() % 188, 0, "whole TS packets");
        ts.chunks(188)
            .map(|p| (p, (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2])))
            .filter(|(p, pid)| p[1] & 0x40 != 0 && (*pid == PID_VIDEO || *pid == PID_AUDIO))
            .map(|(p, pid)| {
                let mut i = 4;
                if p[3] & 0x20 != 0 {
                    i += 1 + usize::from(p[4]);
                }
                let pes = &p[i..];
                assert_eq!(&pes[..3], &[0, 0, 1], "PES start code");
                let t = &pes[9..14];
                let pts = (u64::from(t[0] >> 1 & 7) << 30)
                    | (u64::from(t[1]) << 22)
                    | (u64::from(t[2] >> 1) << 15)
                    | (u64::from(t[3]) << 7)
                    | u64::from(t[4] >> 1);
                (pid, pts)
            })
            .collect()
    }

    /// True when an audio segment's first PTS starts with video captured
    /// at the same instant: AAC moves the first frame back by the encoder
    /// priming (up to one frame, 1920 ticks), and 48 kHz rounding adds up
    /// to one tick.
    fn starts_with_video(audio_pts: u64, video_pts: u64) -> bool {
        (video_pts - 1_921..=video_pts).contains(&audio_pts)
    }

    /// The wall time a PTS stands for (the task's PTS definition).
    fn wall_of_pts(pts: u64) -> SystemTime {
        at(EPOCH_US + (pts as i64 - BASE_90K as i64) * 100 / 9)
    }

    /// The ordering rules every run must keep: a segment is stored before
    /// any playlist naming it; FileSliced comes once per playlist, after
    /// that playlist's first segment and before its first StorePlaylist;
    /// nothing is stored twice; keys are the task folder plus the name.
    fn check_order(actions: &[Action]) {
        let mut stored: HashSet<String> = HashSet::new();
        let mut sliced: HashSet<String> = HashSet::new();
        let mut playlisted: HashSet<String> = HashSet::new();
        for a in actions {
            match a {
                Action::Store { key, data } => {
                    assert!(key.starts_with(FOLDER) && key.ends_with(".ts"), "{key}");
                    assert!(!data.is_empty() && data[0] == 0x47, "{key}: TS");
                    assert!(stored.insert(key.clone()), "stored twice: {key}");
                }
                Action::FileSliced(f) => {
                    let base = f.file_name.trim_end_matches(".m3u8");
                    assert!(
                        stored
                            .iter()
                            .any(|k| k.starts_with(&format!("{FOLDER}{base}_"))),
                        "FileSliced follows the playlist's first segment: {}",
                        f.file_name
                    );
                    assert!(
                        !playlisted.contains(&f.file_name),
                        "FileSliced before the first playlist: {}",
                        f.file_name
                    );
                    assert!(
                        sliced.insert(f.file_name.clone()),
                        "sliced twice: {}",
                        f.file_name
                    );
                }
                Action::StorePlaylist { key, text, file } => {
                    assert_eq!(key, &format!("{FOLDER}{}", file.file_name));
                    assert!(
                        sliced.contains(&file.file_name),
                        "no FileSliced before {}",
                        file.file_name
                    );
                    playlisted.insert(file.file_name.clone());
                    let base = file.file_name.trim_end_matches(".m3u8");
                    for name in text.lines().filter(|l| !l.starts_with('#')) {
                        assert!(name.starts_with(&format!("{base}_")), "{name}");
                        assert!(
                            stored.contains(&format!("{FOLDER}{name}")),
                            "{key} names {name} before it was stored"
                        );
                    }
                }
                _ => {}
            }
        }
    }

    /// Real Opus packets: 20 ms each of a 440 Hz tone, mono.
    struct Tone {
        encoder: opus::Encoder,
        phase: f32,
    }

    impl Tone {
        fn new() -> Self {
            Self {
                encoder: opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Audio)
                    .expect("opus encoder"),
                phase: 0.0,
            }
        }

        fn packet(&mut self) -> Vec<u8> {
            let step = 2.0 * std::f32::consts::PI * 440.0 / 48_000.0;
            let mut pcm = [0.0f32; 960];
            for s in &mut pcm {
                *s = 0.25 * self.phase.sin();
                self.phase = (self.phase + step) % (2.0 * std::f32::consts::PI);
            }
            self.encoder
                .encode_vec_float(&pcm, 4000)
                .expect("opus encode")
        }
    }

    /// One publication of a user: media captured from server time
    /// `start_us` on, by a sender whose clock is `skew_us` behind the
    /// server's. Every frame arrives `MIN_DELAY_US` plus some jitter after
    /// capture; the timeline places it at exactly its capture time (server
    /// clock) plus `MIN_DELAY_US`, i.e. at `start_us + media time`.
    #[derive(Clone, Copy)]
    struct Session {
        start_us: i64,
        skew_us: i64,
        /// Frames between key frames (15 fps).
        gop: u64,
    }

    impl Session {
        fn at_second(s: i64, skew_us: i64) -> Self {
            Self {
                start_us: EPOCH_US + s * 1_000_000 + SLACK_US,
                skew_us,
                gop: 30,
            }
        }

        #[allow(clippy::too_many_arguments)]
        fn frame(
            &self,
            codec: Codec,
            data: Vec<u8>,
            keyframe: bool,
            rtp_time: u64,
            clock_rate: u32,
            placed_us: i64,
            jitter_us: i64,
        ) -> MediaFrame {
            MediaFrame {
                codec,
                data: Arc::from(data),
                keyframe,
                rtp_time,
                clock_rate,
                ntp_time: Some(at(placed_us - self.skew_us - MIN_DELAY_US)),
                received_at: Instant::now(),
                received_wall: at(placed_us + jitter_us),
                report_stamp: None,
                contiguous: true,
            }
        }

        /// Video frame `n` (15 fps); key frames carry SPS and PPS.
        fn video(&self, n: u64) -> MediaFrame {
            let key = n % self.gop == 0;
            let tag = [(n / 255) as u8 + 1, (n % 255) as u8 + 1, 0x80];
            let data = if key {
                annexb(&[&SPS_720P, &PPS, &[&[0x65, 0x88, 0x84][..], &tag].concat()])
            } else {
                annexb(&[&[&[0x41, 0x9a][..], &tag].concat()])
            };
            let placed = self.start_us + (n * 200_000 / 3) as i64;
            // Only frames whose capture time is a whole µs arrive with the
            // least delay.
            let jitter = [0, 9_000, 4_000][(n % 3) as usize];
            self.frame(
                Codec::H264,
                data,
                key,
                3_000_000_000 + n * 6_000,
                90_000,
                placed,
                jitter,
            )
        }

        /// Opus packet `k` (20 ms each).
        fn audio(&self, k: u64, packet: Vec<u8>) -> MediaFrame {
            let placed = self.start_us + k as i64 * 20_000;
            self.frame(
                Codec::Opus,
                packet,
                true,
                4_000_000_000 + k * 960,
                48_000,
                placed,
                (k % 4) as i64 * 3_000,
            )
        }

        /// `seconds` of media for the given subscription tags, in arrival order.
        fn media(
            &self,
            seconds: u64,
            audio_tag: Option<u64>,
            video_tags: &[u64],
            tone: &mut Tone,
        ) -> Vec<(u64, MediaFrame)> {
            let mut frames = Vec::new();
            for n in 0..seconds * 15 {
                for &tag in video_tags {
                    frames.push((tag, self.video(n)));
                }
            }
            if let Some(tag) = audio_tag {
                for k in 0..seconds * 50 {
                    frames.push((tag, self.audio(k, tone.packet())));
                }
            }
            frames.sort_by_key(|(_, f)| f.received_wall);
            frames
        }
    }

    fn feed(rec: &mut SingleRecorder, frames: Vec<(u64, MediaFrame)>) -> Vec<Action> {
        let mut actions = Vec::new();
        for (tag, f) in frames {
            actions.extend(rec.on_frame(tag, f));
        }
        actions
    }

    fn video_segment(utc: &str) -> String {
        format!("{STEM}main_video_{utc}.ts")
    }

    const HEADER: &str =
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-ALLOW-CACHE:NO\n#EXT-X-MEDIA-SEQUENCE:0\n";

    #[test]
    fn stream_type_and_media_selection_pick_the_tracks() {
        use MediaSelection::{Aux, Main, MainAndAux};
        use StreamType::{AudioOnly, AudioVideo, VideoOnly};
        use TrackKind::{Audio, AuxVideo, MainVideo};
        let offered = vec![
            offer("u1", Audio, "a1"),
            offer("u1", MainVideo, "m1"),
            offer("u1", AuxVideo, "x1"),
        ];
        let cases: [(StreamType, MediaSelection, &[TrackKind]); 9] = [
            (AudioOnly, MainAndAux, &[Audio]),
            (AudioOnly, Main, &[Audio]),
            (AudioOnly, Aux, &[Audio]),
            (VideoOnly, MainAndAux, &[MainVideo, AuxVideo]),
            (VideoOnly, Main, &[MainVideo]),
            (VideoOnly, Aux, &[AuxVideo]),
            (AudioVideo, MainAndAux, &[Audio, MainVideo, AuxVideo]),
            (AudioVideo, Main, &[Audio, MainVideo]),
            // Audio belongs to the main stream but is always recorded.
            (AudioVideo, Aux, &[Audio, AuxVideo]),
        ];
        for (st, media, kinds) in cases {
            let mut rec = recorder(st, media, false, Subscription::default());
            let actions = rec.reconcile(&offered);
            let expected: Vec<Action> = kinds
                .iter()
                .enumerate()
                .map(|(i, &kind)| {
                    let t = offered.iter().find(|t| t.kind == kind).expect("offered");
                    Action::Subscribe {
                        tag: i as u64 + 1,
                        user_id: "u1".to_owned(),
                        kind,
                        session_id: t.session_id.clone(),
                    }
                })
                .collect();
            assert_eq!(actions, expected, "{st:?} {media:?}");
            assert_eq!(rec.active_streams(), kinds.len(), "{st:?} {media:?}");
            assert_eq!(rec.reconcile(&offered), vec![], "nothing changed");
        }
    }

    #[test]
    fn allow_and_deny_lists_apply_per_kind_with_prefix_wildcards() {
        let sub = Subscription {
            audio: UserFilter::Allow(vec![
                UserPattern::Exact("alice".into()),
                UserPattern::Prefix("bot_".into()),
            ]),
            video: UserFilter::Deny(vec![
                UserPattern::Exact("alice".into()),
                UserPattern::Prefix("bot_".into()),
            ]),
        };
        let mut rec = recorder(StreamType::AudioVideo, MediaSelection::Main, false, sub);
        let mut offered = Vec::new();
        for u in ["alice", "bob", "bot_1", "robot_9", "bot_.*$"] {
            offered.extend(main_of(u, "s"));
        }
        assert_eq!(
            summaries(&rec.reconcile(&offered)),
            vec![
                subscribe_line(1, "alice", TrackKind::Audio, "s"),
                subscribe_line(2, "bob", TrackKind::MainVideo, "s"),
                subscribe_line(3, "bot_1", TrackKind::Audio, "s"),
                // A prefix matches the start of the id only.
                subscribe_line(4, "robot_9", TrackKind::MainVideo, "s"),
                // The pattern's own text is an id it matches.
                subscribe_line(5, "bot_.*$", TrackKind::Audio, "s"),
            ]
        );
        // An allow list of one prefix admits nobody else.
        let sub = Subscription {
            audio: UserFilter::Deny(vec![]),
            video: UserFilter::Allow(vec![UserPattern::Prefix("ro".into())]),
        };
        let mut rec = recorder(
            StreamType::VideoOnly,
            MediaSelection::MainAndAux,
            false,
            sub,
        );
        let mut offered = main_of("robot_9", "s");
        offered.push(offer("robot_9", TrackKind::AuxVideo, "s"));
        offered.extend(main_of("bob", "s"));
        offered.push(offer("bob", TrackKind::AuxVideo, "s"));
        assert_eq!(
            summaries(&rec.reconcile(&offered)),
            vec![
                subscribe_line(1, "robot_9", TrackKind::MainVideo, "s"),
                subscribe_line(2, "robot_9", TrackKind::AuxVideo, "s"),
            ]
        );
    }

    #[test]
    fn modify_ends_removed_users_and_starts_newly_admitted_ones() {
        let sub = Subscription {
            audio: UserFilter::Allow(vec![
                UserPattern::Exact("alice".into()),
                UserPattern::Prefix("bot_".into()),
            ]),
            video: UserFilter::Deny(vec![
                UserPattern::Exact("alice".into()),
                UserPattern::Prefix("bot_".into()),
            ]),
        };
        let mut rec = recorder(StreamType::AudioVideo, MediaSelection::Main, false, sub);
        let mut offered = Vec::new();
        for u in ["alice", "bob", "bot_1", "carol", "robot_9"] {
            offered.extend(main_of(u, "s"));
        }
        assert_eq!(
            summaries(&rec.reconcile(&offered)),
            vec![
                subscribe_line(1, "alice", TrackKind::Audio, "s"),
                subscribe_line(2, "bob", TrackKind::MainVideo, "s"),
                subscribe_line(3, "bot_1", TrackKind::Audio, "s"),
                subscribe_line(4, "carol", TrackKind::MainVideo, "s"),
                subscribe_line(5, "robot_9", TrackKind::MainVideo, "s"),
            ]
        );
        rec.set_subscription(Subscription {
            audio: UserFilter::Deny(vec![UserPattern::Prefix("bot_".into())]),
            video: UserFilter::Allow(vec![UserPattern::Prefix("bo".into())]),
        });
        // Nothing changes until the next reconcile.
        assert_eq!(rec.active_streams(), 5);
        assert_eq!(
            summaries(&rec.reconcile(&offered)),
            vec![
                "unsubscribe 3".to_owned(),
                "unsubscribe 4".to_owned(),
                "unsubscribe 5".to_owned(),
                subscribe_line(6, "bob", TrackKind::Audio, "s"),
                subscribe_line(7, "bot_1", TrackKind::MainVideo, "s"),
                subscribe_line(8, "carol", TrackKind::Audio, "s"),
                subscribe_line(9, "robot_9", TrackKind::Audio, "s"),
            ]
        );
        assert_eq!(rec.active_streams(), 6);
        assert_eq!(rec.reconcile(&offered), vec![]);
        // Back to recording everyone: the missing tracks start.
        rec.set_subscription(Subscription::default());
        assert_eq!(
            summaries(&rec.reconcile(&offered)),
            vec![
                subscribe_line(10, "alice", TrackKind::MainVideo, "s"),
                subscribe_line(11, "bot_1", TrackKind::Audio, "s"),
                subscribe_line(12, "carol", TrackKind::MainVideo, "s"),
                subscribe_line(13, "robot_9", TrackKind::MainVideo, "s"),
            ]
        );
        assert_eq!(rec.active_streams(), 10);
    }

    #[test]
    fn a_user_removed_by_modify_has_its_files_closed_and_the_others_go_on() {
        let mut rec = recorder(
            StreamType::VideoOnly,
            MediaSelection::Main,
            false,
            Subscription::default(),
        );
        let offered = vec![
            offer(USER, TrackKind::MainVideo, "s"),
            offer("bob", TrackKind::MainVideo, "s"),
        ];
        assert_eq!(rec.reconcile(&offered).len(), 2);
        let s = Session::at_second(1, 3_000_000);
        let mut actions = feed(&mut rec, s.media(3, None, &[1, 2], &mut Tone::new()));
        rec.set_subscription(Subscription {
            audio: UserFilter::All,
            video: UserFilter::Deny(vec![UserPattern::Exact(USER.into())]),
        });
        let modify = rec.reconcile(&offered);
        let playlist = format!("{STEM}main_video.m3u8");
        assert_eq!(
            folded(&modify),
            vec![
                "unsubscribe 1".to_owned(),
                format!("store {}", video_segment("20231114221321000")),
                format!("sliced {playlist}"),
                format!("playlist {playlist}"),
            ]
        );
        let (text, file) = last_playlist(&modify, "main_video");
        assert_eq!(
            text,
            format!(
                "{HEADER}#EXT-X-TARGETDURATION:3\n#EXT-X-TRTC-START-REC-TIME:1700000001000\n\
                 #EXT-X-TRTC-VIDEO-METADATA:WIDTH:1280 HEIGHT:720\n#EXTINF:3.000\n{}\n\
                 #EXT-X-ENDLIST\n",
                video_segment("20231114221321000")
            )
        );
        assert_eq!(
            file,
            &FileInfo {
                user_id: USER.to_owned(),
                file_name: playlist,
                track_type: TrackType::Video,
                begin_ms: 1_700_000_001_000,
            }
        );
        assert_eq!(rec.active_streams(), 1, "bob goes on");
        actions.extend(modify);
        actions.extend(rec.finish());
        check_order(&actions);
        assert_eq!(
            folded(&actions)
                .iter()
                .filter(|a| a.contains("UserId_s_Ym9i_"))
                .count(),
            3,
            "bob: store, sliced, playlist"
        );
    }

    #[test]
    fn at_most_25_streams_first_come_first_served() {
        let mut rec = recorder(
            StreamType::AudioVideo,
            MediaSelection::Main,
            false,
            Subscription::default(),
        );
        let users: Vec<String> = (0..26).map(|i| format!("u{i:02}")).collect();
        let mut offered: Vec<OfferedTrack> = users.iter().flat_map(|u| main_of(u, "s")).collect();
        let actions = rec.reconcile(&offered);
        let mut expected = vec!["refused u25 main".to_owned()];
        for (i, u) in users[..25].iter().enumerate() {
            let tag = 2 * i as u64 + 1;
            expected.push(subscribe_line(tag, u, TrackKind::Audio, "s"));
            expected.push(subscribe_line(tag + 1, u, TrackKind::MainVideo, "s"));
        }
        assert_eq!(summaries(&actions), expected);
        assert_eq!(
            actions[0],
            Action::StreamRefused {
                user_id: "u25".to_owned(),
                media: Media::Main,
            }
        );
        assert_eq!(rec.active_streams(), 50, "25 users' audio and video files");
        // Refused once only, whatever the order offered later.
        assert_eq!(rec.reconcile(&offered), vec![]);
        offered.rotate_right(2);
        assert_eq!(offered[0].user_id, "u25");
        assert_eq!(
            rec.reconcile(&offered),
            vec![],
            "admitted streams keep their slots"
        );
        // u03 leaves: the waiting user takes the slot.
        offered.retain(|t| t.user_id != "u03");
        assert_eq!(
            summaries(&rec.reconcile(&offered)),
            vec![
                "unsubscribe 7".to_owned(),
                "unsubscribe 8".to_owned(),
                subscribe_line(51, "u25", TrackKind::Audio, "s"),
                subscribe_line(52, "u25", TrackKind::MainVideo, "s"),
            ]
        );
        assert_eq!(rec.active_streams(), 50);
        // u03 comes back to a full task: refused (once).
        offered.extend(main_of("u03", "s2"));
        assert_eq!(
            summaries(&rec.reconcile(&offered)),
            vec!["refused u03 main"]
        );
        assert_eq!(rec.reconcile(&offered), vec![]);
    }

    #[test]
    fn the_stream_limit_counts_main_and_aux_streams() {
        let mut rec = recorder(
            StreamType::VideoOnly,
            MediaSelection::MainAndAux,
            false,
            Subscription::default(),
        );
        let mut offered = Vec::new();
        for i in 0..13 {
            let u = format!("u{i:02}");
            offered.push(offer(&u, TrackKind::MainVideo, "s"));
            offered.push(offer(&u, TrackKind::AuxVideo, "s"));
        }
        let actions = summaries(&rec.reconcile(&offered));
        assert_eq!(actions.len(), 26);
        assert_eq!(actions[0], "refused u12 aux");
        assert_eq!(
            actions[25],
            subscribe_line(25, "u12", TrackKind::MainVideo, "s")
        );
        assert!(!actions.iter().any(|a| a.contains("u12 aux_video")));
        // u00's screen share stops: u12's is admitted.
        offered.retain(|t| !(t.user_id == "u00" && t.kind == TrackKind::AuxVideo));
        assert_eq!(
            summaries(&rec.reconcile(&offered)),
            vec![
                "unsubscribe 2".to_owned(),
                subscribe_line(26, "u12", TrackKind::AuxVideo, "s"),
            ]
        );
    }

    #[test]
    fn a_replaced_publication_ends_the_old_subscription_and_starts_a_new_one() {
        let mut rec = recorder(
            StreamType::AudioVideo,
            MediaSelection::Main,
            false,
            Subscription::default(),
        );
        assert_eq!(
            summaries(&rec.reconcile(&main_of(USER, "s1"))),
            vec![
                subscribe_line(1, USER, TrackKind::Audio, "s1"),
                subscribe_line(2, USER, TrackKind::MainVideo, "s1"),
            ]
        );
        let first = Session::at_second(1, 3_000_000);
        let mut actions = feed(&mut rec, first.media(3, None, &[2], &mut Tone::new()));
        // The camera is published again (new session); audio goes on.
        let offered = vec![
            offer(USER, TrackKind::Audio, "s1"),
            offer(USER, TrackKind::MainVideo, "s2"),
        ];
        let replaced = rec.reconcile(&offered);
        let playlist = format!("{STEM}main_video.m3u8");
        assert_eq!(
            folded(&replaced),
            vec![
                "unsubscribe 2".to_owned(),
                format!("store {}", video_segment("20231114221321000")),
                format!("sliced {playlist}"),
                format!("playlist {playlist}"),
                subscribe_line(3, USER, TrackKind::MainVideo, "s2"),
            ]
        );
        assert!(last_playlist(&replaced, "main_video")
            .0
            .ends_with("#EXT-X-ENDLIST\n"));
        assert_eq!(rec.reconcile(&offered), vec![], "idempotent");
        assert_eq!(rec.active_streams(), 2);
        // A frame of the old subscription still in flight.
        let stray = rec.on_frame(2, first.video(45));
        assert_eq!(stray, vec![]);
        assert_eq!(rec.stats.stray_frames, 1);
        assert_eq!(rec.stats.frames, 45);
        // The new publication, from 5 s on (the same device: the user's
        // clock offset, fixed by the first, still holds).
        let second = Session::at_second(5, 3_000_000);
        actions.extend(replaced);
        actions.extend(feed(
            &mut rec,
            second.media(2, None, &[3], &mut Tone::new()),
        ));
        actions.extend(rec.finish());
        check_order(&actions);
        assert_eq!(
            last_playlist(&actions, "main_video").0,
            format!(
                "{HEADER}#EXT-X-TARGETDURATION:3\n#EXT-X-TRTC-START-REC-TIME:1700000001000\n\
                 #EXT-X-TRTC-VIDEO-METADATA:WIDTH:1280 HEIGHT:720\n#EXTINF:3.000\n{}\n\
                 #EXT-X-DISCONTINUITY\n#EXTINF:2.000\n{}\n#EXT-X-ENDLIST\n",
                video_segment("20231114221321000"),
                video_segment("20231114221325000"),
            )
        );
        assert_eq!(
            summaries(&actions)
                .iter()
                .filter(|s| *s == "media started")
                .count(),
            1
        );
        assert_eq!(actions[0], Action::MediaStarted);
    }

    #[test]
    fn segments_are_stored_before_the_playlists_that_name_them() {
        let mut rec = recorder(
            StreamType::AudioVideo,
            MediaSelection::Main,
            false,
            Subscription::default(),
        );
        assert_eq!(
            summaries(&rec.reconcile(&main_of(USER, "s1"))),
            vec![
                subscribe_line(1, USER, TrackKind::Audio, "s1"),
                subscribe_line(2, USER, TrackKind::MainVideo, "s1"),
            ]
        );
        // 12 s of media from 1 s into the task; the sender's clock is 3 s
        // behind the server's.
        let s = Session::at_second(1, 3_000_000);
        let actions = feed(&mut rec, s.media(12, Some(1), &[2], &mut Tone::new()));
        assert_eq!(actions[0], Action::MediaStarted);
        assert_eq!(
            actions
                .iter()
                .filter(|a| **a == Action::MediaStarted)
                .count(),
            1
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::RequestKeyframe { .. })),
            "a 2 s GOP needs no key frame requests"
        );
        let video_playlist = format!("{STEM}main_video.m3u8");
        let audio_playlist = format!("{STEM}main_audio.m3u8");
        // Video: cut at the key frames at 4 s and 8 s into the media.
        let v = [
            video_segment("20231114221321000"),
            video_segment("20231114221325000"),
            video_segment("20231114221329000"),
        ];
        assert_eq!(
            of_stream(&actions, "main_video"),
            vec![
                format!("store {}", v[0]),
                format!("sliced {video_playlist}"),
                format!("playlist {video_playlist}"),
                format!("store {}", v[1]),
                format!("playlist {video_playlist}"),
            ]
        );
        // Audio: AAC frames of 1024 samples; the cut comes at the first
        // frame 4 s after the segment start: every 188 frames.
        let a = of_stream(&actions, "main_audio");
        assert_eq!(a.len(), 5, "{a:?}");
        assert!(a[0].starts_with(&format!("store {STEM}main_audio_")));
        assert_eq!(a[1], format!("sliced {audio_playlist}"));
        assert_eq!(a[2], format!("playlist {audio_playlist}"));
        assert!(a[3].starts_with(&format!("store {STEM}main_audio_")));
        assert_eq!(a[4], format!("playlist {audio_playlist}"));

        let fin = rec.finish();
        let fin_lines = folded(&fin);
        assert_eq!(fin_lines.len(), 6, "{fin_lines:?}");
        assert_eq!(fin_lines[0], "unsubscribe 1");
        assert!(fin_lines[1].starts_with(&format!("store {STEM}main_audio_")));
        assert_eq!(fin_lines[2], format!("playlist {audio_playlist}"));
        assert_eq!(fin_lines[3], "unsubscribe 2");
        assert_eq!(fin_lines[4], format!("store {}", v[2]));
        assert_eq!(fin_lines[5], format!("playlist {video_playlist}"));
        let all: Vec<Action> = actions.into_iter().chain(fin).collect();
        check_order(&all);

        // The video playlist, byte for byte.
        let (text, file) = last_playlist(&all, "main_video");
        assert_eq!(
            text,
            format!(
                "{HEADER}#EXT-X-TARGETDURATION:4\n#EXT-X-TRTC-START-REC-TIME:1700000001000\n\
                 #EXT-X-TRTC-VIDEO-METADATA:WIDTH:1280 HEIGHT:720\n\
                 #EXTINF:4.000\n{}\n#EXTINF:4.000\n{}\n#EXTINF:4.000\n{}\n#EXT-X-ENDLIST\n",
                v[0], v[1], v[2]
            )
        );
        let video_file = FileInfo {
            user_id: USER.to_owned(),
            file_name: video_playlist.clone(),
            track_type: TrackType::Video,
            begin_ms: 1_700_000_001_000,
        };
        assert_eq!(file, &video_file);
        assert!(all.contains(&Action::FileSliced(video_file)));
        // Every frame in its segment, in order, at its PTS.
        let segs = stores(&all, "main_video_");
        assert_eq!(segs.len(), 3);
        for (i, (key, data)) in segs.iter().enumerate() {
            assert_eq!(*key, format!("{FOLDER}{}", v[i]));
            let pts = pes_pts(data, PID_VIDEO);
            assert_eq!(pts.len(), 60, "{key}");
            assert_eq!(pts[0], BASE_90K + 90_004 + i as u64 * 360_000);
            assert!(pts
                .windows(2)
                .all(|w| (5_999..=6_001).contains(&(w[1] - w[0]))));
            assert!(pes_pts(data, PID_AUDIO).is_empty());
        }

        // The audio playlist: 4.011 s segments named after their first
        // AAC frame, which is within one frame (encoder priming) of 1 s.
        let segs = stores(&all, "main_audio_");
        assert_eq!(segs.len(), 3);
        let firsts: Vec<u64> = segs
            .iter()
            .map(|(key, data)| {
                let pts = pes_pts(data, PID_AUDIO);
                assert!(pes_pts(data, PID_VIDEO).is_empty());
                assert!(pts.windows(2).all(|w| w[1] - w[0] == 1_920), "{key}");
                let name = naming().single_segment(
                    USER,
                    Media::Main,
                    TrackType::Audio,
                    wall_of_pts(pts[0]),
                );
                assert_eq!(*key, format!("{FOLDER}{name}"));
                pts[0]
            })
            .collect();
        assert!(
            starts_with_video(firsts[0], BASE_90K + 90_004),
            "{}",
            firsts[0]
        );
        assert_eq!(firsts[1] - firsts[0], 188 * 1_920);
        assert_eq!(firsts[2] - firsts[1], 188 * 1_920);
        assert_eq!(pes_pts(segs[0].1, PID_AUDIO).len(), 188);
        assert_eq!(pes_pts(segs[1].1, PID_AUDIO).len(), 188);
        let last = pes_pts(segs[2].1, PID_AUDIO).len();
        assert!(
            (186..=189).contains(&last),
            "12 s = 562.5 AAC frames: {last}"
        );
        let (text, file) = last_playlist(&all, "main_audio");
        let begin_ms = (EPOCH_US + (firsts[0] as i64 - BASE_90K as i64) * 100 / 9) / 1000;
        assert_eq!(
            file,
            &FileInfo {
                user_id: USER.to_owned(),
                file_name: audio_playlist,
                track_type: TrackType::Audio,
                begin_ms: begin_ms as u64,
            }
        );
        let names: Vec<&str> = segs
            .iter()
            .map(|(k, _)| k.strip_prefix(FOLDER).expect("folder"))
            .collect();
        assert_eq!(
            text,
            format!(
                "{HEADER}#EXT-X-TARGETDURATION:5\n#EXT-X-TRTC-START-REC-TIME:{begin_ms}\n\
                 #EXTINF:4.011\n{}\n#EXTINF:4.011\n{}\n#EXTINF:{:.3}\n{}\n#EXT-X-ENDLIST\n",
                names[0],
                names[1],
                last as f64 * 1_920.0 / 90_000.0,
                names[2]
            )
        );
        assert_eq!(rec.stats.frames, 180 + 600);
        assert_eq!(rec.stats.stray_frames, 0);
        assert_eq!(rec.stats.clock_fallbacks, 0);
        assert_eq!(rec.stats.reanchors, 0);
        assert_eq!(rec.stats.clock_overflows, 0);
        assert_eq!(rec.stream_errors(), 0);
        assert_eq!(rec.active_streams(), 0);
    }

    #[test]
    fn a_user_who_leaves_and_returns_continues_after_one_discontinuity() {
        let mut rec = recorder(
            StreamType::AudioVideo,
            MediaSelection::Main,
            false,
            Subscription::default(),
        );
        let mut tone = Tone::new();
        assert_eq!(rec.reconcile(&main_of(USER, "s1")).len(), 2);
        let first = Session::at_second(1, 3_000_000);
        let mut actions = feed(&mut rec, first.media(6, Some(1), &[2], &mut tone));
        // The user leaves: both files end.
        let left = rec.reconcile(&[]);
        let lines = folded(&left);
        assert_eq!(lines.len(), 6, "{lines:?}");
        assert_eq!(lines[0], "unsubscribe 1");
        assert_eq!(lines[3], "unsubscribe 2");
        assert_eq!(
            lines[4],
            format!("store {}", video_segment("20231114221325000"))
        );
        assert_eq!(rec.active_streams(), 0);
        for needle in ["main_audio", "main_video"] {
            assert!(last_playlist(&left, needle).0.ends_with("#EXT-X-ENDLIST\n"));
        }
        actions.extend(left);
        // Back 4 s later, with a new publication and another sender clock.
        assert_eq!(
            summaries(&rec.reconcile(&main_of(USER, "s2"))),
            vec![
                subscribe_line(3, USER, TrackKind::Audio, "s2"),
                subscribe_line(4, USER, TrackKind::MainVideo, "s2"),
            ]
        );
        let second = Session::at_second(11, -1_500_000);
        let back = feed(&mut rec, second.media(6, Some(3), &[4], &mut tone));
        // The first playlist stored after the return continues the old one.
        let (text, _) = last_playlist(&back, "main_video");
        let v = [
            video_segment("20231114221321000"),
            video_segment("20231114221325000"),
            video_segment("20231114221331000"),
            video_segment("20231114221335000"),
        ];
        assert_eq!(
            text,
            format!(
                "{HEADER}#EXT-X-TARGETDURATION:4\n#EXT-X-TRTC-START-REC-TIME:1700000001000\n\
                 #EXT-X-TRTC-VIDEO-METADATA:WIDTH:1280 HEIGHT:720\n\
                 #EXTINF:4.000\n{}\n#EXTINF:2.000\n{}\n#EXT-X-DISCONTINUITY\n#EXTINF:4.000\n{}\n",
                v[0], v[1], v[2]
            )
        );
        actions.extend(back);
        actions.extend(rec.finish());
        check_order(&actions);
        assert_eq!(
            last_playlist(&actions, "main_video").0,
            format!(
                "{HEADER}#EXT-X-TARGETDURATION:4\n#EXT-X-TRTC-START-REC-TIME:1700000001000\n\
                 #EXT-X-TRTC-VIDEO-METADATA:WIDTH:1280 HEIGHT:720\n\
                 #EXTINF:4.000\n{}\n#EXTINF:2.000\n{}\n#EXT-X-DISCONTINUITY\n#EXTINF:4.000\n{}\n\
                 #EXTINF:2.000\n{}\n#EXT-X-ENDLIST\n",
                v[0], v[1], v[2], v[3]
            )
        );
        // Audio: one discontinuity, right before the first segment after
        // the return, which starts at the return (less encoder priming).
        let (text, _) = last_playlist(&actions, "main_audio");
        assert_eq!(text.matches("#EXT-X-DISCONTINUITY\n").count(), 1, "{text}");
        assert_eq!(text.matches("#EXT-X-ENDLIST\n").count(), 1, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let d = lines
            .iter()
            .position(|l| *l == "#EXT-X-DISCONTINUITY")
            .expect("discontinuity");
        assert_eq!(
            lines[..d]
                .iter()
                .filter(|l| l.starts_with("#EXTINF"))
                .count(),
            2
        );
        let resumed = lines[d + 2];
        let audio_segs = stores(&actions, "main_audio_");
        let (key, data) = audio_segs
            .iter()
            .find(|(k, _)| k.ends_with(resumed))
            .expect("stored");
        let pts = pes_pts(data, PID_AUDIO)[0];
        assert!(
            starts_with_video(pts, BASE_90K + 990_004),
            "audio resumes at 11 s: {pts}"
        );
        assert_eq!(
            *key,
            format!(
                "{FOLDER}{}",
                naming().single_segment(USER, Media::Main, TrackType::Audio, wall_of_pts(pts))
            )
        );
        for name in ["main_audio.m3u8", "main_video.m3u8"] {
            assert_eq!(
                of_stream(&actions, &format!("sliced {STEM}{name}")).len(),
                1,
                "{name}: callback 307 once"
            );
        }
        assert_eq!(rec.stats.frames, 2 * (90 + 300));
    }

    #[test]
    fn av_merge_puts_audio_and_main_video_in_one_stream() {
        let mut rec = recorder(
            StreamType::AudioVideo,
            MediaSelection::MainAndAux,
            true,
            Subscription::default(),
        );
        let mut offered = main_of(USER, "s1");
        offered.push(offer(USER, TrackKind::AuxVideo, "s1"));
        assert_eq!(rec.reconcile(&offered).len(), 3);
        let merged = StreamId {
            user_id: USER.to_owned(),
            media: Media::Main,
            track_type: TrackType::AudioVideo,
        };
        assert_eq!(*rec.subs[&1].stream, merged);
        assert_eq!(*rec.subs[&2].stream, merged);
        assert_eq!(
            *rec.subs[&3].stream,
            StreamId {
                user_id: USER.to_owned(),
                media: Media::Aux,
                track_type: TrackType::Video,
            }
        );
        assert_eq!(rec.active_streams(), 2);
        let s = Session::at_second(1, 3_000_000);
        let mut actions = feed(&mut rec, s.media(6, Some(1), &[2, 3], &mut Tone::new()));
        actions.extend(rec.finish());
        check_order(&actions);
        let mut playlists: Vec<(String, TrackType)> = actions
            .iter()
            .filter_map(|a| match a {
                Action::StorePlaylist { file, .. } => {
                    Some((file.file_name.clone(), file.track_type))
                }
                _ => None,
            })
            .collect();
        playlists.sort_by(|a, b| a.0.cmp(&b.0));
        playlists.dedup();
        assert_eq!(
            playlists,
            vec![
                (format!("{STEM}aux_video.m3u8"), TrackType::Video),
                (format!("{STEM}main_av.m3u8"), TrackType::AudioVideo),
            ]
        );
        assert!(!summaries(&actions)
            .iter()
            .any(|s| s.contains("main_audio") || s.contains("main_video")));
        // The merged stream is cut at the video key frames; it carries both
        // elementary streams; the screen share has video only.
        let av = stores(&actions, "_main_av_");
        assert_eq!(
            av.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![
                format!("{FOLDER}{STEM}main_av_20231114221321000.ts"),
                format!("{FOLDER}{STEM}main_av_20231114221325000.ts"),
            ]
        );
        assert_eq!(pes_pts(av[0].1, PID_VIDEO).len(), 60);
        assert_eq!(pes_pts(av[1].1, PID_VIDEO).len(), 30);
        assert!(!pes_pts(av[1].1, PID_AUDIO).is_empty());
        let aux = stores(&actions, "_aux_video_");
        assert_eq!(
            aux.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            vec![
                format!("{FOLDER}{STEM}aux_video_20231114221321000.ts"),
                format!("{FOLDER}{STEM}aux_video_20231114221325000.ts"),
            ]
        );
        for (key, data) in &aux {
            assert!(pes_pts(data, PID_AUDIO).is_empty(), "{key}");
        }
        let (text, file) = last_playlist(&actions, "main_av");
        assert_eq!(file.track_type, TrackType::AudioVideo);
        assert!(text.contains("#EXT-X-TRTC-VIDEO-METADATA:WIDTH:1280 HEIGHT:720\n"));
        assert!(text.ends_with("#EXT-X-ENDLIST\n"));
    }

    /// Each track's clock confirms on its own, so a user's audio and video
    /// reach the merged stream at different times.
    #[test]
    fn av_merge_keeps_the_audio_from_the_first_video_key_frame_on() {
        let mut rec = recorder(
            StreamType::AudioVideo,
            MediaSelection::Main,
            true,
            Subscription::default(),
        );
        assert_eq!(rec.reconcile(&main_of(USER, "s1")).len(), 2);
        let s = Session::at_second(1, 3_000_000);
        let mut actions = feed(&mut rec, s.media(8, Some(1), &[2], &mut Tone::new()));
        actions.extend(rec.finish());
        let av = stores(&actions, "_main_av_");
        let video = pes_pts(av[0].1, PID_VIDEO);
        let audio = pes_pts(av[0].1, PID_AUDIO);
        assert_eq!(video[0], BASE_90K + 90_004);
        // Video and audio were both captured from 1 s on: the merged file
        // has audio from (about) its first video frame.
        assert!(
            audio.first().is_some_and(|a| *a <= video[0] + 1_920),
            "first audio PTS {:?}, first video PTS {}",
            audio.first(),
            video[0]
        );
        // No AAC frame is lost after that, and each segment is written in
        // presentation order.
        let all_audio: Vec<u64> = av.iter().flat_map(|(_, d)| pes_pts(d, PID_AUDIO)).collect();
        assert!(
            all_audio.windows(2).all(|w| w[1] - w[0] == 1_920),
            "{all_audio:?}"
        );
        assert!(all_audio
            .last()
            .is_some_and(|a| *a >= video[0] + 7 * 90_000));
        for (key, data) in &av {
            let order: Vec<u64> = pes_list(data).into_iter().map(|(_, pts)| pts).collect();
            assert!(order.windows(2).all(|w| w[0] <= w[1]), "{key}: {order:?}");
        }
    }

    #[test]
    fn av_merge_applies_only_when_audio_and_video_are_both_recorded() {
        let cases = [
            (
                StreamType::AudioVideo,
                true,
                TrackType::AudioVideo,
                TrackType::AudioVideo,
            ),
            (
                StreamType::AudioVideo,
                false,
                TrackType::Audio,
                TrackType::Video,
            ),
            (
                StreamType::AudioOnly,
                true,
                TrackType::Audio,
                TrackType::Video,
            ),
            (
                StreamType::VideoOnly,
                true,
                TrackType::Audio,
                TrackType::Video,
            ),
        ];
        for (st, merge, audio, main) in cases {
            let rec = recorder(
                st,
                MediaSelection::MainAndAux,
                merge,
                Subscription::default(),
            );
            let id = |kind| rec.stream_id("u", kind);
            assert_eq!(id(TrackKind::Audio).track_type, audio, "{st:?} {merge}");
            assert_eq!(id(TrackKind::Audio).media, Media::Main);
            assert_eq!(id(TrackKind::MainVideo).track_type, main, "{st:?} {merge}");
            assert_eq!(id(TrackKind::MainVideo).media, Media::Main);
            assert_eq!(id(TrackKind::AuxVideo).track_type, TrackType::Video);
            assert_eq!(id(TrackKind::AuxVideo).media, Media::Aux);
        }
    }

    /// A merged stream's segment runs long while audio is placed into it:
    /// the key frame is asked of the user's video track (audio cannot
    /// answer; a browser then never sends one and the segment never ends).
    #[test]
    fn a_long_gop_in_a_merged_stream_asks_the_video_track() {
        let mut rec = recorder(
            StreamType::AudioVideo,
            MediaSelection::Main,
            true,
            Subscription::default(),
        );
        rec.reconcile(&main_of("bob", "s"));
        let video_tag = rec
            .subs
            .iter()
            .find(|(_, s)| s.kind.is_video())
            .map(|(t, _)| *t)
            .expect("video subscribed");
        let audio_tag = rec
            .subs
            .iter()
            .find(|(_, s)| !s.kind.is_video())
            .map(|(t, _)| *t)
            .expect("audio subscribed");
        let s = Session {
            gop: 1_000,
            ..Session::at_second(1, 0)
        };
        let frames = s.media(9, Some(audio_tag), &[video_tag], &mut Tone::new());
        let requests: Vec<String> = summaries(&feed(&mut rec, frames))
            .into_iter()
            .filter(|a| a.starts_with("keyframe"))
            .collect();
        assert!(
            !requests.is_empty(),
            "a long merged segment asks for a key frame"
        );
        assert!(
            requests
                .iter()
                .all(|r| *r == format!("keyframe {video_tag}")),
            "{requests:?} (video is tag {video_tag}, audio {audio_tag})"
        );
    }

    #[test]
    fn a_long_gop_asks_the_publisher_for_a_key_frame() {
        let mut rec = recorder(
            StreamType::VideoOnly,
            MediaSelection::Main,
            false,
            Subscription::default(),
        );
        rec.reconcile(&[offer("bob", TrackKind::MainVideo, "s")]);
        let s = Session {
            gop: 1_000,
            ..Session::at_second(1, 0)
        };
        // 9 s with one key frame: past target + grace (6 s), once a second.
        let actions = feed(&mut rec, s.media(9, None, &[1], &mut Tone::new()));
        assert_eq!(
            summaries(&actions)
                .into_iter()
                .filter(|a| a.starts_with("keyframe"))
                .collect::<Vec<_>>(),
            vec!["keyframe 1", "keyframe 1", "keyframe 1"]
        );
        assert!(stores(&actions, "").is_empty(), "no key frame: no cut");
    }

    /// A store whose puts wait until it is opened: the recorder thread
    /// stalls on its first file as on a loaded box.
    struct GatedStore {
        open: std::sync::Mutex<bool>,
        opened: std::sync::Condvar,
        files: std::sync::Mutex<Vec<(String, Vec<u8>)>>,
    }

    impl crate::output::Store for GatedStore {
        fn put_content(
            &self,
            key: &str,
            content: crate::output::Content<'_>,
        ) -> Result<(), crate::output::StoreError> {
            let mut open = crate::sync::lock(&self.open);
            while !*open {
                open = self.opened.wait(open).unwrap_or_else(|p| p.into_inner());
            }
            let data = content
                .to_vec()
                .map_err(|source| crate::output::StoreError::Io {
                    path: key.into(),
                    source,
                })?;
            crate::sync::lock(&self.files).push((key.to_owned(), data));
            Ok(())
        }
    }

    /// Frames the room delivered before the user left are recorded even
    /// when the recorder is far behind: 60 s of video queue up while the
    /// recorder thread is stuck on its first file, the user leaves, and
    /// every frame still ends up in the playlist (it used to lose all but
    /// 256 of what was queued when it noticed the user had left).
    #[test]
    fn a_recorder_behind_the_room_records_every_frame_of_a_user_who_left() {
        use crate::record::worker::{
            spawn, CoreSetup, RecorderEvent, RecorderMetrics, RecorderSetup,
        };
        use crate::room::{DropReason, Registry, RoomKey, RoomObserver, Track};

        struct NoObserver;
        impl RoomObserver for NoObserver {
            fn frame_dropped(&self, _r: DropReason) {}
            fn keyframe_wanted(&self, _s: &str, _k: TrackKind) {}
        }

        let registry = Arc::new(Registry::new(Arc::new(NoObserver)));
        let key = RoomKey {
            sdk_app_id: 1_400_123_456,
            room: RoomId::Int(12345),
        };
        let store = Arc::new(GatedStore {
            open: std::sync::Mutex::new(false),
            opened: std::sync::Condvar::new(),
            files: std::sync::Mutex::new(Vec::new()),
        });
        let (events_tx, mut events) = tokio::sync::mpsc::channel(64);
        let track = Arc::new(Track::new(TrackKind::MainVideo, Codec::H264, "s1"));
        registry.add_session(&key, USER, "s1", false, vec![track.clone()]);
        let _recorder = spawn(RecorderSetup {
            task_id: "task-1".into(),
            journal: None,
            core: CoreSetup::Single(Settings {
                naming: naming(),
                segment: SegmenterConfig {
                    target: Duration::from_secs(4),
                    keyframe_grace: Duration::from_secs(2),
                    max_keyframe_wait: crate::hls::segmenter::MAX_KEYFRAME_WAIT,
                },
                stream_type: StreamType::AudioVideo,
                media: MediaSelection::Main,
                av_merge: false,
                epoch_us: EPOCH_US,
            }),
            subscription: Subscription::default(),
            room: key.clone(),
            registry: registry.clone(),
            store: store.clone(),
            metrics: RecorderMetrics::register(&crate::metrics::Metrics::new()),
            events: events_tx,
            load: Arc::default(),
        })
        .expect("recorder thread");
        let deadline = Instant::now() + Duration::from_secs(20);
        while track.status(Instant::now()).subscribers == 0 {
            assert!(Instant::now() < deadline, "the recorder never subscribed");
            std::thread::sleep(Duration::from_millis(5));
        }
        let session = Session::at_second(0, 0);
        let frames = 60 * 15;
        for n in 0..frames {
            track.deliver(&session.video(n), registry.observer());
        }
        assert_eq!(track.status(Instant::now()).dropped_for_subscribers, 0);
        registry.remove_session(&key, USER, "s1");
        // Let the recorder see the room change while it is still stuck.
        std::thread::sleep(Duration::from_millis(200));
        *crate::sync::lock(&store.open) = true;
        store.opened.notify_all();
        // The user's files close when the recorder ends its subscription
        // (ENDLIST), before any Stop, which would drain the queue anyway.
        let ended = || {
            crate::sync::lock(&store.files)
                .iter()
                .rev()
                .find(|(k, _)| k.ends_with("main_video.m3u8"))
                .is_some_and(|(_, d)| d.ends_with(b"#EXT-X-ENDLIST\n"))
        };
        while !ended() {
            assert!(Instant::now() < deadline, "the user's playlist never ended");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(_recorder); // Stop
        loop {
            match events.blocking_recv() {
                Some(RecorderEvent::Finished { .. }) | None => break,
                Some(_) => {}
            }
        }
        let files = crate::sync::lock(&store.files);
        let playlist = files
            .iter()
            .rev()
            .find(|(k, _)| k.ends_with("main_video.m3u8"))
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .expect("a video playlist");
        let total: f64 = playlist
            .lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .filter_map(|l| l.trim_end_matches(',').parse::<f64>().ok())
            .sum();
        assert!(playlist.contains("#EXT-X-ENDLIST"), "{playlist}");
        assert!(
            (total - 60.0).abs() < 0.07,
            "recorded {total} s of 60 s:\n{playlist}"
        );
    }
}
