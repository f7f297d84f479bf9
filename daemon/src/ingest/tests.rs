//! The ingest core against an in-process str0m publisher: no sockets, no
//! sleeps. Time is simulated; the network between them is emulated with
//! delay, reordering and loss (the way str0m's own tests use netem).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpAnswer;
use str0m::format::Codec as StrCodec;
use str0m::media::{Direction, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

use super::engine::IngestCore;
use super::{accept_offer, Command, IngestMetrics, NewPeer, SessionTable};
use crate::domain::params::RoomId;
use crate::metrics::Metrics;
use crate::room::{DropReason, MediaFrame, Registry, RoomKey, RoomObserver, TrackKind};

struct NoObserver;
impl RoomObserver for NoObserver {
    fn frame_dropped(&self, _r: DropReason) {}
    fn keyframe_wanted(&self, _s: &str, _k: TrackKind) {}
}

/// A deterministic emulated network: every `loss_every`-th packet is lost,
/// and packets get 1 ms or 6 ms of delay alternately, which reorders them.
struct Netem {
    queue: BTreeMap<(Instant, u64), (SocketAddr, SocketAddr, Vec<u8>)>,
    seq: u64,
    loss_every: u64,
    lost: u64,
}

impl Netem {
    fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, data: Vec<u8>, lossy: bool) {
        self.seq += 1;
        if lossy && self.loss_every > 0 && self.seq % self.loss_every == 0 {
            self.lost += 1;
            return;
        }
        let delay = if self.seq % 2 == 0 { 1 } else { 6 };
        self.queue.insert(
            (now + Duration::from_millis(delay), self.seq),
            (from, to, data),
        );
    }

    fn next_time(&self) -> Option<Instant> {
        self.queue.keys().next().map(|(t, _)| *t)
    }

    fn pop_due(&mut self, now: Instant) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > now {
                break;
            }
            out.push(entry.remove());
        }
        out
    }
}

struct Client {
    rtc: Rtc,
    addr: SocketAddr,
    deadline: Instant,
    connected: bool,
    audio: Mid,
    video: Mid,
}

impl Client {
    fn drain(&mut self, now: Instant, net: &mut Netem, lossy: bool) {
        loop {
            match self.rtc.poll_output().expect("client output") {
                Output::Timeout(t) => {
                    self.deadline = t;
                    break;
                }
                Output::Transmit(t) => net.send(
                    now,
                    self.addr,
                    t.destination,
                    t.contents.to_vec(),
                    lossy && self.connected,
                ),
                Output::Event(Event::Connected) => self.connected = true,
                Output::Event(_) => {}
            }
        }
    }
}

fn fake_h264(frame: u64) -> Vec<u8> {
    // A key frame every 30 frames; sizes vary so that large frames are split
    // into several RTP packets (FU-A) and must be reassembled.
    let mut au = Vec::new();
    if frame % 30 == 0 {
        au.extend_from_slice(&[
            0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0x01, 0x40, 0x16, 0xe8, 0x40,
        ]);
        au.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
        au.extend_from_slice(&[0, 0, 0, 1, 0x65]);
        au.extend((0..4000u32).map(|i| (i as u8) | 1));
    } else {
        au.extend_from_slice(&[0, 0, 0, 1, 0x41]);
        au.extend((0..(300 + (frame % 7) * 200)).map(|i| (i as u8) | 1));
    }
    au
}

struct SessionOutcome {
    video: Vec<MediaFrame>,
    audio: Vec<MediaFrame>,
    lost: u64,
    /// The video track's state in the status endpoint at the end.
    video_state: &'static str,
    audio_written: u64,
}

