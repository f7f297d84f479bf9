//! Mixed-stream recording (RecordMode 2), sans-IO: every subscribed user's
//! video composited onto one canvas by the layout, their audio mixed, one
//! H.264 + AAC HLS stream out.
//!
//! The worker ([`super::worker`]) owns the IO and the wall clock: it offers
//! the room's tracks ([`MixedRecorder::reconcile`]), feeds frames
//! ([`MixedRecorder::on_frame`]), calls [`MixedRecorder::tick`] with the
//! current time, and carries out the [`Action`]s.
//!
//! Clock: the output runs on a fixed clock of `VideoParams.Fps` on the
//! task's server timeline ([`super::timeline`]), starting at the first
//! media: the earliest media placed before the first frame is rendered (a
//! user whose frames the timeline still holds for sender reports may have
//! begun before a user placed at once; the start moves back for them until
//! `start + latency`). Output frame `k` stands for time `T_k = start + k/fps`; it is
//! rendered once the wall clock passes `T_k + latency`, so frames that
//! arrive late (network, the timeline's wait for sender reports) still
//! make their tick. For each tick every input's frames up to `T_k` plus
//! half an output frame are decoded and the latest picture (the one
//! nearest `T_k`) is shown: users stay in sync with each other and with
//! the mixed audio, which the mixer cuts at the same `T_k`, to within half
//! an output frame.
//! The timeline holds a new track's first frames until its sender
//! reports confirm where they go (up to seconds: aiortc's second report
//! comes about 2 s in). Ticks are not rendered past media the timeline
//! still holds: the render delay grows by what the holds need (never
//! past [`MAX_HOLD_WAIT_US`]) and keeps that length, so the held media
//! makes its ticks instead of being skipped, and the output clock never
//! jumps. (Before, with a 1.5 s latency, a publisher's first 0.54–0.67 s
//! of video was missing from the mix.)
//! Overload: a recorder more than [`DECIMATE_ABOVE_US`] behind and not
//! catching up drops output frames evenly — one in two, then three in
//! four, … down to one frame a second — checked every [`PACE_STEP_US`] of
//! output (a one-off delay it is draining costs no frames); dropped
//! ticks still decode the inputs and mix the audio, and the frames kept
//! carry their own tick's time, so playlist durations stay true to the
//! wall clock. Level with real time for [`RESTORE_AFTER_US`], the rate
//! doubles back. Only a recorder still more than [`MAX_BEHIND_US`] behind
//! jumps to the newest tick (counted as skipped). Audio stays continuous.
//!
//! Pictures: users take places in the layout in room join order. A user
//! with no subscribed video holds a place (unless PureAudioDisableLayout)
//! and shows the placeholder image when PlaceHolderMode is on. Places
//! follow the media, not the wall clock: a track counts from the output
//! frame of its first media on (a joining user takes a place when their
//! media begins, not `latency` earlier), and a track whose subscription
//! ends keeps its place until the output has shown its last frame. When a
//! user's video stops (no frame for [`STALE_US`]) FillType 0 keeps the last
//! picture and 1 paints the tile black.
//!
//! Layers, back to front: background colour, background image, then per
//! tile its sub-background image (or black bars for letterbox), the video
//! (or placeholder), and last the watermarks in list order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiroku_gpu::{Compositor, EncoderSettings, Picture, Scene, VideoEncoder, Yuv};

use crate::domain::params::{
    FillType, MediaSelection, MixLayout, MixTranscode, StreamType, Subscription,
};
use crate::hls::naming::{Media, Naming, TrackType};
use crate::hls::segmenter::SegmenterConfig;
use crate::hls::stream::{HlsStream, Output, BASE_90K};
use crate::media::aac::AacFrame;
use crate::media::h264_codec::PictureDecoder;
use crate::mix::audio::AudioMixer;
use crate::record::action::{Action, FileInfo, Stats};
use crate::record::subscribe::{media_of, Admission, OfferedTrack, Subscribed};
use crate::record::timeline::{TrackClock, UserClock};
use crate::room::{Codec, MediaFrame, TrackKind};

mod scene;
use scene::Mark;

/// A video with no new frame for this long has stopped (FillType applies).
pub const STALE_US: i64 = 2_000_000;
/// Further behind real time than this, video ticks are skipped at once
/// (an overload the even drops below could not absorb in time).
pub const MAX_BEHIND_US: i64 = 2_000_000;
/// Further behind than this, output frames are dropped evenly.
pub const DECIMATE_ABOVE_US: i64 = 400_000;
/// Less behind than this for [`RESTORE_AFTER_US`], the rate doubles back.
const RESTORE_BELOW_US: i64 = 100_000;
const RESTORE_AFTER_US: i64 = 3_000_000;
/// The lag is sampled, and the output rate changes at most, this often
/// (output time).
pub const PACE_STEP_US: i64 = 250_000;
/// A recorder behind by more than [`DECIMATE_ABOVE_US`] whose lag shrinks
/// by at least this much a [`PACE_STEP_US`] (it renders 1.125× faster than
/// real time) is catching up and keeps every frame.
const DRAIN_PER_STEP_US: i64 = PACE_STEP_US / 8;
/// A frame the timeline holds is placed at or a little before its
/// arrival (its delay less the least delay of the user's frames): ticks
/// stay this far before the oldest held arrival.
const HOLD_SLACK_US: i64 = 250_000;
/// The render delay grows at most this much for held media: the longest a
/// track is held (its first report within the arrival fallback's wait,
/// then the wait for a second).
pub const MAX_HOLD_WAIT_US: i64 =
    crate::record::timeline::SR_WAIT_US + crate::record::timeline::CONFIRM_US;
/// Opus packets held before the output's start is fixed, at most (about
/// 80 s of 20 ms packets over all users; the start is fixed within the
/// latency of the first media).
const MAX_EARLY_AUDIO: usize = 4096;
/// Frames waiting for their tick per video, at most (about 20 s at 30 fps);
/// beyond that the input restarts at its next key frame.
const MAX_QUEUED_FRAMES: usize = 600;

#[derive(Debug, Clone)]
pub struct MixedSettings {
    pub naming: Arc<Naming>,
    pub segment: SegmenterConfig,
    pub stream_type: StreamType,
    pub media: MediaSelection,
    pub fill: FillType,
    /// Unix µs that PTS [`BASE_90K`] stands for.
    pub epoch_us: i64,
    pub transcode: MixTranscode,
    /// How far behind the wall clock output frames are rendered.
    pub latency_us: i64,
    /// Reads a monotonic clock to measure where processing time goes
    /// ([`StageTimes`]); never used to decide anything. The worker passes
    /// `Instant::now`.
    pub stopwatch: fn() -> Instant,
}

/// Processing time spent per pipeline stage (for metrics and benchmarks).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StageTimes {
    /// H.264 decoding of the inputs.
    pub decode: Duration,
    /// Building the scene and compositing it.
    pub compose: Duration,
    /// H.264 encoding of the canvas.
    pub encode: Duration,
    /// Mixing, resampling and AAC-encoding the audio.
    pub audio: Duration,
    /// TS muxing and segmenting (audio and video).
    pub mux: Duration,
}

impl StageTimes {
    /// `(label, seconds)` per stage, in pipeline order.
    pub fn seconds(&self) -> [(&'static str, f64); 5] {
        [
            ("decode", self.decode.as_secs_f64()),
            ("compose", self.compose.as_secs_f64()),
            ("encode", self.encode.as_secs_f64()),
            ("audio", self.audio.as_secs_f64()),
            ("mux", self.mux.as_secs_f64()),
        ]
    }
}

/// Decoded images by URL (background, placeholder, sub-backgrounds,
/// watermarks), fetched by the task runner.
pub type Images = HashMap<String, Arc<Picture>>;

/// Counters the worker turns into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MixStats {
    pub ticks: u64,
    pub ticks_skipped: u64,
    /// Output frames dropped evenly under overload (their ticks mixed the
    /// audio and decoded the inputs, but composed and encoded nothing).
    pub output_frames_dropped: u64,
    /// One output frame is kept in this many (1: every frame).
    pub decimation: u32,
    /// How much longer than the latency the output waits for media the
    /// timeline held (µs; module docs).
    pub hold_wait_us: i64,
    pub decode_errors: u64,
    pub frames_dropped: u64,
    pub encode_errors: u64,
    pub compose_errors: u64,
    pub stages: StageTimes,
}

