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
//! media. Output frame `k` stands for time `T_k = start + k/fps`; it is
//! rendered once the wall clock passes `T_k + latency`, so frames that
//! arrive late (network, the timeline's wait for sender reports) still
//! make their tick. For each tick every input's frames up to `T_k` are
//! decoded and its latest picture is shown: users stay in sync with each
//! other and with the mixed audio, which the mixer cuts at the same `T_k`.
//! A recorder that falls more than [`MAX_BEHIND_US`] behind skips video
//! ticks (counted) rather than drifting further; audio stays continuous.
//!
//! Pictures: users take places in the layout in room join order. A user
//! with no subscribed video holds a place (unless PureAudioDisableLayout)
//! and shows the placeholder image when PlaceHolderMode is on. When a
//! user's video stops (no frame for [`STALE_US`]) FillType 0 keeps the last
//! picture and 1 paints the tile black.
//!
//! Layers, back to front: background colour, background image, then per
//! tile its sub-background image (or black bars for letterbox), the video
//! (or placeholder), and last the watermarks in list order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use kiroku_gpu::{Compositor, EncoderSettings, Layer, Picture, Rect, Scene, VideoEncoder, Yuv};

use crate::media::aac::AacFrame;
use crate::media::h264_codec::PictureDecoder;
use crate::mix::audio::AudioMixer;
use crate::mix::layout::{self, Participant, TileContent};
use crate::mix::overlay;
use crate::record::naming::{Media, Naming, TrackType};
use crate::record::segmenter::SegmenterConfig;
use crate::record::single::{Action, FileInfo, Stats};
use crate::record::stream::{HlsStream, Output, BASE_90K};
use crate::record::subscribe::{self, media_of, Admission, Current, OfferedTrack};
use crate::record::timeline::{TrackClock, UserClock};
use crate::room::{Codec, MediaFrame, TrackKind};
use crate::task::params::{
    FillType, MediaId, MediaSelection, MixLayout, MixTranscode, RenderMode, StreamType,
    Subscription, Watermark,
};

/// A video with no new frame for this long has stopped (FillType applies).
pub const STALE_US: i64 = 2_000_000;
/// Further behind real time than this, video ticks are skipped.
pub const MAX_BEHIND_US: i64 = 1_000_000;
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
}

/// Decoded images by URL (background, placeholder, sub-backgrounds,
/// watermarks), fetched by the task runner.
pub type Images = HashMap<String, Arc<Picture>>;

/// Counters the worker turns into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MixStats {
    pub ticks: u64,
    pub ticks_skipped: u64,
    pub decode_errors: u64,
    pub frames_dropped: u64,
    pub encode_errors: u64,
    pub compose_errors: u64,
}