/// Publishes for 10 simulated seconds; video stops at `video_stops_at`;
/// the session is DELETEd at `delete.0` (its last packets still on the
/// way: the publisher sends them and DELETEs at once), after which the
/// engine gets no CPU for `delete.1` (a starved box: its socket's queue
/// fills) and then runs its timeouts before it reads that queue.
fn run_session(
    loss_every: u64,
    video_stops_at: Duration,
    delete: Option<(Duration, Duration)>,
) -> SessionOutcome {
    let delete_at = delete.map(|d| d.0);
    let starved_for = delete.map_or(Duration::ZERO, |d| d.1);
    let t0 = Instant::now();
    let server_addr: SocketAddr = "10.0.0.1:8443".parse().expect("addr");
    let client_addr: SocketAddr = "10.0.0.2:50000".parse().expect("addr");

    let metrics = Metrics::new();
    let registry = Arc::new(Registry::new(Arc::new(NoObserver)));
    let sessions = Arc::new(SessionTable::default());
    let mut core = IngestCore::new(
        vec![server_addr],
        registry.clone(),
        sessions,
        IngestMetrics::register(&metrics),
        (
            t0,
            std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        ),
    );

    let mut rtc = RtcConfig::new()
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .build(t0);
    rtc.add_local_candidate(Candidate::host(client_addr, "udp").expect("candidate"));
    let mut api = rtc.sdp_api();
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video = api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
    let (offer, pending) = api.apply().expect("an offer");
    let offer_sdp = offer.to_sdp_string();
    super::offer::check(&offer_sdp, false).expect("str0m's offer passes the WHIP check");
    let (server_rtc, creds, answer) =
        accept_offer(&offer_sdp, &[server_addr], t0).expect("answered");
    rtc.sdp_api()
        .accept_answer(
            pending,
            SdpAnswer::from_sdp_string(&answer).expect("answer parses"),
        )
        .expect("answer accepted");

    let key = RoomKey {
        sdk_app_id: 1,
        room: RoomId::Int(42),
    };
    let mut watch = registry.watch(&key);
    core.command(
        Command::AddPeer(Box::new(NewPeer {
            session_id: "s1".into(),
            rtc: server_rtc,
            local_ufrag: creds.ufrag,
            local_pass: creds.pass,
            key: key.clone(),
            user_id: "alice".into(),
            aux: false,
        })),
        t0,
    );
    let mut client = Client {
        rtc,
        addr: client_addr,
        deadline: t0,
        connected: false,
        audio,
        video,
    };
    let mut net = Netem {
        queue: BTreeMap::new(),
        seq: 0,
        loss_every,
        lost: 0,
    };

    let mut now = t0;
    let (mut vframe, mut aframe) = (0u64, 0u64);
    let media_start = t0 + Duration::from_millis(500);
    let end = t0 + Duration::from_secs(10);
    let mut subs: Option<(
        std::sync::mpsc::Receiver<MediaFrame>,
        std::sync::mpsc::Receiver<MediaFrame>,
    )> = None;
    let (mut video_got, mut audio_got) = (Vec::new(), Vec::new());
    let mut deleted = false;
    let mut starved_until: Option<Instant> = None;
    let mut held: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    client.drain(now, &mut net, true);
    while now < end {
        let starved = starved_until.is_some_and(|t| now < t);
        let mut server_read = false;
        if !starved && starved_until.take().is_some() {
            // Back from starvation: the timeouts first, then the queue.
            core.handle_timeouts(now);
            for (from, data) in held.drain(..) {
                core.handle_datagram(now, from, &data);
                server_read = true;
            }
        }
        // Deliver due packets (the server's wait in its queue while it
        // is starved).
        for (from, to, data) in net.pop_due(now) {
            if to == server_addr && starved {
                held.push((from, data));
            } else if to == server_addr {
                core.handle_datagram(now, from, &data);
                server_read = true;
            } else {
                let input = Input::Receive(
                    now,
                    Receive {
                        proto: Protocol::Udp,
                        source: from,
                        destination: to,
                        contents: data.as_slice().try_into().expect("datagram"),
                    },
                );
                client.rtc.handle_input(input).expect("client input");
                client.drain(now, &mut net, true);
            }
        }
        if !starved {
            if !server_read {
                core.socket_idle(now);
            }
            core.handle_timeouts(now);
        }
        if now >= client.deadline {
            client
                .rtc
                .handle_input(Input::Timeout(now))
                .expect("client timeout");
            client.drain(now, &mut net, true);
        }
        // Publish: 30 fps video, 50 fps audio, once connected.
        if client.connected && now >= media_start && !deleted {
            let media_t = now - media_start;
            while Duration::from_millis(vframe * 1000 / 30) <= media_t.min(video_stops_at) {
                let w = client.rtc.writer(client.video).expect("video writer");
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec == StrCodec::H264)
                    .map(|p| p.pt())
                    .expect("h264 pt");
                w.write(
                    pt,
                    now,
                    MediaTime::from_90khz(vframe * 3000),
                    fake_h264(vframe),
                )
                .expect("write video");
                vframe += 1;
            }
            while Duration::from_millis(aframe * 20) <= media_t {
                let w = client.rtc.writer(client.audio).expect("audio writer");
                let pt = w
                    .payload_params()
                    .find(|p| p.spec().codec == StrCodec::Opus)
                    .map(|p| p.pt())
                    .expect("opus pt");
                w.write(
                    pt,
                    now,
                    MediaTime::new(aframe * 960, str0m::media::Frequency::FORTY_EIGHT_KHZ),
                    vec![0xfc, aframe as u8, 1, 2, 3],
                )
                .expect("write audio");
                aframe += 1;
            }
            client.drain(now, &mut net, true);
            if delete_at.is_some_and(|d| now >= t0 + d) {
                deleted = true;
                core.command(
                    Command::RemovePeer {
                        session_id: "s1".into(),
                    },
                    now,
                );
                // The engine's loop runs the due timeouts next.
                core.handle_timeouts(now);
                if !starved_for.is_zero() {
                    starved_until = Some(now + starved_for);
                }
            }
        }
        for (dest, data) in core.take_transmits() {
            net.send(now, server_addr, dest, data, true);
        }
        if subs.is_none() {
            if let (Some(v), Some(a)) = (
                registry.track(&key, "alice", TrackKind::MainVideo),
                registry.track(&key, "alice", TrackKind::Audio),
            ) {
                subs = Some((
                    v.subscribe(10_000, registry.observer()),
                    a.subscribe(10_000, registry.observer()),
                ));
                assert_eq!(
                    *watch.publishers.borrow_and_update(),
                    1,
                    "alice is in the room once connected"
                );
            }
        }
        if let Some((v, a)) = &subs {
            video_got.extend(v.try_iter());
            audio_got.extend(a.try_iter());
        }
        let next = [
            net.next_time(),
            core.next_deadline(),
            Some(client.deadline),
            Some(now + Duration::from_millis(5)),
        ]
        .into_iter()
        .flatten()
        .filter(|t| *t > now)
        .min()
        .unwrap_or(now + Duration::from_millis(1));
        now = next.min(now + Duration::from_millis(5));
    }
    let video_state = registry
        .track(&key, "alice", TrackKind::MainVideo)
        .map(|t| t.status(now).state)
        .unwrap_or("gone");
    SessionOutcome {
        video: video_got,
        audio: audio_got,
        lost: net.lost,
        video_state,
        audio_written: aframe,
    }
}

