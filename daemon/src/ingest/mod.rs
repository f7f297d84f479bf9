//! WebRTC ingest: WHIP (RFC 9725) sessions on str0m, one UDP socket.
//!
//! - `offer`: checks an offer can be recorded (H.264 / Opus), pure.
//! - `router`: datagram → peer (STUN ufrag, then source address), pure.
//! - `engine`: the media thread driving every peer's `Rtc`.
//! - `whip`: the HTTP endpoints.
//!
//! A WHIP handler accepts the offer on its own `Rtc` (so the SDP answer
//! never waits on the media thread), then hands the `Rtc` to the engine.

pub mod engine;
pub mod offer;
pub mod router;
pub mod socket;
pub mod whip;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use crate::metrics::{self, Metrics};
use crate::room::{DropReason, Registry, RoomKey, RoomObserver, TrackKind};

pub use engine::{Command, NewPeer};

/// Why an offer could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AcceptError {
    #[error("{0}")]
    Sdp(String),
    #[error("{0}")]
    Unanswerable(String),
}

pub fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..len)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Builds the server side of a session: an ICE-lite `Rtc` that takes H.264
/// and Opus only, with host candidates at `candidates`, answering `sdp`.
/// Returns the `Rtc`, its local ICE credentials (the ufrag is the routing
/// key, the password keys the router's STUN integrity check) and the
/// answer.
pub fn accept_offer(
    sdp: &str,
    candidates: &[SocketAddr],
    now: std::time::Instant,
) -> Result<(str0m::Rtc, str0m::IceCreds, String), AcceptError> {
    let parsed = str0m::change::SdpOffer::from_sdp_string(sdp)
        .map_err(|e| AcceptError::Sdp(e.to_string()))?;
    let creds = str0m::IceCreds {
        ufrag: random_token(16),
        pass: random_token(32),
    };
    let mut rtc = str0m::RtcConfig::new()
        .set_ice_lite(true)
        .set_local_ice_credentials(creds.clone())
        .clear_codecs()
        .enable_h264(true)
        .enable_opus(true, false)
        .set_stats_interval(Some(std::time::Duration::from_secs(1)))
        .build(now);
    for addr in candidates {
        let c = str0m::Candidate::host(*addr, "udp")
            .map_err(|e| AcceptError::Unanswerable(format!("ICE candidate {addr}: {e}")))?;
        rtc.add_local_candidate(c);
    }
    let answer = rtc
        .sdp_api()
        .accept_offer(parsed)
        .map_err(|e| AcceptError::Unanswerable(e.to_string()))?;
    Ok((rtc, creds, answer.to_sdp_string()))
}

/// Ingest counters, registered in the daemon's registry.
#[derive(Clone)]
pub struct IngestMetrics {
    pub peers: IntGauge,
    pub packets: IntCounter,
    pub bytes: IntCounter,
    pub unroutable: IntCounter,
    pub engine_restarts: IntCounter,
    pub stun_forged: IntCounter,
    pub malformed: IntCounter,
    pub socket_errors: IntCounter,
    /// Datagrams the kernel dropped for the socket (its buffer was full).
    pub socket_drops: IntCounter,
    pub frames: IntCounterVec,
    pub drops: IntCounterVec,
    pub keyframe_requests: IntCounter,
    pub keyframe_requests_deferred: IntCounter,
    pub nacks: IntCounter,
    pub discontinuities: IntCounter,
    pub plis: IntCounter,
    pub sessions_created: IntCounter,
    pub offers_redirected: IntCounter,
    pub sessions_refused: IntCounterVec,
    pub offers_limited: IntCounterVec,
    pub sessions_connected: IntCounter,
    pub sessions_ended: IntCounterVec,
    pub rooms: IntGauge,
    pub rooms_by_users: prometheus::IntGaugeVec,
}