struct Sub {
    user_id: String,
    kind: TrackKind,
    session_id: String,
    clock: TrackClock,
    /// Timeline time of the first frame placed: the track counts for the
    /// layout from the output frame of that time on, so a joining user's
    /// place appears with their media, not seconds before it.
    first_placed: Option<i64>,
    /// Timeline time of the latest frame placed.
    last_placed: Option<i64>,
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

impl Sub {
    fn shown_at(&self, t: i64) -> bool {
        self.first_placed.is_some_and(|f| f <= t)
    }
}

/// A track whose subscription ended before the output showed all its
/// media: it keeps its place in the layout until the output reaches
/// `until` (timeline), the time of its last frame.
struct Lingering {
    user_id: String,
    kind: TrackKind,
    until: i64,
}

/// One user's main or aux video: frames waiting for their tick, and the
/// decoder with the latest picture.
struct VideoInput {
    queue: VecDeque<(i64, MediaFrame)>,
    decoder: PictureDecoder,
    /// The subscription now feeding it (key frame requests go there).
    tag: Option<u64>,
    /// Timeline time of the latest decoded frame.
    shown_at: Option<i64>,
    wait_keyframe: bool,
}

pub struct MixedRecorder {
    settings: MixedSettings,
    subscription: Subscription,
    layout: MixLayout,
    marks: Vec<Mark>,
    /// Layouts a Modify set, each with the server time (µs) of its call:
    /// it shows from the output frame of that instant on.
    pending_layouts: VecDeque<(i64, MixLayout)>,
    images: Images,
    admission: Admission,
    subs: HashMap<u64, Sub>,
    users: HashMap<String, UserClock>,
    /// Users with a subscribed or lingering track, in room join order.
    participants: Vec<String>,
    lingering: Vec<Lingering>,
    videos: HashMap<(String, Media), VideoInput>,
    /// Created when the start is fixed, so that the mixed audio starts with
    /// the video; until then (and for video-only tasks) `None`.
    mixer: Option<AudioMixer>,
    /// Audio placed before the start is fixed, for the mixer (at most
    /// [`MAX_EARLY_AUDIO`] packets).
    early_audio: Vec<(u64, i64, Arc<[u8]>)>,
    has_audio: bool,
    /// PTS of the mixer's timeline start (the first media) less BASE_90K.
    audio_offset_90k: u64,
    encoder: Option<Box<dyn VideoEncoder>>,
    compositor: Box<dyn Compositor>,
    stream: HlsStream,
    canvas: Vec<Picture>,
    scene: Vec<Scene>,
    /// Server time of output frame 0: the earliest media placed before the
    /// first frame is rendered (a user placed later by the timeline, still
    /// waiting for sender reports, may have begun before the user placed
    /// first); fixed from then on.
    start_us: Option<i64>,
    start_fixed: bool,
    /// How much longer than the latency ticks wait, learnt from the
    /// timeline's holds (module docs); never shrinks.
    hold_wait_us: i64,
    next_tick: u64,
    /// The lag last sampled (output time, lag), one sample per
    /// [`PACE_STEP_US`] of output, and since when the recorder has been
    /// level with real time (output time).
    lag_sample: Option<(i64, i64)>,
    calm_since: Option<i64>,
    force_keyframe: bool,
    next_tag: u64,
    media_started: bool,
    placed: Vec<(i64, MediaFrame)>,
    outputs: Vec<Output>,
    aac: Vec<AacFrame>,
    pub stats: Stats,
    pub mix_stats: MixStats,
}

impl MixedRecorder {
    /// `encoder` is `None` for audio-only recordings (StreamType 1).
    pub fn new(
        settings: MixedSettings,
        subscription: Subscription,
        layout: MixLayout,
        compositor: Box<dyn Compositor>,
        encoder: Option<Box<dyn VideoEncoder>>,
    ) -> Result<Self, crate::mix::audio::MixError> {
        let has_video = settings.stream_type != StreamType::AudioOnly && encoder.is_some();
        let has_audio = settings.stream_type != StreamType::VideoOnly;
        let track_type = match (has_video, has_audio) {
            (true, false) => TrackType::Video,
            (false, _) => TrackType::Audio,
            (true, true) => TrackType::AudioVideo,
        };
        // Refuse bad audio parameters now rather than at the first media.
        if has_audio {
            AudioMixer::new(settings.transcode.audio, settings.epoch_us)?;
        }
        let mut stream = HlsStream::mixed(
            track_type,
            settings.naming.clone(),
            settings.epoch_us,
            settings.segment,
        );
        // The output clock feeds both sides from the first frame on.
        if has_video {
            stream.begin_track(TrackKind::MainVideo);
        }
        if has_audio {
            stream.begin_track(TrackKind::Audio);
        }
        let v = settings.transcode.video;
        let mut me = Self {
            settings,
            subscription,
            layout: MixLayout::default(),
            marks: Vec::new(),
            pending_layouts: VecDeque::new(),
            images: Images::new(),
            admission: Admission::default(),
            subs: HashMap::new(),
            users: HashMap::new(),
            participants: Vec::new(),
            lingering: Vec::new(),
            videos: HashMap::new(),
            mixer: None,
            early_audio: Vec::new(),
            has_audio,
            audio_offset_90k: 0,
            encoder: if has_video { encoder } else { None },
            compositor,
            stream,
            canvas: vec![Picture::filled(v.width, v.height, Yuv::BLACK)],
            scene: vec![Scene {
                width: v.width,
                height: v.height,
                layers: Vec::new(),
            }],
            start_us: None,
            start_fixed: false,
            hold_wait_us: 0,
            next_tick: 0,
            lag_sample: None,
            calm_since: None,
            force_keyframe: false,
            next_tag: 1,
            media_started: false,
            placed: Vec::new(),
            outputs: Vec::new(),
            aac: Vec::new(),
            stats: Stats::default(),
            mix_stats: MixStats {
                decimation: 1,
                ..MixStats::default()
            },
        };
        me.set_layout(layout);
        Ok(me)
    }

    /// The encoder settings of a task's canvas.
    pub fn encoder_settings(transcode: &MixTranscode) -> EncoderSettings {
        let v = transcode.video;
        EncoderSettings {
            width: v.width,
            height: v.height,
            fps: v.fps,
            bitrate_bps: v.bitrate_bps,
            gop_frames: v.gop_seconds.max(1) * v.fps.max(1),
        }
    }

    pub fn set_subscription(&mut self, subscription: Subscription) {
        self.subscription = subscription;
    }

    fn canvas_size(&self) -> (u32, u32) {
        let v = self.settings.transcode.video;
        (v.width, v.height)
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
        for t in started {
            let tag = self.next_tag;
            self.next_tag += 1;
            if t.kind.is_video() {
                let key = (t.user_id.clone(), media_of(t.kind));
                match self.videos.get_mut(&key) {
                    Some(v) => {
                        v.tag = Some(tag);
                        v.wait_keyframe = true;
                    }
                    None => match PictureDecoder::new() {
                        Ok(decoder) => {
                            self.videos.insert(
                                key,
                                VideoInput {
                                    queue: VecDeque::new(),
                                    decoder,
                                    tag: Some(tag),
                                    shown_at: None,
                                    wait_keyframe: true,
                                },
                            );
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "video decoder unavailable");
                            self.mix_stats.decode_errors += 1;
                            continue;
                        }
                    },
                }
            }
            let clock_rate = if t.kind.is_video() { 90_000 } else { 48_000 };
            self.subs.insert(
                tag,
                Sub {
                    user_id: t.user_id.clone(),
                    kind: t.kind,
                    session_id: t.session_id.clone(),
                    clock: TrackClock::new(clock_rate),
                    first_placed: None,
                    last_placed: None,
                },
            );
            actions.push(Action::Subscribe {
                tag,
                user_id: t.user_id.clone(),
                kind: t.kind,
                session_id: t.session_id.clone(),
            });
        }
        // Places in join order: the room offers tracks in that order.
        let mut order: Vec<String> = Vec::new();
        for t in offered {
            if self.subs.values().any(|s| s.user_id == t.user_id) && !order.contains(&t.user_id) {
                order.push(t.user_id.clone());
            }
        }
        // Users who left keep their place while their last media plays.
        for (i, u) in self.participants.iter().enumerate() {
            if !order.contains(u) && self.lingering.iter().any(|l| &l.user_id == u) {
                order.insert(i.min(order.len()), u.clone());
            }
        }
        self.participants = order;
        actions
    }

    /// Places whatever subscription `tag`'s clock still holds.
    fn flush_clock(&mut self, tag: u64) {
        let Some(sub) = self.subs.get_mut(&tag) else {
            return;
        };
        let user = self.users.entry(sub.user_id.clone()).or_default();
        sub.clock.flush(user, &mut self.placed);
        let (user_id, kind) = (sub.user_id.clone(), sub.kind);
        self.route_placed(&user_id, kind, tag);
    }

    fn end_sub(&mut self, tag: u64, actions: &mut Vec<Action>) {
        self.flush_clock(tag);
        let Some(sub) = self.subs.remove(&tag) else {
            return;
        };
        actions.push(Action::Unsubscribe { tag });
        let next = self.tick_time(self.next_tick);
        if let Some(until) = sub.last_placed.filter(|u| next.is_some_and(|t| t <= *u)) {
            self.lingering.push(Lingering {
                user_id: sub.user_id.clone(),
                kind: sub.kind,
                until,
            });
        }
        if sub.kind.is_video() {
            if let Some(v) = self
                .videos
                .get_mut(&(sub.user_id.clone(), media_of(sub.kind)))
            {
                if v.tag == Some(tag) {
                    v.tag = None;
                }
            }
        } else {
            // The mixer must hold the input's audio before it ends.
            self.fix_start();
            if let Some(m) = self.mixer.as_mut() {
                m.end_input(tag);
            }
        }
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
        let user = self.users.entry(sub.user_id.clone()).or_default();
        let notes = sub.clock.push(frame, user, &mut self.placed);
        self.stats.count_clock(notes);
        let (user_id, kind) = (sub.user_id.clone(), sub.kind);
        self.route_placed(&user_id, kind, tag);
        actions
    }

    /// Placed frames go to their video queue or into the audio mixer.
    fn route_placed(&mut self, user_id: &str, kind: TrackKind, tag: u64) {
        let Some(last) = self.placed.iter().map(|(t, _)| *t).max() else {
            return;
        };
        if let Some(sub) = self.subs.get_mut(&tag) {
            sub.last_placed = Some(sub.last_placed.map_or(last, |l| l.max(last)));
            let first = self.placed.iter().map(|(t, _)| *t).min().unwrap_or(last);
            sub.first_placed = Some(sub.first_placed.map_or(first, |f| f.min(first)));
        }
        if !self.start_fixed {
            if let Some(earliest) = self.placed.iter().map(|(t, _)| *t).min() {
                if self.start_us.is_none_or(|s| earliest < s) {
                    self.start_us = Some(self.start_on_grid(earliest));
                }
            }
        }
        if kind.is_video() {
            let key = (user_id.to_owned(), media_of(kind));
            if let Some(v) = self.videos.get_mut(&key) {
                for (t, f) in self.placed.drain(..) {
                    v.queue.push_back((t, f));
                }
                if v.queue.len() > MAX_QUEUED_FRAMES {
                    self.mix_stats.frames_dropped += v.queue.len() as u64;
                    v.queue.clear();
                    v.wait_keyframe = true;
                }
            }
        } else if let Some(m) = self.mixer.as_mut() {
            for (t, f) in self.placed.drain(..) {
                if f.codec == Codec::Opus {
                    m.push_opus(tag, t, &f.data);
                }
            }
        } else if self.has_audio && !self.start_fixed {
            for (t, f) in self.placed.drain(..) {
                if f.codec != Codec::Opus {
                    continue;
                }
                if self.early_audio.len() < MAX_EARLY_AUDIO {
                    self.early_audio.push((tag, t, f.data));
                } else {
                    self.mix_stats.frames_dropped += 1;
                }
            }
        }
        self.placed.clear();
    }