#[test]
fn frames_arrive_whole_and_in_order_over_a_clean_network() {
    let SessionOutcome {
        video,
        audio,
        video_state,
        ..
    } = run_session(0, Duration::from_secs(60), None);
    assert_eq!(video_state, "publishing");
    // ~9.5 s of media at 30 fps / 50 fps, minus the frames before the
    // subscriber's first key frame.
    assert!(video.len() > 250, "video frames: {}", video.len());
    assert!(audio.len() > 400, "audio frames: {}", audio.len());
    assert!(
        video[0].keyframe,
        "a video subscription starts at a key frame"
    );
    for pair in video.windows(2) {
        assert!(pair[1].rtp_time > pair[0].rtp_time, "video in RTP order");
    }
    let keys = video.iter().filter(|f| f.keyframe).count();
    assert!(
        (8..=11).contains(&keys),
        "one key frame per 30 frames: {keys}"
    );
    // Every frame is a complete access unit as written.
    for f in &video {
        assert!(
            f.data.starts_with(&[0, 0, 0, 1]) || f.data.starts_with(&[0, 0, 1]),
            "Annex-B"
        );
    }
    let sizes_ok = video
        .iter()
        .filter(|f| f.keyframe)
        .all(|f| f.data.len() > 4000);
    assert!(sizes_ok, "key frames were reassembled from several packets");
    assert!(audio.iter().all(|f| f.data.first() == Some(&0xfc)));
    // After the first sender report, frames carry sender wall-clock time.
    assert!(
        video.iter().rev().take(50).all(|f| f.ntp_time.is_some()),
        "NTP from RTCP SR"
    );
    assert!(
        audio.iter().rev().take(50).all(|f| f.ntp_time.is_some()),
        "NTP from RTCP SR"
    );
}

