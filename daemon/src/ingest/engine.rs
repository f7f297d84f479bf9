//! The media engine: every WHIP peer's str0m `Rtc`, behind one UDP socket,
//! on one dedicated thread (never the async runtime).
//!
//! [`IngestCore`] is sans-IO: datagrams and time go in (`handle_datagram`,
//! `handle_timeouts`, `command`), datagrams to send come out
//! (`take_transmits`), frames go to the room registry. [`run`] is the thin
//! socket loop around it; tests drive the core directly with simulated time
//! and an emulated network.
//!
//! Driving contract (str0m's): after every input to a peer — a datagram or
//! a timeout — drain `poll_output` until it returns `Timeout`; transmit
//! what it asks, handle its events, and remember its next deadline.
//! Deadlines live in an ordered set so a wake-up touches only the peers
//! that are due. Datagrams are routed by [`Router`] (hash maps, no scan).
//!
//! The thread never blocks on a consumer: frames go to rooms, whose
//! subscribers have bounded channels with a drop policy (see `room`).
//! Commands from the WHIP handlers arrive on a bounded channel that the
//! loop drains at least every `TICK`.

use std::collections::{BTreeSet, HashMap};
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use str0m::media::{KeyframeRequestKind, MediaKind, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, Rtc, RtcError};

use super::router::{PeerId, Router, Unrouted};
use super::{IngestMetrics, SessionTable};
use crate::media::{h264, rtp_time};
use crate::room::{Codec, MediaFrame, Registry, RoomKey, SessionNetStats, Track, TrackKind};

/// Longest the loop sleeps before looking at commands again.
const TICK: Duration = Duration::from_millis(20);
/// A peer that has not connected by then is dropped.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A deleted session stays at least this long after its DELETE, and then
/// until the engine has found the socket empty: a publisher sends its last
/// packets and DELETEs at once, and those packets may still be on the way
/// or wait in the socket's queue behind other peers' (a fixed linger
/// loses them when the engine is starved for longer: `ingest::tests`).
const DELETE_LINGER: Duration = Duration::from_millis(100);
/// … but never longer than this.
const DELETE_LINGER_MAX: Duration = Duration::from_secs(2);

/// A peer handed over by the WHIP handler after `accept_offer`.
pub struct NewPeer {
    pub session_id: String,
    pub rtc: Rtc,
    pub local_ufrag: String,
    /// The local ICE password (keys the router's STUN integrity check).
    pub local_pass: String,
    pub key: RoomKey,
    pub user_id: String,
    pub aux: bool,
}

pub enum Command {
    AddPeer(Box<NewPeer>),
    RemovePeer { session_id: String },
    RequestKeyframe { session_id: String, kind: TrackKind },
    Shutdown,
}

struct TrackIn {
    track: Arc<Track>,
    unwrap: rtp_time::Unwrapper,
}

struct Peer {
    session_id: String,
    rtc: Rtc,
    local_ufrag: String,
    key: RoomKey,
    user_id: String,
    aux: bool,
    created: Instant,
    connected: bool,
    deadline: Instant,
    tracks: HashMap<Mid, TrackIn>,
    /// Per-mid ingress counters (str0m reports each mid separately).
    mid_stats: HashMap<Mid, [u64; 5]>,
    /// Key frames asked for before the track's first RTP (str0m has no
    /// receive stream to send the PLI on yet): sent with the first frame
    /// that is not itself a key frame, instead of being lost.
    deferred_keyframes: Vec<TrackKind>,
    net: SessionNetStats,
    /// When it was deleted (it lingers: [`DELETE_LINGER`]).
    deleted_at: Option<Instant>,
}

