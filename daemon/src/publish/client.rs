//! `kiroku publish`: a WHIP client on str0m that publishes synthetic media.
//!
//! Each user gets a main session (audio + video) and optionally an aux
//! session (screen-share video), each its own `Rtc` and UDP socket (the
//! server routes by source address, so sessions must not share one).
//! One encoder per stream kind feeds every session: with `--count N` the
//! picture and tone are encoded once and sent N times, which keeps load
//! tests cheap, and with `--rooms FIRST-LAST` the same N users publish
//! into every room of the range (one encoder still: a density benchmark's
//! load generator must not cost more than the box it measures). Media
//! runs on a plain thread at real time.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use super::source::{AudioConfig, AudioSource, SourceError, VideoConfig, VideoSource};
use crate::auth::usersig;

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Base URL of the daemon, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub sdk_app_id: u32,
    /// The rooms to publish into (the same users in each).
    pub rooms: Vec<String>,
    pub string_room: bool,
    /// The user id, or the prefix `<user>_<n>` with `count > 1`.
    pub user: String,
    pub count: usize,
    pub aux: bool,
    pub duration: Duration,
    /// A fixed UserSig, or a key to issue one per user.
    pub user_sig: Option<String>,
    pub user_sig_key: Option<String>,
    pub video: Option<VideoConfig>,
    pub audio: Option<AudioConfig>,
    /// Local address to bind the UDP sockets to.
    pub bind: IpAddr,
    /// Skip the WHIP DELETE at the end (simulates a publisher that vanishes).
    pub no_delete: bool,
    /// Negotiate audio and video but send no media (a publisher who is in
    /// the room and silent).
    pub mute: bool,
    /// Publish again (backoff 0.5 s doubling to 5 s) when a session fails,
    /// so that a publisher survives its box dying (docs/fleet.md).
    pub reconnect: bool,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("media source: {0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Whip(String),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("WebRTC: {0}")]
    Rtc(#[from] str0m::RtcError),
}

/// What the run achieved.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PublishReport {
    pub sessions: usize,
    pub connected: usize,
    pub video_frames_encoded: u64,
    pub audio_frames_encoded: u64,
    pub video_frames_sent: u64,
    pub audio_frames_sent: u64,
    pub keyframe_requests: u64,
    pub bytes_sent: u64,
    /// Datagrams the publisher's own sockets refused (a full send buffer:
    /// lost before they left this process).
    pub send_errors: u64,
    /// Sessions opened again after one failed (`--reconnect`).
    pub reconnects: u64,
    pub seconds: f64,
    /// Wall-clock time (Unix ms) of media time 0: sync marks and frame `n`
    /// were captured at this time plus their media time.
    pub media_start_unix_ms: f64,
}

struct Session {
    room: String,
    user: String,
    aux: bool,
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    location: String,
    audio: Option<Mid>,
    video: Option<Mid>,
    pts: Option<(Option<Pt>, Option<Pt>)>,
    connected: bool,
    /// Whether the session has had a key frame: pictures before its first
    /// one cannot be decoded, so none are sent (nor counted as sent).
    video_started: bool,
    dead: bool,
    deadline: Instant,
    /// `--reconnect`: when to try again after a failed reopen, and the
    /// wait after the next failure.
    retry_at: Instant,
    backoff: Duration,
    /// The last datagram from the box: a connected box sends RTCP and STUN
    /// answers every second or two, so a long silence means it is gone.
    last_rx: Instant,
}

/// Silence after which a connected session counts as failed. str0m's ICE
/// takes far longer to notice a peer that vanished (a killed box).
const SILENCE: Duration = Duration::from_secs(5);

/// Opens a session again for `(room, user, aux)` (`--reconnect`).
type Reopen<'a> = &'a dyn Fn(&str, &str, bool) -> Result<Session, PublishError>;