#[test]
fn loss_and_reordering_are_repaired_by_nack() {
    let SessionOutcome {
        video, audio, lost, ..
    } = run_session(20, Duration::from_secs(60), None);
    assert!(lost > 40, "the emulated network lost {lost} packets");
    // NACK/RTX recover video; the few frames that cannot be recovered in
    // time are skipped, not delivered broken.
    assert!(
        video.len() > 230,
        "video frames despite loss: {}",
        video.len()
    );
    assert!(
        audio.len() > 350,
        "audio frames despite loss: {}",
        audio.len()
    );
    for pair in video.windows(2) {
        assert!(
            pair[1].rtp_time > pair[0].rtp_time,
            "reordered packets are put back in order"
        );
    }
}

#[test]
fn a_track_whose_rtp_stops_shows_as_muted_while_audio_goes_on() {
    let out = run_session(0, Duration::from_secs(4), None);
    assert_eq!(out.video_state, "muted", "str0m paused the video stream");
    let last_video = out.video.last().map(|f| f.rtp_time).unwrap_or(0) - out.video[0].rtp_time;
    assert!(last_video <= 4 * 90_000 + 3000, "no video after the stop");
    assert!(
        out.audio.len() > 400,
        "audio kept flowing: {}",
        out.audio.len()
    );
}

#[test]
fn unconnected_sessions_are_bounded_and_a_publisher_may_post_again() {
    use super::{SessionEntry, TooManyPending};
    let table = SessionTable::default();
    let entry = |user: &str| SessionEntry {
        key: RoomKey {
            sdk_app_id: 1,
            room: RoomId::Int(7),
        },
        user_id: user.to_owned(),
        aux: false,
        etag: "\"e\"".into(),
        resource: format!("res-{user}-{}", table.len()),
    };
    table
        .insert_pending("s1".into(), entry("a"), 2)
        .expect("first");
    table
        .insert_pending("s2".into(), entry("b"), 2)
        .expect("second");
    assert_eq!(table.pending(), 2);
    assert_eq!(
        table.insert_pending("s3".into(), entry("c"), 2),
        Err(TooManyPending(2))
    );
    // "a" posts again: the new session replaces its pending one.
    assert_eq!(
        table.insert_pending("s4".into(), entry("a"), 2),
        Ok(Some("s1".into()))
    );
    assert_eq!(table.pending(), 2);
    // A connected session no longer counts; nor does a removed one.
    table.mark_connected("s4");
    table
        .insert_pending("s5".into(), entry("c"), 2)
        .expect("room again");
    table.remove("s2");
    assert_eq!(table.pending(), 1);
}

#[test]
fn a_deleted_session_keeps_the_packets_sent_just_before_its_delete() {
    // The engine keeps up, and the packets arrive 1–6 ms after the DELETE;
    // or it is starved for 500 ms after the DELETE (its queue fills).
    for starved in [Duration::ZERO, Duration::from_millis(500)] {
        let out = run_session(
            0,
            Duration::from_secs(60),
            Some((Duration::from_secs(5), starved)),
        );
        last_audio_frame_arrived_and_the_session_ended(&out);
    }
}

fn last_audio_frame_arrived_and_the_session_ended(out: &SessionOutcome) {
    // The last audio frame written (its second byte is its number) came
    // through although the DELETE was handled before it arrived …
    let last = out.audio.last().expect("audio frames");
    assert_eq!(
        last.data.get(1).copied(),
        Some((out.audio_written - 1) as u8),
        "{} audio frames written",
        out.audio_written
    );
    // … and the session is gone once the linger has passed.
    assert_eq!(out.video_state, "gone");
}