impl IngestMetrics {
    pub fn register(m: &Metrics) -> Self {
        let r = m.registry();
        let c = |n: &str, h: &str| metrics::counter(r, n, h);
        let cv = |n: &str, h: &str, l: &[&str]| metrics::counter_vec(r, n, h, l);
        let g = |n: &str, h: &str| metrics::gauge(r, n, h);
        let rooms_by_users = metrics::gauge_vec(
            r,
            "kiroku_rooms_by_users",
            "Rooms by number of publishing users",
            &["users"],
        );
        Self {
            peers: g("kiroku_ingest_peers", "WHIP peers held by the media engine"),
            packets: c(
                "kiroku_ingest_packets_received_total",
                "UDP datagrams received",
            ),
            bytes: c("kiroku_ingest_received_bytes_total", "UDP bytes received"),
            unroutable: c(
                "kiroku_ingest_unroutable_packets_total",
                "Datagrams that matched no peer",
            ),
            engine_restarts: c(
                "kiroku_ingest_engine_restarts_total",
                "Times the ingest engine panicked and was started afresh (every publisher then publishes again)",
            ),
            stun_forged: c(
                "kiroku_ingest_stun_forged_total",
                "STUN requests naming a peer whose MESSAGE-INTEGRITY did not verify (dropped)",
            ),
            malformed: c(
                "kiroku_ingest_malformed_packets_total",
                "Datagrams a peer could not use",
            ),
            socket_errors: c(
                "kiroku_ingest_socket_errors_total",
                "UDP send/receive errors",
            ),
            socket_drops: c(
                "kiroku_ingest_socket_drops_total",
                "Datagrams the kernel dropped because the WebRTC socket's receive buffer was full (the box is short of CPU, or net.core.rmem_max is low)",
            ),
            frames: cv(
                "kiroku_ingest_frames_total",
                "Frames received, by track",
                &["track"],
            ),
            drops: cv(
                "kiroku_ingest_frame_drops_total",
                "Frames not delivered to a subscriber, by reason",
                &["reason"],
            ),
            keyframe_requests: c(
                "kiroku_ingest_keyframe_requests_total",
                "PLIs kiroku asked publishers for",
            ),
            keyframe_requests_deferred: c(
                "kiroku_ingest_keyframe_requests_deferred_total",
                "Key-frame requests held until the track's first RTP arrived",
            ),
            nacks: c("kiroku_ingest_nacks_total", "NACKs sent to publishers"),
            discontinuities: c(
                "kiroku_ingest_discontinuities_total",
                "Frames that follow a gap NACK/RTX could not repair (unrecovered loss)",
            ),
            plis: c(
                "kiroku_ingest_plis_total",
                "PLIs and FIRs sent to publishers",
            ),
            sessions_created: c(
                "kiroku_whip_sessions_created_total",
                "WHIP sessions created",
            ),
            offers_redirected: c(
                "kiroku_whip_offers_redirected_total",
                "WHIP offers answered 307 to the box of the fleet that owns the room",
            ),
            sessions_refused: cv(
                "kiroku_whip_sessions_refused_total",
                "WHIP offers refused, by HTTP status",
                &["status"],
            ),
            offers_limited: cv(
                "kiroku_whip_offers_limited_total",
                "WHIP offers refused by a limit: per client address, app or room (429), or too many unconnected sessions (503)",
                &["limit"],
            ),
            sessions_connected: c(
                "kiroku_whip_sessions_connected_total",
                "WHIP sessions whose ICE/DTLS connected",
            ),
            sessions_ended: cv(
                "kiroku_whip_sessions_ended_total",
                "WHIP sessions ended, by reason",
                &["reason"],
            ),
            rooms: g("kiroku_rooms", "Rooms with at least one publishing user"),
            rooms_by_users,
        }
    }
}

/// WHIP sessions by id (the `Location` resource), and by what they publish
/// (room, user, main/aux), so that publishing again replaces the old
/// session at once, not only when the media thread gets to it.
#[derive(Default)]
pub struct SessionTable {
    inner: Mutex<Sessions>,
}

#[derive(Default)]
struct Sessions {
    by_id: HashMap<String, SessionEntry>,
    by_slot: HashMap<(RoomKey, String, bool), String>,
    /// WHIP resource token → session id.
    by_resource: HashMap<String, String>,
    /// Sessions whose peer has not connected yet.
    pending: std::collections::HashSet<String>,
}

/// The engine holds as many unconnected sessions as it may
/// (`ingest.max_pending_sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyPending(pub usize);

#[derive(Clone)]
pub struct SessionEntry {
    pub key: RoomKey,
    pub user_id: String,
    pub aux: bool,
    pub etag: String,
    /// The secret in the session's WHIP resource URL (`Location`): whoever
    /// holds it may end or patch the session. Distinct from the session id,
    /// which logs and `GET /v1/rooms` show; it is never printed.
    pub resource: String,
}

impl std::fmt::Debug for SessionEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionEntry")
            .field("key", &self.key)
            .field("user_id", &self.user_id)
            .field("aux", &self.aux)
            .field("resource", &"<redacted>")
            .finish()
    }
}