/// Sessions opened at once while starting (WHIP POSTs in flight).
const OPEN_CONCURRENCY: usize = 16;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// `FIRST-LAST` → the integer room ids in between, both included.
pub fn room_range(range: &str) -> Result<Vec<String>, String> {
    let (first, last) = range
        .split_once('-')
        .ok_or_else(|| format!("{range:?} is not FIRST-LAST"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("{v:?} is not a room number (1..=4294967294)"))
    };
    let (first, last) = (parse(first)?, parse(last)?);
    if first == 0 || last < first {
        return Err(format!(
            "{range:?}: FIRST must be at least 1 and at most LAST"
        ));
    }
    if last - first >= 1000 {
        return Err(format!("{range:?} spans more than 1000 rooms"));
    }
    Ok((first..=last).map(|r| r.to_string()).collect())
}

fn user_ids(o: &PublishOptions) -> Vec<String> {
    if o.count <= 1 {
        vec![o.user.clone()]
    } else {
        (1..=o.count).map(|i| format!("{}_{i}", o.user)).collect()
    }
}

fn user_sig(o: &PublishOptions, user: &str) -> Option<String> {
    if let Some(s) = &o.user_sig {
        return Some(s.clone());
    }
    let key = o.user_sig_key.as_ref()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Some(usersig::generate(key, o.sdk_app_id, user, now, 86_400))
}

/// Opens one WHIP session (offer → POST → answer).
async fn open(
    http: &reqwest::Client,
    o: &PublishOptions,
    room: &str,
    user: &str,
    aux: bool,
) -> Result<Session, PublishError> {
    let socket = UdpSocket::bind(SocketAddr::new(o.bind, 0))?;
    socket.set_nonblocking(true)?;
    let local = socket.local_addr()?;
    let now = Instant::now();
    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(now);
    rtc.add_local_candidate(
        Candidate::host(local, "udp").map_err(|e| PublishError::Whip(e.to_string()))?,
    );
    let mut api = rtc.sdp_api();
    let audio = (!aux && o.audio.is_some())
        .then(|| api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None));
    let video = o
        .video
        .is_some()
        .then(|| api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
    let (offer, pending) = api
        .apply()
        .ok_or_else(|| PublishError::Whip("nothing to publish: enable audio or video".into()))?;
    let mut url = format!(
        "{}/whip/{}/{}/{}",
        o.url.trim_end_matches('/'),
        o.sdk_app_id,
        room,
        user
    );
    if aux {
        url.push_str("/aux");
    }
    if o.string_room {
        url.push_str("?roomType=string");
    }
    let mut req = http
        .post(&url)
        .header("Content-Type", "application/sdp")
        .body(offer.to_sdp_string());
    if let Some(sig) = user_sig(o, user) {
        req = req.header("Authorization", format!("Bearer {sig}"));
    }
    let resp = req
        .send()
        .await
        .map_err(|e| PublishError::Whip(format!("POST {url}: {e}")))?;
    let status = resp.status();
    let answered_by = resp.url().clone();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp
        .text()
        .await
        .map_err(|e| PublishError::Whip(format!("POST {url}: {e}")))?;
    if status.as_u16() != 201 {
        return Err(PublishError::Whip(format!(
            "POST {url}: {status}: {}",
            body.trim()
        )));
    }
    let location =
        location.ok_or_else(|| PublishError::Whip(format!("POST {url}: 201 without Location")))?;
    // Relative to the box that answered: a fleet's 307 may have moved the
    // offer to the room's owner (reqwest follows it, body and all).
    let location = answered_by
        .join(&location)
        .map_err(|e| PublishError::Whip(format!("POST {url}: bad Location {location:?}: {e}")))?
        .to_string();
    let answer = SdpAnswer::from_sdp_string(&body)
        .map_err(|e| PublishError::Whip(format!("bad answer: {e}")))?;
    rtc.sdp_api().accept_answer(pending, answer)?;
    Ok(Session {
        room: room.to_owned(),
        user: user.to_owned(),
        aux,
        rtc,
        socket,
        local,
        location,
        audio,
        video,
        pts: None,
        connected: false,
        video_started: false,
        dead: false,
        deadline: now,
        retry_at: now,
        backoff: FIRST_BACKOFF,
        last_rx: now,
    })
}