    /// Server time `first` rounded up to the epoch's 100 µs grid (9 ticks
    /// at 90 kHz), so that with tick times rounded up every frame's PTS is
    /// exact.
    fn start_on_grid(&self, first: i64) -> i64 {
        let epoch = self.settings.epoch_us;
        epoch + (first - epoch + 99).div_euclid(100) * 100
    }

    /// Fixes the output's start (the first frame is about to be rendered,
    /// or a track ends): the audio mixer starts there and takes the audio
    /// placed so far.
    fn fix_start(&mut self) {
        if self.start_fixed {
            return;
        }
        let Some(start) = self.start_us else {
            return;
        };
        self.start_fixed = true;
        if self.has_audio {
            match AudioMixer::new(self.settings.transcode.audio, start) {
                Ok(m) => self.mixer = Some(m),
                Err(e) => {
                    tracing::error!(error = %e, "audio mixer could not start");
                    self.mix_stats.encode_errors += 1;
                }
            }
            self.audio_offset_90k =
                ((start - self.settings.epoch_us).max(0) as i128 * 9 / 100) as u64;
        }
        let early = std::mem::take(&mut self.early_audio);
        if let Some(m) = self.mixer.as_mut() {
            for (tag, t, data) in early {
                m.push_opus(tag, t, &data);
            }
        }
    }

    /// Server time of output frame `k`, rounded up to the µs: its PTS,
    /// rounded down, is then `k · 90000/fps` after the first frame's (when
    /// fps divides 90000; 15 fps is 66666.67 µs but exactly 6000 ticks).
    fn tick_time(&self, k: u64) -> Option<i64> {
        let fps = i64::from(self.settings.transcode.video.fps.max(1));
        self.start_us
            .map(|s| s + ((k as i64) * 1_000_000 + fps - 1) / fps)
    }

    /// When the next output frame is due (wall clock, unix µs).
    pub fn next_due_us(&self) -> Option<i64> {
        self.tick_time(self.next_tick)
            .map(|t| t + self.render_delay_us())
    }

    /// How far behind the wall clock ticks are rendered.
    fn render_delay_us(&self) -> i64 {
        self.settings.latency_us + self.hold_wait_us
    }

    /// Lengthens the render delay so that the next ticks do not pass media
    /// the timeline still holds (module docs).
    fn wait_for_held(&mut self, now_us: i64) {
        let Some(held) = self
            .subs
            .values()
            .filter_map(|s| s.clock.holding_since())
            .min()
        else {
            return;
        };
        let need =
            (now_us - self.settings.latency_us - (held - HOLD_SLACK_US)).min(MAX_HOLD_WAIT_US);
        if need > self.hold_wait_us {
            self.hold_wait_us = need;
            self.mix_stats.hold_wait_us = need;
        }
    }

    /// Renders the output frames due at wall-clock time `now_us`, up to
    /// and including one composed picture: a loaded recorder then comes
    /// back with a fresh clock (its lag measured anew, its input drained)
    /// before the next; the caller calls again while [`Self::next_due_us`]
    /// has passed.
    pub fn tick(&mut self, now_us: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.wait_for_held(now_us);
        self.render_until(now_us - self.render_delay_us(), true, &mut actions);
        actions
    }

    /// Renders the ticks up to `until_us`; `catch_up` skips video ticks
    /// when further behind than [`MAX_BEHIND_US`] (live, not at the end).
    fn render_until(&mut self, until_us: i64, catch_up: bool, actions: &mut Vec<Action>) {
        while let Some(t) = self.tick_time(self.next_tick) {
            if t > until_us {
                break;
            }
            self.fix_start();
            if catch_up && until_us - t > MAX_BEHIND_US {
                // Catch up: skip to the newest due tick.
                let fps = i64::from(self.settings.transcode.video.fps.max(1));
                let start = self.start_us.unwrap_or(t);
                let newest = ((until_us - start) * fps / 1_000_000).max(0) as u64;
                self.mix_stats.ticks_skipped += newest.saturating_sub(self.next_tick);
                self.next_tick = newest;
                continue;
            }
            if catch_up {
                self.pace(until_us - t, t);
            }
            let d = u64::from(self.mix_stats.decimation.max(1));
            let keep = self.next_tick % d == 0;
            if !keep && self.encoder.is_some() {
                self.mix_stats.output_frames_dropped += 1;
            }
            self.render_tick(t, keep, actions);
            self.next_tick += 1;
            if catch_up && keep && self.encoder.is_some() {
                break;
            }
        }
    }

    /// Adapts the output rate to how far behind (`lag`) tick `t` runs,
    /// once per [`PACE_STEP_US`] of output. Dropping frames answers an
    /// overload, not a one-off delay: a recorder that is gaining on real
    /// time (a start-up that took a while, the host pausing it) catches up
    /// by itself, so frames go only while the lag is not shrinking by at
    /// least [`DRAIN_PER_STEP_US`] a step, or is past half of
    /// [`MAX_BEHIND_US`]. (A CI run lost 1.6 s of a 10 s mix to one 437 ms
    /// start-up delay before this.)
    fn pace(&mut self, lag: i64, t: i64) {
        if self.encoder.is_none() {
            return;
        }
        let previous_lag = match self.lag_sample {
            Some((at, _)) if t.saturating_sub(at) < PACE_STEP_US => return,
            Some((_, lag)) => Some(lag),
            None => None,
        };
        self.lag_sample = Some((t, lag));
        let fps = self.settings.transcode.video.fps.max(1);
        let d = self.mix_stats.decimation.max(1);
        if lag > DECIMATE_ABOVE_US {
            self.calm_since = None;
            let draining = lag <= MAX_BEHIND_US / 2
                && previous_lag.is_none_or(|p| p.saturating_sub(lag) >= DRAIN_PER_STEP_US);
            if !draining && d < fps {
                self.mix_stats.decimation = d.saturating_mul(2).min(fps);
                tracing::warn!(
                    behind_ms = lag / 1000,
                    keep_one_in = self.mix_stats.decimation,
                    "mixed recording behind real time: dropping output frames evenly"
                );
            }
        } else if lag < RESTORE_BELOW_US {
            let since = *self.calm_since.get_or_insert(t);
            if d > 1 && t - since >= RESTORE_AFTER_US {
                self.mix_stats.decimation = d / 2;
                self.calm_since = Some(t);
                tracing::info!(
                    keep_one_in = self.mix_stats.decimation,
                    "mixed recording caught up: output rate raised"
                );
            }
        } else {
            self.calm_since = None;
        }
    }

    /// One output tick: the inputs decoded up to `t`, the audio mixed; the
    /// picture composed and encoded unless the frame is dropped (`video`
    /// false, overload).
    fn render_tick(&mut self, t: i64, video: bool, actions: &mut Vec<Action>) {
        let frame_us = 1_000_000 / i64::from(self.settings.transcode.video.fps.max(1));
        let now = self.settings.stopwatch;
        if self.encoder.is_some() {
            let t0 = now();
            // Each tick shows the input frame nearest its instant (up to
            // half an output frame after it): a flash and its beep then
            // land within half an output frame of each other, where the
            // latest frame before the tick showed video up to a whole
            // output frame late (measured: p99 60 ms at 15 fps).
            self.decode_until(t + frame_us / 2, actions);
            self.mix_stats.stages.decode += now() - t0;
            if video {
                let t1 = now();
                self.apply_layouts_due(t);
                self.build_scene(t);
                self.mix_stats.stages.compose += now() - t1;
                self.encode_tick(t);
            }
        }
        let t0 = now();
        if let Some(m) = self.mixer.as_mut() {
            if let Err(e) = m.advance(t + frame_us, &mut self.aac) {
                tracing::warn!(error = %e, "mixed audio could not be encoded");
                self.mix_stats.encode_errors += 1;
            }
        }
        let t1 = now();
        self.write_audio();
        self.mix_stats.stages.audio += t1 - t0;
        self.mix_stats.stages.mux += now() - t1;
        self.mix_stats.ticks += 1;
        self.drain_outputs(actions);
    }

    fn write_audio(&mut self) {
        for f in self.aac.drain(..) {
            let pts = f.pts_90k + self.audio_offset_90k;
            self.stream.push_aac(pts, &f.adts, &mut self.outputs);
        }
    }

    fn decode_until(&mut self, t: i64, actions: &mut Vec<Action>) {
        for v in self.videos.values_mut() {
            while v.queue.front().is_some_and(|(ft, _)| *ft <= t) {
                let Some((ft, frame)) = v.queue.pop_front() else {
                    break;
                };
                if v.wait_keyframe && !frame.keyframe {
                    continue;
                }
                match v.decoder.decode(&frame.data) {
                    Ok(true) => {
                        v.wait_keyframe = false;
                        v.shown_at = Some(ft);
                    }
                    Ok(false) => v.wait_keyframe = false,
                    Err(e) => {
                        tracing::debug!(error = %e, "video frame not decodable; waiting for a key frame");
                        self.mix_stats.decode_errors += 1;
                        v.wait_keyframe = true;
                        if let Some(tag) = v.tag {
                            actions.push(Action::RequestKeyframe { tag });
                        }
                    }
                }
            }
        }
    }