impl SessionEntry {
    fn slot(&self) -> (RoomKey, String, bool) {
        (self.key.clone(), self.user_id.clone(), self.aux)
    }
}

impl SessionTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sessions publishing into a room (`RoomId::fleet_key` names it).
    pub fn in_room(&self, sdk_app_id: u32, room: &str) -> Vec<String> {
        self.lock()
            .by_id
            .iter()
            .filter(|(_, e)| e.key.sdk_app_id == sdk_app_id && e.key.room.fleet_key() == room)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Adds a session; returns the id of the session it replaces, if any.
    pub fn insert(&self, id: String, e: SessionEntry) -> Option<String> {
        let mut t = self.lock();
        Self::insert_locked(&mut t, id, e)
    }

    /// Whether a new unconnected session for `slot` fits under
    /// `max_pending`: one that replaces the slot's own pending session (a
    /// publisher posting again) takes no new place.
    pub fn pending_room(
        &self,
        slot: &(RoomKey, String, bool),
        max_pending: usize,
    ) -> Result<(), TooManyPending> {
        Self::room_locked(&self.lock(), slot, max_pending)
    }

    fn room_locked(
        t: &Sessions,
        slot: &(RoomKey, String, bool),
        max_pending: usize,
    ) -> Result<(), TooManyPending> {
        let replaced = t
            .by_slot
            .get(slot)
            .is_some_and(|old| t.pending.contains(old));
        let after = t.pending.len() + usize::from(!replaced);
        if after > max_pending {
            return Err(TooManyPending(t.pending.len()));
        }
        Ok(())
    }

    /// Adds an unconnected session unless it does not fit under
    /// `max_pending` ([`Self::pending_room`], checked and added under one
    /// lock).
    pub fn insert_pending(
        &self,
        id: String,
        e: SessionEntry,
        max_pending: usize,
    ) -> Result<Option<String>, TooManyPending> {
        let mut t = self.lock();
        Self::room_locked(&t, &e.slot(), max_pending)?;
        t.pending.insert(id.clone());
        Ok(Self::insert_locked(&mut t, id, e))
    }

    fn insert_locked(t: &mut Sessions, id: String, e: SessionEntry) -> Option<String> {
        let replaced = t.by_slot.insert(e.slot(), id.clone());
        if let Some(old) = &replaced {
            if let Some(gone) = t.by_id.remove(old) {
                t.by_resource.remove(&gone.resource);
            }
            t.pending.remove(old);
        }
        t.by_resource.insert(e.resource.clone(), id.clone());
        t.by_id.insert(id, e);
        replaced
    }

    /// The session's peer connected: it no longer counts as pending.
    pub fn mark_connected(&self, id: &str) {
        self.lock().pending.remove(id);
    }

    /// Sessions waiting for their peer to connect.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    pub fn get(&self, id: &str) -> Option<SessionEntry> {
        self.lock().by_id.get(id).cloned()
    }

    /// The session whose WHIP resource token is `resource`: its id and entry.
    pub fn by_resource(&self, resource: &str) -> Option<(String, SessionEntry)> {
        let t = self.lock();
        let id = t.by_resource.get(resource)?;
        t.by_id.get(id).map(|e| (id.clone(), e.clone()))
    }

    pub fn remove(&self, id: &str) -> Option<SessionEntry> {
        let mut t = self.lock();
        t.pending.remove(id);
        let e = t.by_id.remove(id)?;
        t.by_resource.remove(&e.resource);
        let slot = e.slot();
        if t.by_slot.get(&slot).map(String::as_str) == Some(id) {
            t.by_slot.remove(&slot);
        }
        Some(e)
    }

    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The room observer the daemon installs: metrics, and key frame requests
/// routed to the engine.
pub struct EngineObserver {
    metrics: IngestMetrics,
    commands: SyncSender<Command>,
}