/// Publishes until `duration` passes or `stop` is set.
pub async fn run(o: PublishOptions, stop: Arc<AtomicBool>) -> Result<PublishReport, PublishError> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| PublishError::Whip(e.to_string()))?;
    // Validate the media configuration before opening any session.
    let main_video = o.video.clone().map(VideoSource::new).transpose()?;
    let aux_video = match (&o.video, o.aux) {
        (Some(v), true) => Some(VideoSource::new(VideoConfig {
            label: format!("{} screen", v.label),
            pattern: super::source::Pattern::Bars,
            ..v.clone()
        })?),
        _ => None,
    };
    let audio = o.audio.clone().map(AudioSource::new).transpose()?;
    let mut wanted = Vec::new();
    for room in &o.rooms {
        for user in user_ids(&o) {
            wanted.push((room.clone(), user.clone(), false));
            if o.aux && o.video.is_some() {
                wanted.push((room.clone(), user, true));
            }
        }
    }
    // Many rooms: open a few sessions at a time (each a WHIP round trip)
    // so that the first are not left waiting for ICE while the last open.
    let opened: Vec<Result<Session, PublishError>> = {
        use futures_util::stream::{self, StreamExt};
        stream::iter(wanted.iter())
            .map(|(room, user, aux)| open(&http, &o, room, user, *aux))
            .buffered(OPEN_CONCURRENCY)
            .collect()
            .await
    };
    let mut sessions = Vec::with_capacity(opened.len());
    let mut failure = None;
    for s in opened {
        match s {
            Ok(s) => sessions.push(s),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    if let Some(e) = failure {
        // Leave nothing behind on the box: end the sessions that opened.
        for s in &sessions {
            let _ = http.delete(&s.location).send().await;
        }
        return Err(e);
    }
    let duration = o.duration;
    let (main_video, aux_video, audio) = if o.mute {
        (None, None, None)
    } else {
        (main_video, aux_video, audio)
    };
    let runtime = tokio::runtime::Handle::current();
    let (http2, o2) = (http.clone(), o.clone());
    let report = tokio::task::spawn_blocking(move || {
        let mut sessions = sessions;
        // On this blocking thread the runtime may be entered to reopen.
        let reopen = |room: &str, user: &str, aux: bool| {
            runtime.block_on(open(&http2, &o2, room, user, aux))
        };
        let reopen: Option<Reopen<'_>> = o2.reconnect.then_some(&reopen);
        let r = media_loop(
            &mut sessions,
            main_video,
            aux_video,
            audio,
            duration,
            &stop,
            reopen,
        );
        (sessions, r)
    })
    .await
    .map_err(|e| PublishError::Whip(e.to_string()))?;
    let (sessions, report) = report;
    if !o.no_delete {
        for s in sessions.iter().filter(|s| !s.dead) {
            let _ = http.delete(&s.location).send().await;
        }
    }
    report
}

fn media_loop(
    sessions: &mut [Session],
    mut main_video: Option<VideoSource>,
    mut aux_video: Option<VideoSource>,
    mut audio: Option<AudioSource>,
    duration: Duration,
    stop: &AtomicBool,
    reopen: Option<Reopen<'_>>,
) -> Result<PublishReport, PublishError> {
    let mut report = PublishReport {
        sessions: sessions.len(),
        ..Default::default()
    };
    let start = Instant::now();
    report.media_start_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    let fps = main_video.as_ref().map_or(15, |v| v.config().fps.max(1));
    let mut video_n: u64 = 0;
    let mut audio_n: u64 = 0;
    let mut buf = vec![0u8; 2048];
    let (mut want_main_key, mut want_aux_key) = (false, false);
    let video_period = Duration::from_micros(1_000_000 / u64::from(fps));
    let (mut main_spread, mut aux_spread, mut audio_spread) =
        (None::<Spread>, None::<Spread>, None::<Spread>);
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if elapsed >= duration || stop.load(Ordering::Relaxed) {
            break;
        }
        // `--reconnect`: a failed session publishes again, with backoff.
        if let Some(reopen) = reopen {
            for s in sessions.iter_mut().filter(|s| s.dead && now >= s.retry_at) {
                match reopen(&s.room, &s.user, s.aux) {
                    Ok(fresh) => {
                        tracing::info!(user = %s.user, aux = s.aux, location = %fresh.location, "published again");
                        *s = fresh;
                        report.reconnects += 1;
                        if s.aux {
                            want_aux_key = true;
                        } else {
                            want_main_key = true;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(user = %s.user, error = %e, retry_in_ms = s.backoff.as_millis() as u64, "publishing again failed");
                        s.retry_at = Instant::now() + s.backoff;
                        s.backoff = (s.backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
        }
        // Network in.
        for s in sessions.iter_mut().filter(|s| !s.dead) {
            loop {
                match s.socket.recv_from(&mut buf) {
                    Ok((n, source)) => {
                        s.last_rx = now;
                        let Ok(contents) = buf[..n].try_into() else {
                            continue;
                        };
                        let input = Input::Receive(
                            now,
                            Receive {
                                proto: Protocol::Udp,
                                source,
                                destination: s.local,
                                contents,
                            },
                        );
                        if s.rtc.handle_input(input).is_err() {
                            s.dead = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
            if !s.dead && now >= s.deadline && s.rtc.handle_input(Input::Timeout(now)).is_err() {
                s.dead = true;
            }
            if !s.dead && s.connected && now.saturating_duration_since(s.last_rx) > SILENCE {
                tracing::warn!(user = %s.user, aux = s.aux, "nothing from the box for 5 s: the session has failed");
                s.dead = true;
            }
        }
        // Media out, at real time, only to connected sessions.
        let video_due = Duration::from_micros(video_n * 1_000_000 / u64::from(fps));
        if elapsed >= video_due {
            let media_time = video_due;
            if let Some(src) = main_video.as_mut() {
                if std::mem::take(&mut want_main_key) {
                    src.force_keyframe();
                }
                let f = src.next_frame(media_time)?;
                report.video_frames_encoded += 1;
                let frame = Spread::new(
                    (false, true),
                    f.keyframe,
                    MediaTime::from_90khz(f.pts_90khz),
                    f.data.into(),
                    now,
                    video_period,
                );
                if let Some(mut old) = main_spread.replace(frame) {
                    report.video_frames_sent += old.advance(sessions, now, true);
                }
            }
            if let Some(src) = aux_video.as_mut() {
                if std::mem::take(&mut want_aux_key) {
                    src.force_keyframe();
                }
                let f = src.next_frame(media_time)?;
                let frame = Spread::new(
                    (true, true),
                    f.keyframe,
                    MediaTime::from_90khz(f.pts_90khz),
                    f.data.into(),
                    now,
                    video_period,
                );
                if let Some(mut old) = aux_spread.replace(frame) {
                    report.video_frames_sent += old.advance(sessions, now, true);
                }
            }
            video_n += 1;
        }
        let audio_due = Duration::from_millis(audio_n * 20);
        if elapsed >= audio_due {
            if let Some(src) = audio.as_mut() {
                let f = src.next_frame()?;
                report.audio_frames_encoded += 1;
                let t = MediaTime::new(f.pts_48khz, Frequency::FORTY_EIGHT_KHZ);
                let frame = Spread::new((false, false), false, t, f.data.into(), now, AUDIO_PERIOD);
                if let Some(mut old) = audio_spread.replace(frame) {
                    report.audio_frames_sent += old.advance(sessions, now, true);
                }
            }
            audio_n += 1;
        }
        // Each session's turn at the frames in hand.
        if let Some(f) = main_spread.as_mut() {
            report.video_frames_sent += f.advance(sessions, now, false);
        }
        if let Some(f) = aux_spread.as_mut() {
            report.video_frames_sent += f.advance(sessions, now, false);
        }
        if let Some(f) = audio_spread.as_mut() {
            report.audio_frames_sent += f.advance(sessions, now, false);
        }
        // Drain every session.
        let mut next = start + Duration::from_micros(video_n * 1_000_000 / u64::from(fps));
        next = next.min(start + Duration::from_millis(audio_n * 20));
        // Turns come in the loop's 5 ms steps (below), not on their own
        // wake-ups: 200 sessions' turns would wake it every 0.3 ms.
        for s in sessions.iter_mut().filter(|s| !s.dead) {
            loop {
                match s.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        s.deadline = t;
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        report.bytes_sent += t.contents.len() as u64;
                        if s.socket.send_to(&t.contents, t.destination).is_err() {
                            report.send_errors += 1;
                        }
                    }
                    Ok(Output::Event(Event::Connected)) => {
                        s.connected = true;
                        report.connected += 1;
                        tracing::info!(user = %s.user, aux = s.aux, "connected");
                        // A sender's first picture to a new peer is a key
                        // frame: the encoder's first one went out before
                        // the session connected, and the frames after it
                        // cannot be decoded until one comes (a loaded box
                        // took 4 frames to get one by asking).
                        if s.aux {
                            want_aux_key = true;
                        } else {
                            want_main_key = true;
                        }
                    }
                    Ok(Output::Event(Event::KeyframeRequest(_))) => {
                        report.keyframe_requests += 1;
                        if s.aux {
                            want_aux_key = true;
                        } else {
                            want_main_key = true;
                        }
                    }
                    Ok(Output::Event(Event::IceConnectionStateChange(
                        IceConnectionState::Disconnected,
                    ))) => {
                        tracing::warn!(user = %s.user, aux = s.aux, "disconnected");
                        s.dead = true;
                        break;
                    }
                    // The box ended the session (DTLS close_notify): a box
                    // handing its room on, or the operator.
                    Ok(Output::Event(Event::Closed)) => {
                        tracing::warn!(user = %s.user, aux = s.aux, "the box closed the session");
                        s.dead = true;
                        break;
                    }
                    Ok(Output::Event(_)) => {}
                    Err(e) => {
                        tracing::warn!(user = %s.user, error = %e, "session failed");
                        s.dead = true;
                        break;
                    }
                }
            }
            next = next.min(s.deadline);
        }
        let sleep = next
            .saturating_duration_since(Instant::now())
            .min(Duration::from_millis(5));
        if !sleep.is_zero() {
            std::thread::sleep(sleep);
        }
    }
    // str0m sends what was written at its next timeout: the last frames
    // counted as sent would otherwise never leave (a 100-room run counted
    // 25–87 such frames as lost by the box).
    let now = Instant::now();
    for s in sessions.iter_mut().filter(|s| !s.dead) {
        if s.rtc.handle_input(Input::Timeout(now)).is_err() {
            continue;
        }
        loop {
            match s.rtc.poll_output() {
                Ok(Output::Transmit(t)) => {
                    report.bytes_sent += t.contents.len() as u64;
                    if s.socket.send_to(&t.contents, t.destination).is_err() {
                        report.send_errors += 1;
                    }
                }
                Ok(Output::Event(_)) => {}
                Ok(Output::Timeout(_)) | Err(_) => break,
            }
        }
    }
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// One audio frame's duration.
const AUDIO_PERIOD: Duration = Duration::from_millis(20);

/// A frame handed to the sessions one after another over its frame
/// period, session `i` of `n` at `from + period * i / n`: independent
/// publishers' packets are not in step, and a frame written to every
/// session at once made bursts (200 sessions' key frames in the same
/// millisecond) that no real room produces.
struct Spread {
    /// (aux, video): which sessions and track take it.
    kind: (bool, bool),
    keyframe: bool,
    t: MediaTime,
    data: Arc<[u8]>,
    from: Instant,
    period: Duration,
    /// The next session whose turn it is.
    next: usize,
}

impl Spread {
    fn new(
        kind: (bool, bool),
        keyframe: bool,
        t: MediaTime,
        data: Arc<[u8]>,
        from: Instant,
        period: Duration,
    ) -> Self {
        Self {
            kind,
            keyframe,
            t,
            data,
            from,
            period,
            next: 0,
        }
    }

    /// When session `next` of `n` is due (None: every session had it).
    fn next_turn(&self, n: usize) -> Option<Instant> {
        (self.next < n).then(|| self.from + turn_offset(self.period, self.next, n))
    }

    /// Writes the frame to each session whose turn has come by `now` (to
    /// all that are left when `all`); returns how many took it.
    fn advance(&mut self, sessions: &mut [Session], now: Instant, all: bool) -> u64 {
        let n = sessions.len();
        let mut took = 0;
        while let Some(due) = self.next_turn(n) {
            if !all && due > now {
                break;
            }
            if let Some(s) = sessions.get_mut(self.next) {
                let (aux, video) = self.kind;
                let frame = OutFrame {
                    video,
                    keyframe: self.keyframe,
                    t: self.t,
                    data: &self.data,
                };
                took += u64::from(send_one(s, aux, &frame, now));
            }
            self.next += 1;
        }
        took
    }
}

/// Session `i` of `n`'s offset into a frame period.
fn turn_offset(period: Duration, i: usize, n: usize) -> Duration {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    let n = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    period * i / n
}

/// One encoded frame on its way to a session.
struct OutFrame<'a> {
    video: bool,
    keyframe: bool,
    t: MediaTime,
    data: &'a Arc<[u8]>,
}

/// Writes one frame to a session if it is connected and of the right kind
/// (video from its first key frame on); whether it took it.
fn send_one(s: &mut Session, aux: bool, frame: &OutFrame<'_>, now: Instant) -> bool {
    let OutFrame {
        video,
        keyframe,
        t,
        data,
    } = *frame;
    if !s.connected || s.dead || s.aux != aux || (video && !s.video_started && !keyframe) {
        return false;
    }
    let Some(mid) = (if video { s.video } else { s.audio }) else {
        return false;
    };
    if s.pts.is_none() {
        let pt_of = |rtc: &mut Rtc, mid: Option<Mid>, codec: Codec| {
            let mid = mid?;
            let w = rtc.writer(mid)?;
            let pt = w
                .payload_params()
                .find(|p| p.spec().codec == codec)
                .map(|p| p.pt());
            pt
        };
        let a = pt_of(&mut s.rtc, s.audio, Codec::Opus);
        let v = pt_of(&mut s.rtc, s.video, Codec::H264);
        s.pts = Some((a, v));
    }
    let Some((a, v)) = s.pts else { return false };
    let Some(pt) = (if video { v } else { a }) else {
        return false;
    };
    let Some(w) = s.rtc.writer(mid) else {
        return false;
    };
    let written = w.write(pt, now, t, data.clone()).is_ok();
    if written && video {
        s.video_started = true;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::room_range;

    #[test]
    fn a_room_range_is_every_integer_room_between_both_ends() {
        assert_eq!(room_range("7-9").expect("range"), ["7", "8", "9"]);
        assert_eq!(room_range("5-5").expect("range"), ["5"]);
        assert_eq!(room_range("1-1000").expect("range").len(), 1000);
        for bad in ["", "7", "9-7", "0-3", "a-b", "1-1001", "1-99999999999"] {
            assert!(room_range(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sessions_take_their_turns_spread_over_the_frame_period() {
        use super::turn_offset;
        use std::time::Duration;
        let period = Duration::from_micros(66_666);
        let offsets: Vec<Duration> = (0..200).map(|i| turn_offset(period, i, 200)).collect();
        assert_eq!(offsets[0], Duration::ZERO);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
        assert!(offsets[199] < period);
        // Half-way through the sessions, half-way through the period.
        assert_eq!(offsets[100], period / 2);
        // One session: at once.
        assert_eq!(turn_offset(period, 0, 1), Duration::ZERO);
        assert_eq!(turn_offset(period, 0, 0), Duration::ZERO);
    }
}