    /// The picture a tile shows for a user's video at time `t`, if any,
    /// and whether the tile is painted black instead (FillType 1).
    fn encode_tick(&mut self, t: i64) {
        let now = self.settings.stopwatch;
        let t0 = now();
        let composed = self.compositor.compose(&self.scene, &mut self.canvas);
        let t1 = now();
        self.mix_stats.stages.compose += t1 - t0;
        if let Err(e) = composed {
            tracing::error!(error = %e, "compositor failed; frame skipped");
            self.mix_stats.compose_errors += 1;
            return;
        }
        // Release the inputs' pictures so their decoders can reuse them.
        self.scene[0].layers.clear();
        let Some(enc) = self.encoder.as_mut() else {
            return;
        };
        let force = std::mem::take(&mut self.force_keyframe);
        let encoded = enc.encode(&self.canvas[0], force);
        let t2 = now();
        self.mix_stats.stages.encode += t2 - t1;
        match encoded {
            Ok(Some(f)) => {
                self.stream
                    .push_video(t, f.keyframe, &f.data, &mut self.outputs);
                self.mix_stats.stages.mux += now() - t2;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "mixed video could not be encoded");
                self.mix_stats.encode_errors += 1;
            }
        }
    }

    fn drain_outputs(&mut self, actions: &mut Vec<Action>) {
        let track_type = self.stream_track_type();
        for o in self.outputs.drain(..) {
            let file = |file_name: String, begin_ms: u64| FileInfo {
                user_id: String::new(),
                file_name,
                track_type,
                begin_ms,
            };
            match o {
                Output::Segment { key, data } => actions.push(Action::Store { key, data }),
                Output::Journal(write) => actions.push(Action::Journal(write)),
                Output::Playlist {
                    key,
                    file_name,
                    text,
                    begin_ms,
                } => actions.push(Action::StorePlaylist {
                    key,
                    text,
                    file: file(file_name, begin_ms),
                }),
                Output::FirstSegment {
                    file_name,
                    begin_ms,
                } => actions.push(Action::FileSliced(file(file_name, begin_ms))),
                Output::WantKeyframe => self.force_keyframe = true,
            }
        }
    }

    fn stream_track_type(&self) -> TrackType {
        match (self.encoder.is_some(), self.has_audio) {
            (true, true) => TrackType::AudioVideo,
            (true, false) => TrackType::Video,
            _ => TrackType::Audio,
        }
    }

    /// The task ends at wall-clock `now_us`: what is buffered is rendered
    /// (no latency wait), then the file is closed.
    pub fn finish(&mut self, now_us: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        let mut tags: Vec<u64> = self.subs.keys().copied().collect();
        tags.sort_unstable();
        // Place what the clocks still hold. The subscriptions stay until
        // the backlog is rendered: its frames still show every user.
        for &tag in &tags {
            self.flush_clock(tag);
        }
        self.fix_start();
        let last_media = self
            .videos
            .values()
            .filter_map(|v| v.queue.back().map(|(t, _)| *t))
            .max()
            .unwrap_or(i64::MIN);
        // Everything placed so far, without the latency wait and at most
        // one second past the wall clock.
        let until = now_us.max(last_media).min(now_us + MAX_BEHIND_US);
        self.render_until(until, false, &mut actions);
        for tag in tags {
            self.end_sub(tag, &mut actions);
        }
        if let Some(m) = self.mixer.take() {
            if let Err(e) = m.finish(&mut self.aac) {
                tracing::warn!(error = %e, "mixed audio could not be flushed");
            }
            self.write_audio();
        }
        self.stream.finish(&mut self.outputs);
        self.drain_outputs(&mut actions);
        actions
    }

    /// Subscribed tracks' streams (user main/aux) for the streams gauge.
    pub fn active_streams(&self) -> usize {
        let mut slots: Vec<(&str, Media)> = self
            .subs
            .values()
            .map(|s| (s.user_id.as_str(), media_of(s.kind)))
            .collect();
        slots.sort_unstable_by(|a, b| (a.0, a.1.as_str()).cmp(&(b.0, b.1.as_str())));
        slots.dedup();
        slots.len()
    }

    pub fn stream_errors(&self) -> u64 {
        self.stream.errors
    }

    /// Segments ended without a key frame (see `hls::segmenter`).
    pub fn segments_ended_early(&self) -> u64 {
        self.stream.ended_early
    }

    /// PTS of the first output frame (for tests and logs).
    pub fn start_pts(&self) -> Option<u64> {
        self.start_us.map(|s| {
            ((s - self.settings.epoch_us) as i128 * 9 / 100 + i128::from(BASE_90K)).max(0) as u64
        })
    }
}

#[cfg(test)]
mod tests {
    //! The recorder driven without IO: synthetic publishers (real H.264 and
    //! Opus from [`crate::publish::source`]) on a synthetic wall clock, the
    //! CPU compositor and OpenH264; the stored TS segments are demuxed and
    //! their video decoded to check the pictures.

    use super::*;
    use crate::domain::params::{
        AudioParams, CustomTile, LayoutMode, MediaId, Rect as ApiRect, RenderMode, Rgb, RoomId,
        VideoParams, Watermark,
    };
    use crate::media::h264_codec::OpenH264Encoder;
    use crate::media::ts::{PID_AUDIO, PID_VIDEO};
    use crate::publish::source::{
        self, AudioConfig, AudioSource, Pattern, VideoConfig, VideoSource,
    };
    use crate::record::action::FileInfo;
    use kiroku_gpu::cpu::CpuCompositor;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    /// The task epoch: 2023-11-14 22:13:20.000 UTC.
    const EPOCH_US: i64 = 1_700_000_000_000_000;
    /// The first media arrives one second after the epoch.
    const T0: i64 = EPOCH_US + 1_000_000;
    const W: u32 = 320;
    const H: u32 = 180;
    const FPS: u32 = 10;
    const FRAME_US: i64 = 100_000;
    /// Audio packets are 20 ms; the simulation steps by one.
    const STEP_US: i64 = 20_000;
    const LATENCY_US: i64 = 3_000_000;
    const FOLDER: &str = "rec/task-1/";
    const STEM: &str = "1400123456_12345";

    const RED: Rgb = Rgb(200, 30, 30);
    const GREEN: Rgb = Rgb(40, 190, 60);
    const BLUE: Rgb = Rgb(30, 40, 200);
    const YELLOW: Rgb = Rgb(230, 220, 40);
    const MAGENTA: Rgb = Rgb(210, 40, 200);
    const BLACK_RGB: Rgb = Rgb(0, 0, 0);

    fn at(us: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(us as u64)
    }

    fn yuv(c: Rgb) -> Yuv {
        c.to_yuv601()
    }

    fn transcode(fps: u32) -> MixTranscode {
        MixTranscode {
            video: VideoParams {
                width: W,
                height: H,
                fps,
                bitrate_bps: 400_000,
                gop_seconds: 2,
            },
            audio: AudioParams::default(),
        }
    }

    fn settings(stream_type: StreamType, fill: FillType, fps: u32) -> MixedSettings {
        MixedSettings {
            naming: Arc::new(Naming::new(
                &["rec".to_owned()],
                "task-1",
                1_400_123_456,
                &RoomId::Int(12345),
                0,
            )),
            segment: SegmenterConfig {
                target: Duration::from_secs(2),
                keyframe_grace: Duration::from_secs(1),
                max_keyframe_wait: crate::hls::segmenter::MAX_KEYFRAME_WAIT,
            },
            stream_type,
            media: MediaSelection::Main,
            fill,
            epoch_us: EPOCH_US,
            transcode: transcode(fps),
            latency_us: LATENCY_US,
            stopwatch: Instant::now,
        }
    }

    /// A test's recorder and everything it asked for.
    struct Sim {
        rec: MixedRecorder,
        actions: Vec<Action>,
    }

    impl Sim {
        /// The worker's setup: no encoder for audio-only streams.
        fn new(stream_type: StreamType, fill: FillType, layout: MixLayout) -> Self {
            let encoder = stream_type != StreamType::AudioOnly;
            Self::with(encoder, stream_type, fill, layout, FPS)
        }

        fn with(
            encoder: bool,
            stream_type: StreamType,
            fill: FillType,
            layout: MixLayout,
            fps: u32,
        ) -> Self {
            let encoder: Option<Box<dyn VideoEncoder>> = encoder.then(|| {
                Box::new(
                    OpenH264Encoder::open(MixedRecorder::encoder_settings(&transcode(fps)))
                        .expect("encoder"),
                ) as Box<dyn VideoEncoder>
            });
            let rec = MixedRecorder::new(
                settings(stream_type, fill, fps),
                Subscription::default(),
                layout,
                Box::new(CpuCompositor::new()),
                encoder,
            )
            .expect("recorder");
            Self {
                rec,
                actions: Vec::new(),
            }
        }

        /// Offers the tracks (in join order); returns the tag of each
        /// subscribed track by user and kind.
        fn offer(&mut self, tracks: &[(&str, TrackKind)]) -> HashMap<(String, TrackKind), u64> {
            let offered: Vec<OfferedTrack> = tracks
                .iter()
                .map(|(u, k)| OfferedTrack {
                    user_id: (*u).to_owned(),
                    kind: *k,
                    session_id: format!("{u}-1"),
                })
                .collect();
            let actions = self.rec.reconcile(&offered);
            let tags = actions
                .iter()
                .filter_map(|a| match a {
                    Action::Subscribe {
                        tag, user_id, kind, ..
                    } => Some(((user_id.clone(), *kind), *tag)),
                    _ => None,
                })
                .collect();
            self.actions.extend(actions);
            tags
        }

        fn frame(&mut self, tag: u64, frame: MediaFrame) {
            let a = self.rec.on_frame(tag, frame);
            self.actions.extend(a);
        }

        /// As the worker does: tick again while frames are due.
        fn tick(&mut self, now_us: i64) {
            loop {
                let a = self.rec.tick(now_us);
                self.actions.extend(a);
                if self.rec.next_due_us().is_none_or(|due| due > now_us) {
                    break;
                }
            }
        }

        fn finish(&mut self, now_us: i64) {
            let a = self.rec.finish(now_us);
            self.actions.extend(a);
        }
    }

    fn camera(color: Rgb) -> VideoSource {
        VideoSource::new(VideoConfig {
            width: W,
            height: H,
            fps: FPS,
            bitrate_bps: 300_000,
            label: String::new(),
            color: source::Rgb(color.0, color.1, color.2),
            pattern: Pattern::Solid,
            keyframe_interval_frames: 10,
            sync_marks: None,
        })
        .expect("camera")
    }

    fn microphone() -> AudioSource {
        AudioSource::new(AudioConfig::default()).expect("microphone")
    }

    /// Video frame `n` (10 fps), arriving at `T0 + n/10 s` without a
    /// sender report: the timeline places it at its arrival.
    fn video_frame(cam: &mut VideoSource, n: u64) -> MediaFrame {
        let f = cam
            .next_frame(Duration::from_micros(n * FRAME_US as u64))
            .expect("video frame");
        MediaFrame {
            codec: Codec::H264,
            data: Arc::from(f.data),
            keyframe: f.keyframe,
            rtp_time: 1_000_000 + n * 9_000,
            clock_rate: 90_000,
            ntp_time: None,
            received_at: Instant::now(),
            received_wall: at(T0 + n as i64 * FRAME_US),
            report_stamp: None,
            contiguous: true,
        }
    }