struct Sub {
    user_id: String,
    kind: TrackKind,
    session_id: String,
    clock: TrackClock,
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

/// The watermarks of the current layout, ready to paint.
enum Mark {
    Image { url: String, rect: Rect },
    Text { picture: Arc<Picture>, rect: Rect },
    Timestamp(overlay::TimestampRenderer),
}

pub struct MixedRecorder {
    settings: MixedSettings,
    subscription: Subscription,
    layout: MixLayout,
    marks: Vec<Mark>,
    images: Images,
    admission: Admission,
    subs: HashMap<u64, Sub>,
    users: HashMap<String, UserClock>,
    /// Users with a subscribed track, in room join order.
    participants: Vec<String>,
    videos: HashMap<(String, Media), VideoInput>,
    /// Created at the first media, so that the mixed audio starts with the
    /// video; until then (and for video-only tasks) `None`.
    mixer: Option<AudioMixer>,
    has_audio: bool,
    /// PTS of the mixer's timeline start (the first media) less BASE_90K.
    audio_offset_90k: u64,
    encoder: Option<Box<dyn VideoEncoder>>,
    compositor: Box<dyn Compositor>,
    stream: HlsStream,
    canvas: Vec<Picture>,
    scene: Vec<Scene>,
    start_us: Option<i64>,
    next_tick: u64,
    force_keyframe: bool,
    next_tag: u64,
    media_started: bool,
    placed: Vec<(i64, MediaFrame)>,
    outputs: Vec<Output>,
    aac: Vec<AacFrame>,
    pub stats: Stats,
    pub mix_stats: MixStats,
}

/// `[0, n)` rounded down to even.
fn even(v: u32) -> u32 {
    v & !1
}

/// A caller's rectangle made even and clipped to the canvas.
fn canvas_rect(left: u32, top: u32, w: u32, h: u32, cw: u32, ch: u32) -> Rect {
    let x = even(left.min(cw));
    let y = even(top.min(ch));
    Rect::new(x, y, even(w.min(cw - x)), even(h.min(ch - y)))
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
            images: Images::new(),
            admission: Admission::default(),
            subs: HashMap::new(),
            users: HashMap::new(),
            participants: Vec::new(),
            videos: HashMap::new(),
            mixer: None,
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
            next_tick: 0,
            force_keyframe: false,
            next_tag: 1,
            media_started: false,
            placed: Vec::new(),
            outputs: Vec::new(),
            aac: Vec::new(),
            stats: Stats::default(),
            mix_stats: MixStats::default(),
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

    /// ModifyCloudRecording: the new layout shows from the next output frame.
    pub fn set_layout(&mut self, layout: MixLayout) {
        let (cw, ch) = self.canvas_size();
        self.marks = layout
            .watermarks
            .iter()
            .map(|w| match w {
                Watermark::Image { url, rect } => Mark::Image {
                    url: url.clone(),
                    rect: canvas_rect(rect.left, rect.top, rect.width, rect.height, cw, ch),
                },
                Watermark::Text {
                    rect,
                    chars,
                    font_size,
                    font_color,
                    background,
                    ..
                } => {
                    let rect = canvas_rect(rect.left, rect.top, rect.width, rect.height, cw, ch);
                    let picture = overlay::render_text(
                        chars,
                        *font_size,
                        *font_color,
                        *background,
                        rect.w,
                        rect.h,
                    );
                    Mark::Text {
                        picture: Arc::new(picture),
                        rect,
                    }
                }
                Watermark::Timestamp {
                    pos,
                    utc_offset_hours,
                    ..
                } => Mark::Timestamp(overlay::TimestampRenderer::new(
                    *pos,
                    *utc_offset_hours,
                    cw,
                    ch,
                )),
            })
            .collect();
        self.layout = layout;
    }

    /// Images fetched for the layout (added to those already known).
    pub fn add_images(&mut self, images: Images) {
        self.images.extend(images);
    }

    fn canvas_size(&self) -> (u32, u32) {
        let v = self.settings.transcode.video;
        (v.width, v.height)
    }

    fn wants(&self, user_id: &str, kind: TrackKind) -> bool {
        let st = &self.settings;
        subscribe::wants(st.stream_type, st.media, &self.subscription, user_id, kind)
    }

    /// Brings the subscriptions in line with what the room offers.
    pub fn reconcile(&mut self, offered: &[OfferedTrack]) -> Vec<Action> {
        let mut actions = Vec::new();
        let wanted: Vec<&OfferedTrack> = offered
            .iter()
            .filter(|t| self.wants(&t.user_id, t.kind))
            .collect();
        let (admitted, refused) = self.admission.admit(&wanted);
        for (user_id, media) in refused {
            actions.push(Action::StreamRefused { user_id, media });
        }
        let current = self.subs.iter().map(|(tag, s)| Current {
            tag: *tag,
            user_id: &s.user_id,
            kind: s.kind,
            session_id: &s.session_id,
        });
        let (ended, started) = subscribe::diff(current, &admitted);
        for tag in ended {
            self.end_sub(tag, &mut actions);
        }
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
        self.participants = order;
        actions
    }

    fn end_sub(&mut self, tag: u64, actions: &mut Vec<Action>) {
        let Some(mut sub) = self.subs.remove(&tag) else {
            return;
        };
        actions.push(Action::Unsubscribe { tag });
        let user = self.users.entry(sub.user_id.clone()).or_default();
        sub.clock.flush(user, &mut self.placed);
        self.route_placed(&sub.user_id, sub.kind, tag);
        if sub.kind.is_video() {
            if let Some(v) = self
                .videos
                .get_mut(&(sub.user_id.clone(), media_of(sub.kind)))
            {
                if v.tag == Some(tag) {
                    v.tag = None;
                }
            }
        } else if let Some(m) = self.mixer.as_mut() {
            m.end_input(tag);
        }
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
        let (user_id, kind) = (sub.user_id.clone(), sub.kind);
        self.route_placed(&user_id, kind, tag);
        actions
    }

    /// Placed frames go to their video queue or into the audio mixer.
    fn route_placed(&mut self, user_id: &str, kind: TrackKind, tag: u64) {
        if self.placed.is_empty() {
            return;
        }
        if self.start_us.is_none() {
            if let Some(start) = self.placed.first().map(|(t, _)| *t) {
                self.start(start);
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
        }
        self.placed.clear();
    }

    /// The output starts at the first media, at server time `start`.
    fn start(&mut self, start: i64) {
        self.start_us = Some(start);
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
    }

    fn tick_time(&self, k: u64) -> Option<i64> {
        let fps = i64::from(self.settings.transcode.video.fps.max(1));
        self.start_us.map(|s| s + (k as i64) * 1_000_000 / fps)
    }

    /// When the next output frame is due (wall clock, unix µs).
    pub fn next_due_us(&self) -> Option<i64> {
        self.tick_time(self.next_tick)
            .map(|t| t + self.settings.latency_us)
    }

    /// Renders every output frame that is due at wall-clock time `now_us`.
    pub fn tick(&mut self, now_us: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.render_until(now_us - self.settings.latency_us, true, &mut actions);
        actions
    }

    /// Renders the ticks up to `until_us`; `catch_up` skips video ticks
    /// when further behind than [`MAX_BEHIND_US`] (live, not at the end).
    fn render_until(&mut self, until_us: i64, catch_up: bool, actions: &mut Vec<Action>) {
        while let Some(t) = self.tick_time(self.next_tick) {
            if t > until_us {
                break;
            }
            if catch_up && until_us - t > MAX_BEHIND_US {
                // Catch up: skip to the newest due tick.
                let fps = i64::from(self.settings.transcode.video.fps.max(1));
                let start = self.start_us.unwrap_or(t);
                let newest = ((until_us - start) * fps / 1_000_000).max(0) as u64;
                self.mix_stats.ticks_skipped += newest.saturating_sub(self.next_tick);
                self.next_tick = newest;
                continue;
            }
            self.render_tick(t, actions);
            self.next_tick += 1;
        }
    }

    fn render_tick(&mut self, t: i64, actions: &mut Vec<Action>) {
        let frame_us = 1_000_000 / i64::from(self.settings.transcode.video.fps.max(1));
        if self.encoder.is_some() {
            self.decode_until(t, actions);
            self.build_scene(t);
            self.encode_tick(t);
        }
        if let Some(m) = self.mixer.as_mut() {
            if let Err(e) = m.advance(t + frame_us, &mut self.aac) {
                tracing::warn!(error = %e, "mixed audio could not be encoded");
                self.mix_stats.encode_errors += 1;
            }
        }
        self.write_audio();
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
    fn video_picture(&self, user_id: &str, media: MediaId, t: i64) -> (Option<Arc<Picture>>, bool) {
        let media = match media {
            MediaId::Main => Media::Main,
            MediaId::Aux => Media::Aux,
        };
        let Some(v) = self.videos.get(&(user_id.to_owned(), media)) else {
            return (None, false);
        };
        let Some(p) = v.decoder.latest() else {
            return (None, false);
        };
        let stale = v.tag.is_none() || v.shown_at.is_none_or(|s| t - s > STALE_US);
        match (stale, self.settings.fill) {
            (true, FillType::Black) => (None, true),
            _ => (Some(p.clone()), false),
        }
    }

    fn build_scene(&mut self, t: i64) {
        let (cw, ch) = self.canvas_size();
        let mut layers = std::mem::take(&mut self.scene[0].layers);
        layers.clear();
        let bg = overlay::rgb_to_yuv(self.layout.background_color);
        layers.push(Layer::Fill {
            dst: Rect::new(0, 0, cw, ch),
            color: bg,
        });
        let full = Rect::new(0, 0, cw, ch);
        if let Some(img) = self.image(self.layout.background_image.as_deref()) {
            push_fitted(
                &mut layers,
                img,
                full,
                self.layout.background_render_mode,
                255,
            );
        }
        let participants: Vec<Participant<'_>> = self
            .participants
            .iter()
            .map(|u| Participant {
                user_id: u,
                main_video: self.has_video(u, TrackKind::MainVideo),
                aux_video: self.has_video(u, TrackKind::AuxVideo),
            })
            .collect();
        let tiles = layout::place(cw, ch, &self.layout, &participants);
        for tile in &tiles {
            if tile.rect.w == 0 || tile.rect.h == 0 {
                continue;
            }
            let sub_bg = self.image(tile.sub_background_image.as_deref());
            if let Some(img) = sub_bg.clone() {
                push_fitted(&mut layers, img, tile.rect, RenderMode::Crop, tile.opacity);
            }
            let (picture, black) = match &tile.content {
                TileContent::Video { user_id, media } => self.video_picture(user_id, *media, t),
                TileContent::Empty { .. } => (None, false),
            };
            match picture {
                Some(p) => {
                    if tile.render_mode == RenderMode::Letterbox && sub_bg.is_none() {
                        layers.push(Layer::Fill {
                            dst: tile.rect,
                            color: Yuv::BLACK,
                        });
                    }
                    push_fitted(&mut layers, p, tile.rect, tile.render_mode, tile.opacity);
                }
                None if black => layers.push(Layer::Fill {
                    dst: tile.rect,
                    color: Yuv::BLACK,
                }),
                None => {
                    let placeholder = if self.layout.placeholder {
                        self.image(self.layout.placeholder_image.as_deref())
                    } else {
                        None
                    };
                    if let Some(img) = placeholder {
                        push_fitted(&mut layers, img, tile.rect, RenderMode::Crop, tile.opacity);
                    }
                }
            }
        }
        let wall_ms = t / 1000;
        for i in 0..self.marks.len() {
            match &mut self.marks[i] {
                Mark::Image { url, rect } => {
                    let rect = *rect;
                    if let Some(img) = self.images.get(url.as_str()).cloned() {
                        push_fitted(&mut layers, img, rect, RenderMode::Stretch, 255);
                    }
                }
                Mark::Text { picture, rect } => push_fitted(
                    &mut layers,
                    picture.clone(),
                    *rect,
                    RenderMode::Stretch,
                    255,
                ),
                Mark::Timestamp(r) => layers.push(r.layer(wall_ms)),
            }
        }
        self.scene[0].layers = layers;
    }

    fn has_video(&self, user_id: &str, kind: TrackKind) -> bool {
        self.subs
            .values()
            .any(|s| s.user_id == user_id && s.kind == kind)
    }

    fn image(&self, url: Option<&str>) -> Option<Arc<Picture>> {
        url.and_then(|u| self.images.get(u)).cloned()
    }

    fn encode_tick(&mut self, t: i64) {
        if let Err(e) = self.compositor.compose(&self.scene, &mut self.canvas) {
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
        match enc.encode(&self.canvas[0], force) {
            Ok(Some(f)) => self
                .stream
                .push_video(t, f.keyframe, &f.data, &mut self.outputs),
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
        // Place what the clocks still hold before the subscriptions go.
        for tag in tags {
            self.end_sub(tag, &mut actions);
        }
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

    /// PTS of the first output frame (for tests and logs).
    pub fn start_pts(&self) -> Option<u64> {
        self.start_us.map(|s| {
            ((s - self.settings.epoch_us) as i128 * 9 / 100 + i128::from(BASE_90K)).max(0) as u64
        })
    }
}

/// Adds `picture` fitted into `tile` by `mode`.
fn push_fitted(
    layers: &mut Vec<Layer>,
    picture: Arc<Picture>,
    tile: Rect,
    mode: RenderMode,
    opacity: u8,
) {
    let f = layout::fit(picture.width, picture.height, tile, mode);
    if f.is_empty() || opacity == 0 {
        return;
    }
    layers.push(Layer::Picture {
        source: picture,
        crop: f.crop,
        dst: f.dst,
        opacity,
    });
}