pub struct IngestCore {
    /// The host candidates every answer carries (the advertised addresses
    /// with the socket's port). A datagram is handed to str0m as received
    /// *at* one of them: str0m discards STUN for any address that is not a
    /// local candidate, such as the wildcard `0.0.0.0` the socket is bound
    /// to behind `advertised_addresses`.
    candidates: Vec<SocketAddr>,
    /// Wall clock at `epoch`, so that wall times derive from the input `now`.
    epoch: (Instant, SystemTime),
    transmits: Vec<(SocketAddr, Vec<u8>)>,
    registry: Arc<Registry>,
    sessions: Arc<SessionTable>,
    metrics: IngestMetrics,
    router: Router,
    peers: HashMap<PeerId, Peer>,
    by_session: HashMap<String, PeerId>,
    /// (room, user, aux) → the peer publishing it (a new session replaces it).
    by_slot: HashMap<(RoomKey, String, bool), PeerId>,
    deadlines: BTreeSet<(Instant, PeerId)>,
    next_id: PeerId,
    /// Deleted peers still taking their last packets.
    lingering: Vec<PeerId>,
}

/// How long a restarted engine stays down (reported by `/healthz`) before
/// it serves again: a panic that repeats at once does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Runs the socket loop until a `Shutdown` command or the channel closes,
/// supervised: a panic in the core (a bug, or a peer's input that reaches
/// one) drops every peer — their publishers publish again — and the loop
/// goes on with a fresh core over the same socket, counted
/// (`kiroku_ingest_engine_restarts_total`) and reported by `/healthz`
/// while it lasts.
pub fn run(
    mut core: IngestCore,
    socket: UdpSocket,
    commands: Receiver<Command>,
    health: Arc<crate::health::Health>,
) {
    const PART: &str = "ingest engine";
    loop {
        let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve(&mut core, &socket, &commands, &health)
        }));
        if pass.is_ok() {
            return;
        }
        core.metrics.engine_restarts.inc();
        health.down(
            PART,
            "restarting after a panic: every publisher must publish again",
        );
        tracing::error!("the ingest engine panicked: dropping every peer and starting afresh");
        // The old core may be half-way through a change: take what it
        // can still say about its peers out of the room registry and the
        // session table, then replace it whole.
        let mut old = core.fresh();
        std::mem::swap(&mut core, &mut old);
        // Only the old engine's own sessions go: an offer answered while
        // it died has its AddPeer still queued for the new one.
        let held: Vec<String> = old.by_session.keys().cloned().collect();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| old.shutdown())).is_err() {
            tracing::error!("the panicked ingest engine could not release its peers cleanly");
        }
        for id in &held {
            core.sessions.remove(id);
        }
        std::thread::sleep(RESTART_DELAY);
        health.up(PART);
    }
}

fn serve(
    core: &mut IngestCore,
    socket: &UdpSocket,
    commands: &Receiver<Command>,
    health: &crate::health::Health,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        health.engine_progress(crate::clock::mono_ms());
        crate::faults::ingest_checkpoint();
        loop {
            match commands.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => {
                    core.shutdown();
                    send_all(socket, core);
                    return;
                }
                Ok(cmd) => core.command(cmd, Instant::now()),
                Err(TryRecvError::Empty) => break,
            }
        }
        send_all(socket, core);
        let now = Instant::now();
        let wait = core
            .next_deadline()
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(TICK)
            .clamp(Duration::from_millis(1), TICK);
        let _ = socket.set_read_timeout(Some(wait));
        match socket.recv_from(&mut buf) {
            Ok((n, source)) => core.handle_datagram(Instant::now(), source, &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                core.socket_idle(Instant::now());
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "UDP receive failed");
                core.metrics.socket_errors.inc();
            }
        }
        core.handle_timeouts(Instant::now());
        send_all(socket, core);
    }
}

fn send_all(socket: &UdpSocket, core: &mut IngestCore) {
    for (dest, data) in core.take_transmits() {
        if let Err(e) = socket.send_to(&data, dest) {
            tracing::debug!(error = %e, %dest, "UDP send failed");
            core.metrics.socket_errors.inc();
        }
    }
}