    /// Opus packet `k` (20 ms), arriving at `T0 + k·20 ms`.
    fn audio_frame(mic: &mut AudioSource, k: u64) -> MediaFrame {
        let f = mic.next_frame().expect("audio frame");
        MediaFrame {
            codec: Codec::Opus,
            data: Arc::from(f.data),
            keyframe: true,
            rtp_time: 5_000_000 + k * 960,
            clock_rate: 48_000,
            ntp_time: None,
            received_at: Instant::now(),
            received_wall: at(T0 + k as i64 * STEP_US),
            report_stamp: None,
            contiguous: true,
        }
    }

    /// One publisher: its subscribed tracks and their sources.
    struct Publisher {
        video: Option<(u64, VideoSource)>,
        audio: Option<(u64, AudioSource)>,
        /// Video frames `n < video_frames` are sent.
        video_frames: u64,
    }

    impl Publisher {
        fn new(
            tags: &HashMap<(String, TrackKind), u64>,
            user: &str,
            color: Option<Rgb>,
            audio: bool,
        ) -> Self {
            let tag = |kind| *tags.get(&(user.to_owned(), kind)).expect("subscribed");
            Self {
                video: color.map(|c| (tag(TrackKind::MainVideo), camera(c))),
                audio: audio.then(|| (tag(TrackKind::Audio), microphone())),
                video_frames: u64::MAX,
            }
        }
    }

    /// Runs the room from `T0 + from_step·20 ms` to before `to_step`: every
    /// step each publisher's audio packet, every fifth its video frame,
    /// then a tick at that wall time and `hook`.
    fn run(
        sim: &mut Sim,
        pubs: &mut [Publisher],
        steps: std::ops::Range<u64>,
        mut hook: impl FnMut(&mut Sim, i64),
    ) {
        for s in steps {
            let now = T0 + s as i64 * STEP_US;
            for p in pubs.iter_mut() {
                if let Some((tag, mic)) = p.audio.as_mut() {
                    let f = audio_frame(mic, s);
                    sim.frame(*tag, f);
                }
                let n = s / 5;
                if s % 5 == 0 && n < p.video_frames {
                    if let Some((tag, cam)) = p.video.as_mut() {
                        let f = video_frame(cam, n);
                        sim.frame(*tag, f);
                    }
                }
            }
            sim.tick(now);
            hook(sim, now);
        }
    }

    /// Step of wall time `us` after T0.
    fn step(us: i64) -> u64 {
        (us / STEP_US) as u64
    }

    /// Every PES in `ts`: (PID, PTS, elementary stream bytes), read by the
    /// project's TS demuxer (which must find no damage).
    fn pes_list(ts: &[u8]) -> Vec<(u16, u64, Vec<u8>)> {
        let (units, damage) = crate::media::ts_demux::demux_segment(ts);
        assert!(damage.is_empty(), "{damage:?}");
        units
            .into_iter()
            .map(|u| {
                let pid = if u.video { PID_VIDEO } else { PID_AUDIO };
                (pid, u.pts, u.payload)
            })
            .collect()
    }