impl RoomObserver for EngineObserver {
    fn frame_dropped(&self, reason: DropReason) {
        self.metrics
            .drops
            .with_label_values(&[reason.label()])
            .inc();
    }
    fn keyframe_wanted(&self, session_id: &str, kind: TrackKind) {
        let cmd = Command::RequestKeyframe {
            session_id: session_id.to_owned(),
            kind,
        };
        if let Err(TrySendError::Full(_)) = self.commands.try_send(cmd) {
            self.metrics
                .drops
                .with_label_values(&["keyframe_request_overflow"])
                .inc();
        }
    }
    fn users_changed(&self, rooms: &[usize]) {
        self.metrics.rooms.set(rooms.len() as i64);
        let mut buckets = [0i64; 5];
        for &n in rooms {
            let b = match n {
                0..=1 => 0,
                2..=4 => 1,
                5..=9 => 2,
                10..=25 => 3,
                _ => 4,
            };
            buckets[b] += 1;
        }
        for (label, v) in ["1", "2-4", "5-9", "10-25", "26+"].iter().zip(buckets) {
            self.metrics
                .rooms_by_users
                .with_label_values(&[label])
                .set(v);
        }
    }
}

/// The running ingest: what the WHIP handlers need.
pub struct Ingest {
    pub commands: SyncSender<Command>,
    /// The UDP socket's bound address (its port goes into candidates).
    pub udp_addr: SocketAddr,
    /// Addresses advertised as ICE host candidates.
    pub candidates: Vec<SocketAddr>,
    pub sessions: Arc<SessionTable>,
    pub registry: Arc<Registry>,
    pub metrics: IngestMetrics,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Ingest {
    /// Brings `kiroku_ingest_socket_drops_total` up to the kernel's count
    /// (called about once a second).
    pub fn refresh_socket_drops(&self) {
        if let Some(kernel) = socket::kernel_drops(self.udp_addr.port()) {
            let counted = self.metrics.socket_drops.get();
            if kernel > counted {
                self.metrics.socket_drops.inc_by(kernel - counted);
            }
        }
    }

    /// Binds the UDP socket and starts the media thread (supervised: it
    /// reports to `health`).
    pub fn start(
        udp_listen: SocketAddr,
        advertised: &[std::net::IpAddr],
        metrics: &Metrics,
        health: Arc<crate::health::Health>,
    ) -> std::io::Result<Arc<Self>> {
        let socket = UdpSocket::bind(udp_listen)?;
        let udp_addr = socket.local_addr()?;
        match socket::raise_receive_buffer(&socket) {
            Ok(granted) if granted < socket::RECEIVE_BUFFER_WARN => {
                tracing::warn!(granted, wanted = socket::RECEIVE_BUFFER,
                    "the WebRTC socket's receive buffer is small: a busy box will lose packets; raise net.core.rmem_max (the Debian package's sysctl.d file sets 16 MiB)")
            }
            Ok(granted) => tracing::info!(granted, "WebRTC socket receive buffer"),
            Err(e) => tracing::warn!(error = %e, "cannot size the WebRTC socket's receive buffer"),
        }
        let candidates = if advertised.is_empty() {
            vec![udp_addr]
        } else {
            advertised
                .iter()
                .map(|ip| SocketAddr::new(*ip, udp_addr.port()))
                .collect()
        };
        let im = IngestMetrics::register(metrics);
        let (tx, rx) = sync_channel(4096);
        let observer = Arc::new(EngineObserver {
            metrics: im.clone(),
            commands: tx.clone(),
        });
        let registry = Arc::new(Registry::new(observer));
        let sessions = Arc::new(SessionTable::default());
        let core = engine::IngestCore::new(
            candidates.clone(),
            registry.clone(),
            sessions.clone(),
            im.clone(),
            crate::clock::anchor(),
        );
        let thread = std::thread::Builder::new()
            .name("kiroku-ingest".into())
            .spawn(move || engine::run(core, socket, rx, health))?;
        tracing::info!(%udp_addr, candidates = ?candidates, "WebRTC ingest listening");
        Ok(Arc::new(Self {
            commands: tx,
            udp_addr,
            candidates,
            sessions,
            registry,
            metrics: im,
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// Ends one session (its publisher leaves the room); false when there
    /// is no such session.
    pub fn end_session(&self, session_id: &str) -> bool {
        if self.sessions.remove(session_id).is_none() {
            return false;
        }
        let _ = self.commands.try_send(Command::RemovePeer {
            session_id: session_id.to_owned(),
        });
        true
    }

    /// Ends every session publishing into a room (a drained box hands the
    /// room on: its publishers reconnect and are sent to the new owner);
    /// returns how many.
    pub fn end_room(&self, sdk_app_id: u32, room: &str) -> usize {
        self.sessions
            .in_room(sdk_app_id, room)
            .iter()
            .filter(|id| self.end_session(id))
            .count()
    }

    /// Ends every session and stops the media thread.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}
#[cfg(test)]
mod peer_certificates;
#[cfg(test)]
mod tests;