impl IngestCore {
    /// `candidates` are the host candidates the answers advertise (never
    /// empty); `epoch` pairs a monotonic instant with the wall-clock
    /// time at that instant (`clock::anchor`), so that the core turns its
    /// `now` inputs into wall times without reading a clock itself.
    pub fn new(
        candidates: Vec<SocketAddr>,
        registry: Arc<Registry>,
        sessions: Arc<SessionTable>,
        metrics: IngestMetrics,
        epoch: (Instant, SystemTime),
    ) -> Self {
        Self {
            candidates,
            epoch,
            transmits: Vec::new(),
            registry,
            sessions,
            metrics,
            router: Router::default(),
            peers: HashMap::new(),
            by_session: HashMap::new(),
            by_slot: HashMap::new(),
            deadlines: BTreeSet::new(),
            next_id: 1,
            lingering: Vec::new(),
        }
    }

    /// A new, empty core with this one's configuration and shared parts.
    fn fresh(&self) -> Self {
        Self::new(
            self.candidates.clone(),
            self.registry.clone(),
            self.sessions.clone(),
            self.metrics.clone(),
            self.epoch,
        )
    }

    /// Datagrams the core wants sent, in order.
    pub fn take_transmits(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.transmits)
    }

    /// The earliest time a peer needs `handle_timeouts`.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// Ends every session.
    pub fn shutdown(&mut self) {
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.remove(id, "shutdown");
        }
    }

    pub fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::AddPeer(p) => self.add(*p, now),
            Command::RemovePeer { session_id } => {
                let Some(id) = self.by_session.get(&session_id).copied() else {
                    return;
                };
                match self.peers.get_mut(&id) {
                    Some(peer) if peer.connected => {
                        if peer.deleted_at.is_none() {
                            peer.deleted_at = Some(now);
                            self.lingering.push(id);
                        }
                        self.drain(id, now);
                    }
                    _ => self.remove(id, "deleted"),
                }
            }
            Command::RequestKeyframe { session_id, kind } => {
                let Some(id) = self.by_session.get(&session_id).copied() else {
                    return;
                };
                let Some(peer) = self.peers.get_mut(&id) else {
                    return;
                };
                let mids: Vec<Mid> = peer
                    .tracks
                    .iter()
                    .filter(|(_, t)| t.track.kind == kind)
                    .map(|(m, _)| *m)
                    .collect();
                let mut sent = false;
                for mid in mids {
                    if let Some(rx) = peer.rtc.direct_api().stream_rx_by_mid(mid, None) {
                        rx.request_keyframe(KeyframeRequestKind::Pli);
                        self.metrics.keyframe_requests.inc();
                        sent = true;
                    }
                }
                if !sent && !peer.deferred_keyframes.contains(&kind) {
                    peer.deferred_keyframes.push(kind);
                    self.metrics.keyframe_requests_deferred.inc();
                }
                self.drain(id, now);
            }
            Command::Shutdown => self.shutdown(),
        }
    }

    fn add(&mut self, p: NewPeer, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let slot = (p.key.clone(), p.user_id.clone(), p.aux);
        if let Some(old) = self.by_slot.get(&slot).copied() {
            tracing::info!(user_id = %p.user_id, "the same user published again: replacing the old session");
            self.remove(old, "replaced");
        }
        self.router.add_peer(id, &p.local_ufrag, &p.local_pass);
        self.by_session.insert(p.session_id.clone(), id);
        self.by_slot.insert(slot, id);
        self.peers.insert(
            id,
            Peer {
                session_id: p.session_id,
                rtc: p.rtc,
                local_ufrag: p.local_ufrag,
                key: p.key,
                user_id: p.user_id,
                aux: p.aux,
                created: now,
                connected: false,
                deadline: now,
                tracks: HashMap::new(),
                mid_stats: HashMap::new(),
                deferred_keyframes: Vec::new(),
                net: SessionNetStats::default(),
                deleted_at: None,
            },
        );
        self.metrics.peers.set(self.peers.len() as i64);
        self.drain(id, now);
    }

    fn remove(&mut self, id: PeerId, why: &'static str) {
        let Some(mut peer) = self.peers.remove(&id) else {
            return;
        };
        if peer.deleted_at.is_some() {
            self.lingering.retain(|l| *l != id);
        }
        // Tell the publisher at once (RTCP BYE, DTLS close_notify) rather
        // than leave it to notice the silence: a box draining hands its
        // rooms on, and the publisher should publish again right away.
        if peer.connected && peer.rtc.close().is_ok() {
            for _ in 0..64 {
                match peer.rtc.poll_output() {
                    Ok(Output::Transmit(t)) => {
                        self.transmits.push((t.destination, t.contents.to_vec()))
                    }
                    Ok(Output::Event(_)) => {}
                    Ok(Output::Timeout(_)) | Err(_) => break,
                }
            }
        }
        peer.rtc.disconnect();
        self.deadlines.remove(&(peer.deadline, id));
        self.router.remove_peer(id, &peer.local_ufrag);
        self.by_session.remove(&peer.session_id);
        let slot = (peer.key.clone(), peer.user_id.clone(), peer.aux);
        if self.by_slot.get(&slot) == Some(&id) {
            self.by_slot.remove(&slot);
        }
        self.sessions.remove(&peer.session_id);
        if peer.connected {
            self.registry
                .remove_session(&peer.key, &peer.user_id, &peer.session_id);
        }
        self.metrics.peers.set(self.peers.len() as i64);
        self.metrics.sessions_ended.with_label_values(&[why]).inc();
        tracing::info!(session_id = %peer.session_id, user_id = %peer.user_id, room = %peer.key.room, why, "WHIP session ended");
    }

    /// The candidate a datagram from `source` was sent to: the first of
    /// its address family (the socket does not say which address it came
    /// in on; one candidate per family is what kiroku advertises).
    fn destination_for(&self, source: SocketAddr) -> SocketAddr {
        self.candidates
            .iter()
            .find(|c| c.is_ipv4() == source.is_ipv4())
            .or(self.candidates.first())
            .copied()
            .unwrap_or(source)
    }

    /// One datagram from `source` arrived at `now`.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, data: &[u8]) {
        self.metrics.packets.inc();
        self.metrics.bytes.inc_by(data.len() as u64);
        let id = match self.router.route(source, data) {
            Ok(id) => id,
            Err(Unrouted::Unknown) => {
                self.metrics.unroutable.inc();
                return;
            }
            Err(Unrouted::Forged) => {
                self.metrics.stun_forged.inc();
                return;
            }
        };
        let Ok(contents) = data.try_into() else {
            self.metrics.malformed.inc();
            return;
        };
        let input = Input::Receive(
            now,
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.destination_for(source),
                contents,
            },
        );
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        if let Err(e) = peer.rtc.handle_input(input) {
            self.metrics.malformed.inc();
            if matches!(e, RtcError::Dtls(_)) && !peer.connected {
                // A failed handshake never recovers (the DTLS state machine
                // would resend its flight until the connect timeout): end
                // the session now and say why. The usual cause is a
                // publisher certificate outside ECDSA P-256/P-384, e.g. the
                // RSA certificates of GStreamer's webrtcbin or the P-224
                // ones of FFmpeg built with GnuTLS (docs/ingest.md).
                tracing::warn!(session_id = %peer.session_id, user_id = %peer.user_id, error = %e,
                    "DTLS handshake with the publisher failed; its certificate must be ECDSA P-256 or P-384");
                self.remove(id, "dtls_failed");
                return;
            }
            tracing::debug!(session_id = %peer.session_id, error = %e, "peer rejected a datagram");
        }
        self.drain(id, now);
    }

    /// The socket had nothing to read at `now`: every packet sent before a
    /// DELETE at least [`DELETE_LINGER`] ago has been taken, so those
    /// peers go.
    pub fn socket_idle(&mut self, now: Instant) {
        if self.lingering.is_empty() {
            return;
        }
        let mut done = Vec::new();
        self.lingering.retain(|id| {
            let due = self
                .peers
                .get(id)
                .and_then(|p| p.deleted_at)
                .is_none_or(|t| now >= t + DELETE_LINGER);
            if due {
                done.push(*id);
            }
            !due
        });
        for id in done {
            self.remove(id, "deleted");
        }
    }

    /// Advances every peer whose deadline is at or before `now`.
    pub fn handle_timeouts(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.deadlines.first() {
            if t > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(peer) = self.peers.get_mut(&id) else {
                continue;
            };
            if !peer.connected && now.saturating_duration_since(peer.created) > CONNECT_TIMEOUT {
                self.remove(id, "connect_timeout");
                continue;
            }
            if peer
                .deleted_at
                .is_some_and(|t| now >= t + DELETE_LINGER_MAX)
            {
                self.remove(id, "deleted");
                continue;
            }
            if let Err(e) = peer.rtc.handle_input(Input::Timeout(now)) {
                tracing::warn!(session_id = %peer.session_id, error = %e, "peer failed on timeout");
                self.remove(id, "error");
                continue;
            }
            self.drain(id, now);
        }
    }

    /// Polls a peer until it only waits for time; handles what it emits.
    fn drain(&mut self, id: PeerId, now: Instant) {
        let mut events = Vec::new();
        let mut failed = false;
        {
            let Some(peer) = self.peers.get_mut(&id) else {
                return;
            };
            self.deadlines.remove(&(peer.deadline, id));
            loop {
                match peer.rtc.poll_output() {
                    Ok(Output::Timeout(t)) => {
                        // Wake at least every second so that connect
                        // timeouts and liveness are noticed.
                        peer.deadline = t.min(now + Duration::from_secs(1));
                        if let Some(deleted) = peer.deleted_at {
                            peer.deadline = peer.deadline.min(deleted + DELETE_LINGER_MAX);
                        }
                        break;
                    }
                    Ok(Output::Transmit(t)) => {
                        self.transmits.push((t.destination, t.contents.to_vec()))
                    }
                    Ok(Output::Event(e)) => events.push(e),
                    Err(e) => {
                        tracing::warn!(session_id = %peer.session_id, error = %e, "peer failed");
                        failed = true;
                        break;
                    }
                }
            }
            if !failed {
                self.deadlines.insert((peer.deadline, id));
            }
        }
        for e in events {
            self.event(id, e, now);
        }
        if failed || self.peers.get(&id).is_some_and(|p| !p.rtc.is_alive()) {
            self.remove(id, "disconnected");
        }
    }

    fn event(&mut self, id: PeerId, event: Event, now: Instant) {
        let epoch = self.epoch;
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        match event {
            Event::Connected => {
                peer.connected = true;
                self.sessions.mark_connected(&peer.session_id);
                let tracks: Vec<Arc<Track>> =
                    peer.tracks.values().map(|t| t.track.clone()).collect();
                self.registry.add_session(
                    &peer.key,
                    &peer.user_id,
                    &peer.session_id,
                    peer.aux,
                    tracks,
                );
                self.metrics.sessions_connected.inc();
                tracing::info!(session_id = %peer.session_id, user_id = %peer.user_id, room = %peer.key.room,
                    aux = peer.aux, "WHIP session connected");
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.remove(id, "ice_timeout");
            }
            Event::MediaAdded(m) => {
                let (kind, codec) = match (m.kind, peer.aux) {
                    (MediaKind::Audio, false) => (TrackKind::Audio, Codec::Opus),
                    (MediaKind::Audio, true) => return, // aux carries video only
                    (MediaKind::Video, false) => (TrackKind::MainVideo, Codec::H264),
                    (MediaKind::Video, true) => (TrackKind::AuxVideo, Codec::H264),
                };
                let track = Arc::new(Track::new(kind, codec, &peer.session_id));
                if peer.connected {
                    // str0m may announce media after the connection is up.
                    self.registry.add_session(
                        &peer.key,
                        &peer.user_id,
                        &peer.session_id,
                        peer.aux,
                        vec![track.clone()],
                    );
                }
                peer.tracks.insert(
                    m.mid,
                    TrackIn {
                        track,
                        unwrap: rtp_time::Unwrapper::default(),
                    },
                );
            }
            Event::MediaData(d) => {
                let Some(t) = peer.tracks.get_mut(&d.mid) else {
                    return;
                };
                let kind = t.track.kind;
                let clock_rate = d.time.denom();
                let rtp32 = d.time.numer() as u32;
                let ntp_time = d.last_sender_info.as_ref().and_then(|sr| {
                    let dt = rtp_time::delta_seconds(sr.rtp_time.numer() as u32, rtp32, clock_rate);
                    if dt >= 0.0 {
                        sr.ntp_time.checked_add(Duration::from_secs_f64(dt))
                    } else {
                        sr.ntp_time.checked_sub(Duration::from_secs_f64(-dt))
                    }
                });
                let keyframe = if kind.is_video() {
                    let key = h264::is_keyframe(&d.data);
                    if key {
                        if let Some(sps) = h264::find_sps(&d.data).and_then(h264::parse_sps) {
                            t.track.set_resolution(sps.width, sps.height);
                        }
                    }
                    if let Some(at) = peer.deferred_keyframes.iter().position(|k| *k == kind) {
                        if !key {
                            if let Some(rx) = peer.rtc.direct_api().stream_rx_by_mid(d.mid, None) {
                                rx.request_keyframe(KeyframeRequestKind::Pli);
                                self.metrics.keyframe_requests.inc();
                            }
                        }
                        peer.deferred_keyframes.swap_remove(at);
                    }
                    key
                } else {
                    true
                };
                let received_wall =
                    epoch.1 + d.network_time.max(now).saturating_duration_since(epoch.0);
                let frame = MediaFrame {
                    codec: t.track.codec,
                    data: d.data.clone(),
                    keyframe,
                    rtp_time: t.unwrap.extend(rtp32),
                    clock_rate,
                    ntp_time,
                    report_stamp: d.last_sender_info.as_ref().map(|sr| sr.ntp_time),
                    received_at: d.network_time,
                    received_wall,
                    contiguous: d.contiguous,
                };
                self.metrics.frames.with_label_values(&[kind.label()]).inc();
                if !frame.contiguous {
                    self.metrics.discontinuities.inc();
                }
                t.track.deliver(&frame, self.registry.observer());
            }
            Event::StreamPaused(p) => {
                // str0m pauses a receive stream when its RTP stops (a publisher
                // that muted by stopping the track) and resumes it with the
                // next packet; the status endpoint shows it as "muted".
                if let Some(t) = peer.tracks.get(&p.mid) {
                    t.track.set_muted(p.paused);
                    tracing::info!(session_id = %peer.session_id, track = t.track.kind.label(), paused = p.paused, "track paused/resumed");
                }
            }
            Event::MediaIngressStats(s) => {
                let now_counts = [s.packets, s.bytes, s.nacks, s.plis, s.firs];
                let before = peer.mid_stats.insert(s.mid, now_counts).unwrap_or_default();
                self.metrics
                    .nacks
                    .inc_by(now_counts[2].saturating_sub(before[2]));
                self.metrics.plis.inc_by(
                    now_counts[3].saturating_sub(before[3])
                        + now_counts[4].saturating_sub(before[4]),
                );
                let sum = |i: usize| peer.mid_stats.values().map(|c| c[i]).sum::<u64>();
                peer.net.packets = sum(0);
                peer.net.bytes = sum(1);
                peer.net.nacks_sent = sum(2);
                peer.net.plis_sent = sum(3);
                peer.net.firs_sent = sum(4);
                if s.loss.is_some() {
                    peer.net.loss_fraction = s.loss;
                }
                if let Some(rtt) = s.rtt {
                    peer.net.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                }
                if peer.connected {
                    self.registry.update_net_stats(
                        &peer.key,
                        &peer.user_id,
                        &peer.session_id,
                        peer.net.clone(),
                    );
                }
            }
            _ => {}
        }
    }
}