    /// The stored segments, in order.
    fn segments(actions: &[Action]) -> Vec<(&str, &[u8])> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Store { key, data } => Some((key.as_str(), data.as_slice())),
                _ => None,
            })
            .collect()
    }

    /// Every PES of the recording, segments in order.
    fn all_pes(actions: &[Action]) -> Vec<(u16, u64, Vec<u8>)> {
        segments(actions)
            .into_iter()
            .flat_map(|(_, ts)| pes_list(ts))
            .collect()
    }

    /// The recording's video: (PTS, decoded picture) per output frame.
    fn pictures(actions: &[Action]) -> Vec<(u64, Picture)> {
        let mut decoder = PictureDecoder::new().expect("decoder");
        all_pes(actions)
            .into_iter()
            .filter(|(pid, _, _)| *pid == PID_VIDEO)
            .map(|(_, pts, es)| {
                assert!(decoder.decode(&es).expect("output decodes"), "a picture");
                let p = decoder.latest().expect("picture");
                assert_eq!((p.width, p.height), (W, H));
                (pts, Picture::clone(p))
            })
            .collect()
    }

    /// Mean colour of the `w × h` box centred on (`cx`, `cy`).
    fn mean(p: &Picture, cx: u32, cy: u32, w: u32, h: u32) -> Yuv {
        let avg = |plane: &[u8], stride: u32, x0: u32, y0: u32, bw: u32, bh: u32| {
            let mut sum = 0u64;
            for y in y0..y0 + bh {
                for x in x0..x0 + bw {
                    sum += u64::from(plane[(y * stride + x) as usize]);
                }
            }
            (sum / u64::from(bw * bh)) as u8
        };
        let (x0, y0) = (cx - w / 2, cy - h / 2);
        let cw = p.width.div_ceil(2);
        Yuv {
            y: avg(&p.y, p.width, x0, y0, w, h),
            u: avg(&p.u, cw, x0 / 2, y0 / 2, w / 2, h / 2),
            v: avg(&p.v, cw, x0 / 2, y0 / 2, w / 2, h / 2),
        }
    }

    fn near(a: Yuv, b: Yuv) -> bool {
        let d = |x: u8, y: u8| (i32::from(x) - i32::from(y)).abs() <= 8;
        d(a.y, b.y) && d(a.u, b.u) && d(a.v, b.v)
    }

    /// The centre of the left and right halves of the canvas.
    const LEFT: (u32, u32) = (W / 4, H / 2);
    const RIGHT: (u32, u32) = (3 * W / 4, H / 2);

    fn assert_at(p: &Picture, (cx, cy): (u32, u32), want: Rgb, what: &str) {
        let got = mean(p, cx, cy, 32, 32);
        assert!(
            near(got, yuv(want)),
            "{what}: ({cx}, {cy}) is {got:?}, want {:?} ({want:?})",
            yuv(want)
        );
    }

    /// Server time of a video PTS.
    fn time_of(pts: u64) -> i64 {
        EPOCH_US + (pts as i64 - BASE_90K as i64) * 100 / 9
    }

    fn playlists(actions: &[Action]) -> Vec<(&str, &str, &FileInfo)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::StorePlaylist { key, text, file } => {
                    Some((key.as_str(), text.as_str(), file))
                }
                _ => None,
            })
            .collect()
    }

    fn sliced(actions: &[Action]) -> Vec<&FileInfo> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::FileSliced(f) => Some(f),
                _ => None,
            })
            .collect()
    }

    fn both(user: &str) -> [(&str, TrackKind); 2] {
        [(user, TrackKind::Audio), (user, TrackKind::MainVideo)]
    }

    #[test]
    fn nine_grid_two_users_side_by_side_in_join_order_with_mixed_names() {
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::LastFrame,
            MixLayout::default(),
        );
        // Bob joined first: the left half is his although "alice" sorts
        // first.
        let offered: Vec<(&str, TrackKind)> = [both("bob"), both("alice")].concat();
        let tags = sim.offer(&offered);
        assert_eq!(tags.len(), 4);
        let mut pubs = [
            Publisher::new(&tags, "bob", Some(RED), true),
            Publisher::new(&tags, "alice", Some(GREEN), true),
        ];
        run(&mut sim, &mut pubs, 0..step(4_000_000), |_, _| {});
        sim.finish(T0 + 4_000_000);
        let actions = &sim.actions;

        assert_eq!(
            actions
                .iter()
                .filter(|a| matches!(a, Action::MediaStarted))
                .count(),
            1
        );
        // Names: `<SdkAppId>_<RoomId>_<UTC>.ts` and `<SdkAppId>_<RoomId>.m3u8`.
        let segs = segments(actions);
        assert!(segs.len() >= 2, "{} segments", segs.len());
        for (key, _) in &segs {
            let name = key.strip_prefix(FOLDER).expect("task folder");
            let utc = name
                .strip_prefix(&format!("{STEM}_"))
                .and_then(|n| n.strip_suffix(".ts"))
                .unwrap_or_else(|| panic!("mixed segment name: {name}"));
            assert!(
                utc.len() == 17 && utc.bytes().all(|b| b.is_ascii_digit()),
                "{name}"
            );
        }
        let lists = playlists(actions);
        assert!(!lists.is_empty());
        for (key, text, file) in &lists {
            assert_eq!(*key, format!("{FOLDER}{STEM}.m3u8"));
            assert_eq!(file.file_name, format!("{STEM}.m3u8"));
            assert_eq!(file.user_id, "");
            assert_eq!(file.track_type, TrackType::AudioVideo);
            for line in text.lines().filter(|l| !l.starts_with('#')) {
                assert!(segs.iter().any(|(k, _)| k.ends_with(line)), "{line}");
            }
        }
        let files = sliced(actions);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].user_id, "");
        assert_eq!(files[0].file_name, format!("{STEM}.m3u8"));
        assert_eq!(files[0].track_type, TrackType::AudioVideo);

        // The video: one frame per tick from the start, 1/fps apart.
        let pics = pictures(actions);
        assert_eq!(pics.len() as u64, sim.rec.mix_stats.ticks);
        assert_eq!(sim.rec.mix_stats.ticks_skipped, 0);
        // From the first media (T0) to the end (T0 + 4 s), both included.
        assert_eq!(pics.len(), 41);
        assert_eq!(Some(pics[0].0), sim.rec.start_pts());
        assert_eq!(time_of(pics[0].0), T0);
        for w in pics.windows(2) {
            assert_eq!(w[1].0 - w[0].0, 90_000 / u64::from(FPS), "PTS step");
        }
        for (i, (_, p)) in pics.iter().enumerate() {
            assert_at(p, LEFT, RED, &format!("frame {i}, bob (joined first)"));
            assert_at(p, RIGHT, GREEN, &format!("frame {i}, alice"));
        }
        // The mixed audio runs alongside.
        let audio: Vec<u64> = all_pes(actions)
            .into_iter()
            .filter(|(pid, _, _)| *pid == PID_AUDIO)
            .map(|(_, pts, _)| pts)
            .collect();
        assert!(audio.len() > 10, "{} audio PES", audio.len());
        assert!(audio.windows(2).all(|w| w[0] < w[1]));
        let first = sim.rec.start_pts().expect("started");
        assert!(
            audio[0] + 1_921 >= first && audio[0] <= first,
            "{}",
            audio[0]
        );
        assert_eq!(sim.rec.mix_stats.decode_errors, 0);
        assert_eq!(sim.rec.stream_errors(), 0);
    }

    /// One user (video only, full canvas) whose video stops after 3 s
    /// while the subscription stays; the pictures of 8 s.
    fn stopped_video(fill: FillType) -> Vec<(u64, Picture)> {
        let mut sim = Sim::new(StreamType::AudioVideo, fill, MixLayout::default());
        let tags = sim.offer(&[("alice", TrackKind::MainVideo)]);
        let mut pubs = [Publisher::new(&tags, "alice", Some(RED), false)];
        pubs[0].video_frames = 30;
        run(&mut sim, &mut pubs, 0..step(8_000_000), |_, _| {});
        sim.finish(T0 + 8_000_000);
        assert_eq!(sim.rec.mix_stats.ticks_skipped, 0);
        let pics = pictures(&sim.actions);
        assert_eq!(pics.len(), 81);
        pics
    }

    #[test]
    fn a_stopped_video_keeps_its_last_frame_or_turns_black_by_fill_type() {
        // The last frame is at 2.9 s: stale after 4.9 s.
        let last_frame = T0 + 2_900_000;
        for (fill, after) in [(FillType::LastFrame, RED), (FillType::Black, BLACK_RGB)] {
            for (pts, p) in stopped_video(fill) {
                let t = time_of(pts);
                let want = if t - last_frame > STALE_US {
                    after
                } else {
                    RED
                };
                let what = format!("{fill:?} at {} ms", (t - T0) / 1000);
                assert_at(&p, LEFT, want, &what);
                assert_at(&p, RIGHT, want, &what);
            }
        }
    }

    /// Alice (red video and audio) and Bob (audio only), 3 s.
    fn with_audio_only_user(layout: MixLayout, images: Images) -> Vec<(u64, Picture)> {
        let mut sim = Sim::new(StreamType::AudioVideo, FillType::LastFrame, layout);
        sim.rec.add_images(images);
        let offered: Vec<(&str, TrackKind)> =
            [&both("alice")[..], &[("bob", TrackKind::Audio)]].concat();
        let tags = sim.offer(&offered);
        assert_eq!(tags.len(), 3);
        let mut pubs = [
            Publisher::new(&tags, "alice", Some(RED), true),
            Publisher::new(&tags, "bob", None, true),
        ];
        run(&mut sim, &mut pubs, 0..step(3_000_000), |_, _| {});
        sim.finish(T0 + 3_000_000);
        let pics = pictures(&sim.actions);
        assert_eq!(pics.len(), 31);
        pics
    }

    #[test]
    fn an_audio_only_user_holds_a_tile_unless_pure_audio_disable_layout() {
        const PLACEHOLDER: &str = "https://img.example/placeholder.png";
        let images = || {
            Images::from([(
                PLACEHOLDER.to_owned(),
                Arc::new(Picture::filled(64, 36, yuv(YELLOW))),
            )])
        };
        let base = MixLayout {
            background_color: BLUE,
            placeholder_image: Some(PLACEHOLDER.to_owned()),
            ..MixLayout::default()
        };
        // Placeholder off: Bob's half shows the background.
        for (_, p) in with_audio_only_user(base.clone(), images()) {
            assert_at(&p, LEFT, RED, "alice");
            assert_at(&p, RIGHT, BLUE, "bob: background");
        }
        // Placeholder on: his half shows the placeholder image.
        let placeholder = MixLayout {
            placeholder: true,
            ..base.clone()
        };
        for (_, p) in with_audio_only_user(placeholder.clone(), images()) {
            assert_at(&p, LEFT, RED, "alice");
            assert_at(&p, RIGHT, YELLOW, "bob: placeholder");
        }
        // An image that never arrived: the background again.
        for (_, p) in with_audio_only_user(placeholder.clone(), Images::new()) {
            assert_at(&p, RIGHT, BLUE, "bob: no placeholder image");
        }
        // PureAudioDisableLayout: Alice alone fills the canvas.
        let pure = MixLayout {
            pure_audio_disable_layout: true,
            ..placeholder
        };
        for (_, p) in with_audio_only_user(pure, images()) {
            assert_at(&p, LEFT, RED, "alice alone");
            assert_at(&p, RIGHT, RED, "alice alone");
        }
    }

    #[test]
    fn a_new_layout_shows_from_the_output_frame_of_the_calls_instant() {
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::LastFrame,
            MixLayout::default(),
        );
        let offered: Vec<(&str, TrackKind)> = [both("bob"), both("alice")].concat();
        let tags = sim.offer(&offered);
        let mut pubs = [
            Publisher::new(&tags, "bob", Some(RED), true),
            Publisher::new(&tags, "alice", Some(GREEN), true),
        ];
        let custom = MixLayout {
            mode: LayoutMode::Custom,
            custom: vec![CustomTile {
                rect: ApiRect {
                    top: 0,
                    left: 0,
                    width: W,
                    height: H,
                },
                user_id: Some("alice".to_owned()),
                alpha: 0,
                render_mode: RenderMode::Crop,
                media: MediaId::Main,
                layer: 1,
                sub_background_image: None,
            }],
            ..MixLayout::default()
        };
        let mut rendered_by_then = None;
        run(&mut sim, &mut pubs, 0..step(5_000_000), |sim, now| {
            if now == T0 + 4_500_000 {
                rendered_by_then = Some(sim.rec.mix_stats.ticks as usize);
                sim.rec.modify_layout(custom.clone(), now);
            }
        });
        sim.finish(T0 + 5_000_000);
        // Rendered live by the call: the ticks up to 4.5 s − latency; the
        // new layout waits for the output to reach the call's instant.
        assert_eq!(rendered_by_then, Some(16));
        let switched_after = 45;
        let pics = pictures(&sim.actions);
        assert_eq!(pics.len(), 51);
        for (i, (_, p)) in pics.iter().enumerate() {
            let what = format!("frame {i}");
            if i < switched_after {
                assert_at(p, LEFT, RED, &what);
                assert_at(p, RIGHT, GREEN, &what);
            } else {
                assert_at(p, LEFT, GREEN, &what);
                assert_at(p, RIGHT, GREEN, &what);
            }
        }
    }

    #[test]
    fn a_joining_user_takes_a_place_from_their_first_media_on() {
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::LastFrame,
            MixLayout::default(),
        );
        let tags = sim.offer(&both("bob"));
        let mut pubs = vec![Publisher::new(&tags, "bob", Some(RED), true)];
        run(&mut sim, &mut pubs, 0..step(3_000_000), |_, _| {});
        // Alice joins at 3 s, when the output is still at 1 s.
        let tags = sim.offer(&[both("bob"), both("alice")].concat());
        pubs.push(Publisher::new(&tags, "alice", Some(GREEN), true));
        run(
            &mut sim,
            &mut pubs,
            step(3_000_000)..step(8_000_000),
            |_, _| {},
        );
        sim.finish(T0 + 8_000_000);
        let pics = pictures(&sim.actions);
        assert!(pics.len() > 70, "{}", pics.len());
        for (pts, p) in &pics {
            let t = time_of(*pts) - T0;
            let what = format!("{} ms", t / 1000);
            if t < 2_900_000 {
                // Bob alone fills the canvas until Alice's media begins.
                assert_at(p, LEFT, RED, &what);
                assert_at(p, RIGHT, RED, &what);
            } else if t > 3_300_000 {
                assert_at(p, LEFT, RED, &what);
                assert_at(p, RIGHT, GREEN, &what);
            }
        }
    }

    #[test]
    fn a_user_who_leaves_keeps_the_tile_until_the_last_frame_is_shown() {
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::Black,
            MixLayout::default(),
        );
        let offered: Vec<(&str, TrackKind)> = [both("bob"), both("alice")].concat();
        let tags = sim.offer(&offered);
        let [bob, alice] = [
            Publisher::new(&tags, "bob", Some(RED), true),
            Publisher::new(&tags, "alice", Some(GREEN), true),
        ];
        let mut pubs = vec![bob, alice];
        run(&mut sim, &mut pubs, 0..step(5_000_000), |_, _| {});
        // Bob leaves at 5 s, when the output is at 2 s (the latency).
        let started = sim.offer(&both("alice"));
        assert!(started.is_empty());
        assert_eq!(
            sim.actions
                .iter()
                .filter(|a| matches!(a, Action::Unsubscribe { .. }))
                .count(),
            2
        );
        pubs.remove(0);
        run(
            &mut sim,
            &mut pubs,
            step(5_000_000)..step(9_000_000),
            |_, _| {},
        );
        sim.finish(T0 + 9_000_000);
        let pics = pictures(&sim.actions);
        assert_eq!(pics.len(), 91);
        // His last frame is at 4.9 s and his last audio at 4.98 s.
        for (pts, p) in &pics {
            let t = time_of(*pts) - T0;
            let what = format!("{} ms", t / 1000);
            if t < 5_000_000 {
                assert_at(p, LEFT, RED, &what);
                assert_at(p, RIGHT, GREEN, &what);
            } else {
                assert_at(p, LEFT, GREEN, &what);
                assert_at(p, RIGHT, GREEN, &what);
            }
        }
        // His decoder went with him.
        assert_eq!(sim.rec.videos.len(), 1);
    }

    #[test]
    fn an_image_watermark_shows_at_its_rectangle_and_a_missing_one_not_at_all() {
        const MARK: &str = "https://img.example/mark.png";
        const MISSING: &str = "https://img.example/missing.png";
        let rect = |left, top| ApiRect {
            top,
            left,
            width: 80,
            height: 40,
        };
        let layout = MixLayout {
            watermarks: vec![
                Watermark::Image {
                    url: MARK.to_owned(),
                    rect: rect(20, 100),
                },
                Watermark::Image {
                    url: MISSING.to_owned(),
                    rect: rect(200, 100),
                },
            ],
            ..MixLayout::default()
        };
        let mut sim = Sim::new(StreamType::AudioVideo, FillType::LastFrame, layout);
        sim.rec.add_images(Images::from([(
            MARK.to_owned(),
            Arc::new(Picture::filled(16, 16, yuv(MAGENTA))),
        )]));
        let tags = sim.offer(&both("alice"));
        let mut pubs = [Publisher::new(&tags, "alice", Some(RED), true)];
        run(&mut sim, &mut pubs, 0..step(3_000_000), |_, _| {});
        sim.finish(T0 + 3_000_000);
        let pics = pictures(&sim.actions);
        assert_eq!(pics.len(), 31);
        for (i, (_, p)) in pics.iter().enumerate() {
            let what = format!("frame {i}");
            // Inside the mark (20..100 × 100..140), and beside it.
            assert_at(p, (60, 120), MAGENTA, &what);
            assert!(near(mean(p, 30, 110, 16, 16), yuv(MAGENTA)), "{what}");
            assert!(near(mean(p, 90, 130, 16, 16), yuv(MAGENTA)), "{what}");
            assert_at(p, (60, 160), RED, &what);
            assert_at(p, (130, 120), RED, &what);
            // The missing image's rectangle shows the video.
            assert_at(p, (240, 120), RED, &what);
        }
    }

    /// The video PTS of the recording.
    fn video_pts(actions: &[Action]) -> Vec<u64> {
        all_pes(actions)
            .into_iter()
            .filter(|(pid, _, _)| *pid == PID_VIDEO)
            .map(|(_, pts, _)| pts)
            .collect()
    }

    #[test]
    fn the_output_clock_waits_for_the_latency_skips_when_far_behind_and_drains_at_the_end() {
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::LastFrame,
            MixLayout::default(),
        );
        let tags = sim.offer(&[("alice", TrackKind::MainVideo)]);
        let tag = tags[&("alice".to_owned(), TrackKind::MainVideo)];
        // Nothing before the first media.
        sim.tick(T0 + 60_000_000);
        assert_eq!(sim.rec.next_due_us(), None);
        assert_eq!(sim.rec.mix_stats.ticks, 0);
        // 10 s of video; the timeline places it after its 2 s wait for a
        // sender report, at the arrival times: the output starts at T0.
        let mut cam = camera(RED);
        for n in 0..100 {
            let f = video_frame(&mut cam, n);
            sim.frame(tag, f);
        }
        assert_eq!(sim.rec.next_due_us(), Some(T0 + LATENCY_US));
        let stats = |sim: &Sim| (sim.rec.mix_stats.ticks, sim.rec.mix_stats.ticks_skipped);

        sim.tick(T0 + LATENCY_US - 1);
        assert_eq!(stats(&sim), (0, 0));
        assert!(segments(&sim.actions).is_empty());
        sim.tick(T0 + LATENCY_US);
        assert_eq!(stats(&sim), (1, 0));
        sim.tick(T0 + LATENCY_US + 5 * FRAME_US);
        assert_eq!(stats(&sim), (6, 0));
        sim.tick(T0 + LATENCY_US + 5 * FRAME_US + FRAME_US - 1);
        assert_eq!(stats(&sim), (6, 0));
        assert_eq!(sim.rec.next_due_us(), Some(T0 + LATENCY_US + 6 * FRAME_US));
        // 2.4 s behind: straight to the newest due tick (30).
        sim.tick(T0 + LATENCY_US + 3_000_000);
        assert_eq!(stats(&sim), (7, 24));
        // Exactly MAX_BEHIND_US (2 s) behind: no jump, every tick (31..=51)
        // runs, but output frames are dropped evenly. The lag is sampled
        // every PACE_STEP_US (250 ms) of output — ticks 33, 36, 39, … after
        // the sample at 30 — and past half of MAX_BEHIND_US the rate halves
        // at each: one in 2 from tick 33, 4 from 36, 8 from 39. From 42
        // (0.9 s behind, 0.3 s less than at 39) the recorder is catching
        // up and the rate holds; kept: 31, 32, 34, 36, 40, 48.
        sim.tick(T0 + LATENCY_US + 31 * FRAME_US + MAX_BEHIND_US);
        assert_eq!(stats(&sim), (28, 24));
        assert_eq!(sim.rec.mix_stats.decimation, 8);
        assert_eq!(sim.rec.mix_stats.output_frames_dropped, 15);
        // The end, 6 s later: the backlog up to the last media (9.9 s) is
        // rendered without skipping, at the rate in force (one in 8).
        sim.finish(T0 + LATENCY_US + 6_000_000);
        assert_eq!(stats(&sim), (76, 24));
        assert_eq!(sim.rec.mix_stats.output_frames_dropped, 15 + 42);

        let start = sim.rec.start_pts().expect("started");
        assert_eq!(time_of(start), T0);
        // Each frame kept carries its own tick's time.
        let want: Vec<u64> = (0..=5)
            .chain([30, 31, 32, 34, 36, 40, 48, 56, 64, 72, 80, 88, 96])
            .map(|k| start + k * 90_000 / u64::from(FPS))
            .collect();
        assert_eq!(video_pts(&sim.actions), want);
        let lists = playlists(&sim.actions);
        let (last, earlier) = lists.split_last().expect("playlists");
        assert!(last.1.trim_end().ends_with("#EXT-X-ENDLIST"), "{}", last.1);
        assert!(earlier.iter().all(|l| !l.1.contains("#EXT-X-ENDLIST")));
        // Nothing after the end.
        let n = sim.actions.len();
        sim.tick(T0 + 60_000_000);
        assert_eq!(sim.actions.len(), n);
    }

    /// A camera's frames 0..300 offered to a fresh one-tile sim.
    fn sim_with_camera() -> Sim {
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::LastFrame,
            MixLayout::default(),
        );
        let tags = sim.offer(&[("alice", TrackKind::MainVideo)]);
        let tag = tags[&("alice".to_owned(), TrackKind::MainVideo)];
        let mut cam = camera(RED);
        for n in 0..300 {
            let f = video_frame(&mut cam, n);
            sim.frame(tag, f);
        }
        sim
    }

    #[test]
    fn a_one_off_delay_the_recorder_drains_costs_no_frames() {
        // The first tick comes 600 ms late (a slow start-up), then the
        // recorder renders faster than real time: 2 ticks per frame of
        // wall time until level, then one.
        let mut sim = sim_with_camera();
        let mut now = T0 + LATENCY_US + 600_000;
        while now < T0 + LATENCY_US + 5_000_000 {
            for _ in 0..2 {
                if sim.rec.next_due_us().is_some_and(|due| due <= now) {
                    let a = sim.rec.tick(now);
                    sim.actions.extend(a);
                }
            }
            now += FRAME_US;
        }
        assert_eq!(sim.rec.mix_stats.decimation, 1);
        assert_eq!(sim.rec.mix_stats.output_frames_dropped, 0);
        assert_eq!(sim.rec.mix_stats.ticks_skipped, 0);
    }

    #[test]
    fn an_overloaded_mix_drops_frames_evenly_and_restores_its_rate_once_level() {
        // Each picture takes 1.5 frames of wall time: the recorder falls
        // behind by half a frame per picture until it keeps one in two
        // (a tick call renders the dropped tick and the kept one).
        let mut sim = sim_with_camera();
        let mut now = T0 + LATENCY_US;
        let mut worst_lag = 0;
        while now < T0 + LATENCY_US + 10_000_000 {
            let a = sim.rec.tick(now);
            sim.actions.extend(a);
            if let Some(due) = sim.rec.next_due_us() {
                worst_lag = worst_lag.max(now - due);
            }
            now += FRAME_US * 3 / 2;
        }
        assert_eq!(sim.rec.mix_stats.decimation, 2);
        let dropped_while_slow = sim.rec.mix_stats.output_frames_dropped;
        assert!(dropped_while_slow > 0);
        // Behind by a bounded amount: no jump to the newest tick.
        assert_eq!(sim.rec.mix_stats.ticks_skipped, 0);
        assert!(worst_lag < MAX_BEHIND_US / 2, "{worst_lag}");
        // Then the load goes: on time, tick by tick, for 6 s; back to
        // every frame 3 s after level: one in two of those 30 ticks and of
        // the backlog drained first (under 1 s) dropped, at most.
        let end = now + 6_000_000;
        while now < end {
            sim.tick(now);
            now += FRAME_US;
        }
        assert_eq!(sim.rec.mix_stats.decimation, 1);
        let dropped = sim.rec.mix_stats.output_frames_dropped;
        assert!(dropped - dropped_while_slow <= (30 + 10) / 2, "{dropped}");
        // No two frames in a row were dropped, and every kept frame is on
        // its tick (all of them stored once the recording ends).
        sim.finish(now);
        let start = sim.rec.start_pts().expect("started");
        let ticks: Vec<u64> = video_pts(&sim.actions)
            .iter()
            .map(|p| (p - start) * u64::from(FPS) / 90_000)
            .collect();
        assert!(ticks.windows(2).all(|w| w[1] - w[0] <= 2), "{ticks:?}");
        assert_eq!(ticks.len() as u64 + dropped, sim.rec.mix_stats.ticks);
    }

    #[test]
    fn the_output_starts_at_the_earliest_media_even_when_a_later_user_is_placed_first() {
        // Alice publishes from T0 with no sender report: the timeline holds
        // her media for its 2 s wait, then places it at its arrival. Bob
        // joins 0.5 s later and his reports confirm his mapping at once, so
        // his media is placed first. The output must still start at T0
        // (a CI run lost the first publisher's first 0.44 s this way).
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::LastFrame,
            MixLayout::default(),
        );
        let offered = [&both("alice")[..], &[("bob", TrackKind::MainVideo)]].concat();
        let tags = sim.offer(&offered);
        let tag = |u: &str, k| tags[&(u.to_owned(), k)];
        let (alice_audio, alice_video) = (
            tag("alice", TrackKind::Audio),
            tag("alice", TrackKind::MainVideo),
        );
        let bob = tag("bob", TrackKind::MainVideo);
        let (mut red, mut blue, mut mic) = (camera(RED), camera(BLUE), microphone());
        let mut first_start = None;
        for s in 0..step(6_000_000) {
            let now = T0 + s as i64 * STEP_US;
            let f = audio_frame(&mut mic, s);
            sim.frame(alice_audio, f);
            let n = s / 5;
            if s % 5 == 0 {
                let f = video_frame(&mut red, n);
                sim.frame(alice_video, f);
                if n >= 5 {
                    // From the third frame on, a second report (1 ms apart:
                    // within the re-anchor threshold) confirms the first.
                    let mut f = video_frame(&mut blue, n);
                    let error = if n >= 7 { 1_000 } else { 0 };
                    f.ntp_time = Some(at(T0 + n as i64 * FRAME_US + error));
                    sim.frame(bob, f);
                }
            }
            if first_start.is_none() {
                first_start = sim.rec.start_pts();
            }
            sim.tick(now);
        }
        sim.finish(T0 + 6_000_000);
        // Bob was placed first (the case under test).
        assert_eq!(first_start.map(time_of), Some(T0 + 500_000));
        let start = sim.rec.start_pts().expect("started");
        assert_eq!(time_of(start), T0);
        let pts = video_pts(&sim.actions);
        assert_eq!(pts.first(), Some(&start));
        assert_eq!(pts.len(), 61, "T0 to the end (6 s), both included");
        assert_eq!(sim.rec.mix_stats.ticks_skipped, 0);
        let audio: Vec<u64> = all_pes(&sim.actions)
            .into_iter()
            .filter(|(pid, _, _)| *pid == PID_AUDIO)
            .map(|(_, pts, _)| pts)
            .collect();
        assert!(
            audio[0] + 1_921 >= start && audio[0] <= start,
            "first AAC frame at {} µs",
            time_of(audio[0]) - T0
        );
        // Alice's audio from T0 on is in the mix: about 6 s of AAC frames.
        assert!(audio.len() >= 280, "{} AAC frames", audio.len());
    }

    #[test]
    fn media_the_timeline_holds_longer_than_the_latency_still_makes_its_ticks() {
        // Latency 1.5 s. Alice's audio carries sender reports, confirmed
        // by a second one at 1.6 s: placed then, it fixes the start and
        // the output begins. Her video has none: the timeline holds it
        // 2 s, then places it by arrival, from T0. Her first picture must
        // be the output's first, not half a second later (a CI run lost
        // 0.54 s of a publisher's video this way, aiortc's audio and video
        // reports confirming at different times).
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::LastFrame,
            MixLayout::default(),
        );
        sim.rec.settings.latency_us = 1_500_000;
        let tags = sim.offer(&both("alice"));
        let tag = |k| tags[&("alice".to_owned(), k)];
        let (audio, video) = (tag(TrackKind::Audio), tag(TrackKind::MainVideo));
        let (mut red, mut mic) = (camera(RED), microphone());
        for s in 0..step(5_000_000) {
            let now = T0 + s as i64 * STEP_US;
            let mut f = audio_frame(&mut mic, s);
            let error = if now >= T0 + 1_600_000 { 1_000 } else { 0 };
            f.ntp_time = Some(at(now + error));
            sim.frame(audio, f);
            if s % 5 == 0 {
                let f = video_frame(&mut red, s / 5);
                sim.frame(video, f);
            }
            sim.tick(now);
        }
        sim.finish(T0 + 5_000_000);
        let start = sim.rec.start_pts().expect("started");
        assert_eq!(time_of(start), T0);
        let pics = pictures(&sim.actions);
        assert_eq!(pics.first().map(|(pts, _)| *pts), Some(start));
        for (pts, p) in pics.iter().take(10) {
            let at_ms = (time_of(*pts) - T0) / 1000;
            assert!(
                near(mean(p, W / 2, H / 2, 16, 16), yuv(RED)),
                "alice at {at_ms} ms"
            );
        }
        assert_eq!(pics.len(), 51, "T0 to the end (5 s), both included");
        assert_eq!(sim.rec.mix_stats.ticks_skipped, 0);
        assert_eq!(sim.rec.mix_stats.output_frames_dropped, 0);
        // Waited what the video's hold needed past the latency, and the slack.
        let waited = sim.rec.mix_stats.hold_wait_us;
        assert!(
            (700_000..=800_000).contains(&waited),
            "hold wait {waited} µs"
        );
    }

    #[test]
    fn only_the_current_layouts_images_are_held() {
        let mark = |url: &str| Watermark::Image {
            url: url.to_owned(),
            rect: ApiRect {
                top: 0,
                left: 0,
                width: 16,
                height: 16,
            },
        };
        let layout = |urls: &[&str]| MixLayout {
            watermarks: urls.iter().map(|u| mark(u)).collect(),
            ..MixLayout::default()
        };
        let picture = || Arc::new(Picture::filled(16, 16, yuv(MAGENTA)));
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::LastFrame,
            layout(&["http://a/1.png", "http://a/2.png"]),
        );
        sim.rec.add_images(Images::from([
            ("http://a/1.png".to_owned(), picture()),
            ("http://a/2.png".to_owned(), picture()),
            ("http://elsewhere/3.png".to_owned(), picture()),
        ]));
        assert_eq!(
            sim.rec.image_count(),
            2,
            "an image no layout uses is not kept"
        );
        // A Modify that changes the images: the old ones go.
        for n in 0..50 {
            let url = format!("http://a/{n}-new.png");
            sim.rec.set_layout(layout(&[&url]));
            sim.rec.add_images(Images::from([(url.clone(), picture())]));
            assert_eq!(sim.rec.image_count(), 1, "after Modify {n}");
        }
    }

    #[test]
    fn video_pts_step_exactly_at_15_fps_whatever_the_start() {
        // 1/15 s is 66666.67 µs but exactly 6000 ticks at 90 kHz.
        for offset_us in [0, 1, 7, 50, 91, 99, 123_456] {
            let mut sim = Sim::with(
                true,
                StreamType::AudioVideo,
                FillType::LastFrame,
                MixLayout::default(),
                15,
            );
            let tags = sim.offer(&[("alice", TrackKind::MainVideo)]);
            let tag = tags[&("alice".to_owned(), TrackKind::MainVideo)];
            let mut cam = camera(RED);
            for n in 0..30 {
                let mut f = video_frame(&mut cam, n);
                f.received_wall = at(T0 + offset_us + n as i64 * FRAME_US);
                sim.frame(tag, f);
            }
            sim.finish(T0 + 3_000_000);
            let pts = video_pts(&sim.actions);
            assert!(
                pts.len() >= 44,
                "offset {offset_us} µs: {} frames",
                pts.len()
            );
            assert_eq!(Some(pts[0]), sim.rec.start_pts());
            // The first frame is at the first media or at most 100 µs later.
            let lag = time_of(pts[0]) - (T0 + offset_us);
            assert!((0..100).contains(&lag), "offset {offset_us} µs: {lag}");
            for (k, p) in pts.iter().enumerate() {
                assert_eq!(*p, pts[0] + k as u64 * 6_000, "offset {offset_us} µs");
            }
        }
    }

    #[test]
    fn audio_only_streams_mix_audio_without_a_video_pid() {
        audio_only(false);
        // An encoder handed in anyway is not used.
        audio_only(true);
    }

    fn audio_only(encoder: bool) {
        let mut sim = Sim::with(
            encoder,
            StreamType::AudioOnly,
            FillType::LastFrame,
            MixLayout::default(),
            FPS,
        );
        let offered: Vec<(&str, TrackKind)> =
            [&both("alice")[..], &[("bob", TrackKind::MainVideo)]].concat();
        let tags = sim.offer(&offered);
        assert_eq!(
            tags.keys().cloned().collect::<Vec<_>>(),
            vec![("alice".to_owned(), TrackKind::Audio)]
        );
        let mut pubs = [Publisher::new(&tags, "alice", None, true)];
        run(&mut sim, &mut pubs, 0..step(5_000_000), |_, _| {});
        sim.finish(T0 + 5_000_000);
        let segs = segments(&sim.actions);
        assert!(segs.len() >= 2, "{} segments", segs.len());
        for (key, ts) in &segs {
            assert!(key.starts_with(&format!("{FOLDER}{STEM}_")), "{key}");
            let video_packets = ts
                .chunks(188)
                .filter(|p| (u16::from(p[1] & 0x1f) << 8 | u16::from(p[2])) == PID_VIDEO)
                .count();
            assert_eq!(video_packets, 0, "{key}: no video PID");
        }
        let pes = all_pes(&sim.actions);
        assert!(pes.iter().all(|(pid, _, _)| *pid == PID_AUDIO));
        // AAC frames (1024 samples at 48 kHz) up to the end of the last
        // tick (5.1 s), and the encoder's flush.
        assert!((239..=242).contains(&pes.len()), "{} AAC frames", pes.len());
        let files = sliced(&sim.actions);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].track_type, TrackType::Audio);
        assert_eq!(files[0].user_id, "");
        for (key, _, file) in playlists(&sim.actions) {
            assert_eq!(key, format!("{FOLDER}{STEM}.m3u8"));
            assert_eq!(file.track_type, TrackType::Audio);
        }
        assert!(sim.rec.mix_stats.ticks > 0);
    }

    #[test]
    fn corrupt_video_is_counted_asks_for_a_key_frame_and_recording_goes_on() {
        let mut sim = Sim::new(
            StreamType::AudioVideo,
            FillType::LastFrame,
            MixLayout::default(),
        );
        let tags = sim.offer(&[("alice", TrackKind::MainVideo)]);
        let tag = tags[&("alice".to_owned(), TrackKind::MainVideo)];
        let (mut red, mut green) = (camera(RED), camera(GREEN));
        for s in 0..step(6_000_000) {
            let now = T0 + s as i64 * STEP_US;
            if s % 5 == 0 {
                let n = s / 5;
                // Red until 2.5 s, then damaged frames, then from 3 s a
                // new green stream (starting with a key frame).
                let f = match n {
                    0..25 => video_frame(&mut red, n),
                    25..30 => {
                        let mut f = video_frame(&mut red, n);
                        let mut data = f.data.to_vec();
                        for b in data.iter_mut().skip(8) {
                            *b ^= 0x5a;
                        }
                        f.data = Arc::from(data);
                        f
                    }
                    _ => video_frame(&mut green, n),
                };
                sim.frame(tag, f);
            }
            sim.tick(now);
        }
        sim.finish(T0 + 6_000_000);
        assert!(sim.rec.mix_stats.decode_errors >= 1);
        assert!(sim.actions.contains(&Action::RequestKeyframe { tag }));
        let pics = pictures(&sim.actions);
        assert_eq!(pics.len(), 61);
        for (pts, p) in &pics {
            let t = time_of(*pts) - T0;
            let want = if t < 3_000_000 { RED } else { GREEN };
            assert_at(p, LEFT, want, &format!("{} ms", t / 1000));
        }
        assert_eq!(sim.rec.stream_errors(), 0);
    }
}
