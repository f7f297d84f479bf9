"""An independent WHIP publisher built on aiortc (PyPI), sharing no code with kiroku.

Most media tests publish with `kiroku publish`, the binary under test: a bug
shared by its publisher and its ingest could cancel out. This publisher is a
different WebRTC stack (aiortc + aioice + PyAV's libx264 and libopus), so a
recording judged against what it sent is judged against an outside reference.

    with Publisher(whip_url(d.url, APP_ID, room, "alice"), color=(220, 40, 40), tone_hz=440) as pub:
        time.sleep(8)
    pub.published_seconds  # wall-clock seconds from its first frame to its stop

What it sends:
- video: a solid `color` picture (`width` x `height`, `fps`) with a small white
  square moving along the top band (so the encoder sees motion; the centre of
  the picture is always the solid colour), H.264 only (the transceiver's codec
  preferences keep aiortc's H.264 packetization-mode=1 codecs and RTX).
  With `pattern="noise"` the whole picture is fresh random noise every
  frame instead (no colour, no square): libx264 cannot compress it, so the stream runs
  at the encoder's target bitrate (about 650 kbit/s at 15 fps, measured),
  for tests that need data volume (a solid picture is about 10 kbit/s);
- audio: a sine tone at `tone_hz`, amplitude 0.25, 48 kHz mono, 20 ms frames,
  Opus only.

With `pattern="sync"` it sends the A/V sync clip instead (`SyncClip`, for
tests/e2e/avsync.py): a dark picture (a dim grey square still moving along
the top band) that turns `color` over the whole frame for
`SyncClip.flash_frames` frames at each mark, and silence except a beep of
`tone_hz` starting on the very sample of each mark. The marks are instants of
the media timeline (pts), on video frame boundaries, about every
`SyncClip.period` seconds with a deterministic irregular jitter, so that a
whole-period shift cannot pair the wrong flash and beep; both tracks share one
media origin, and `start_at` (Unix s) lets several publishers share it too
("clients started together": their marks leave at the same wall instants).
With `start_at`, every RTCP sender report aiortc sends is logged
(`sender_reports`, `sender_report_errors()`: how late each report's wall
time is), and `stall()` blocks the sender's event loop (a starved sender).

Frames are generated on a real-time clock: frame n of a track is produced at
(first frame time + n * frame interval), with pts n * interval, so
`frames_sent / fps` is the media duration that was handed to the encoder.
(In sync mode "first frame time" is the publisher's `media_origin`, the same
for both tracks.)

`start()` does non-trickle WHIP (RFC 9725): aiortc's setLocalDescription
returns once ICE gathering is complete, the offer (with every candidate) is
POSTed as application/sdp, the 201's answer is applied, and start() returns
once the peer connection's connectionState is "connected" (ICE + DTLS done).
`stop()` ends the tracks, DELETEs the session URL (the Location header,
resolved against the WHIP URL) and closes the peer connection.

aioice never offers 127.0.0.1 host candidates (it skips loopback), which is
fine against a daemon on 127.0.0.1: Linux delivers datagrams from the
machine's other addresses to 127.0.0.1 and back.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import random
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import av
import numpy as np
import requests
from aiortc import (MediaStreamTrack, RTCConfiguration, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription)
from aiortc import sdp as aiortc_sdp
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy
from aiortc.rtp import RtcpSrPacket

log = logging.getLogger("independent_publisher")

VIDEO_CLOCK = 90000
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms at 48 kHz
NTP_UNIX_OFFSET = 2208988800  # seconds from 1900 to 1970


def whip_url(base: str, app: int, room: int | str, user: str, *, aux: bool = False,
             string_room: bool = False) -> str:
    """kiroku's WHIP endpoint (docs/ingest.md): POST /whip/{SdkAppId}/{RoomId}/{UserId}[/aux]."""
    url = f"{base.rstrip('/')}/whip/{app}/{room}/{user}" + ("/aux" if aux else "")
    return url + ("?roomType=string" if string_room else "")


class WhipError(Exception):
    """The WHIP endpoint refused the offer (status and body as answered)."""

    def __init__(self, status: int, body: str, offer: str):
        super().__init__(f"WHIP POST answered {status}: {body.strip()[:500]}")
        self.status = status
        self.body = body
        self.offer = offer


class ConnectError(Exception):
    """The answer was accepted but the peer connection did not reach 'connected'."""


@dataclass(frozen=True)
class SyncClip:
    """Where the sync clip's marks fall, and what a mark looks and sounds like.

    Mark k (k = 1, 2, ...) is at video frame `mark_frame(k, fps)`: the frame
    nearest to k * period + j_k, where j_k is a pseudo-random jitter in
    [-jitter, +jitter] fixed by `seed` (every publisher with the same clip has
    the same marks). Mark 0 is left out: media time 0 passes while the
    receiver is still asking for the first key frame. Consecutive marks are at
    least period - 2 * jitter apart.

    A mark is `flash_frames` frames of the publisher's `color` from that frame
    on, and `beep_ms` of a `level` (of full scale) sine at `tone_hz` from the
    audio sample of the same instant (phase 0 there), so the flash's first
    frame and the beep's first sample have the same pts.
    """

    period: float = 1.0
    jitter: float = 0.2
    flash_frames: int = 3
    beep_ms: float = 40.0
    level: float = 0.5
    seed: int = 19
    dark: tuple[int, int, int] = (0, 0, 0)
    square: tuple[int, int, int] = (48, 48, 48)

    def __post_init__(self):
        assert 0 <= self.jitter < self.period / 4, "marks must stay in order and apart"

    def _jitter(self, k: int) -> float:
        return self.jitter * (2 * random.Random(self.seed * 1_000_003 + k).random() - 1)

    def mark_frame(self, k: int, fps: int) -> int:
        assert k >= 1
        return round((k * self.period + self._jitter(k)) * fps)

    def marks(self, fps: int, frames: int) -> list[float]:
        """Media times (s) of the marks whose first frame is among the first `frames`."""
        out, k = [], 1
        while (f := self.mark_frame(k, fps)) < frames:
            out.append(f / fps)
            k += 1
        return out

    def is_flash(self, n: int, fps: int) -> bool:
        """Whether video frame n shows a flash."""
        k = max(1, round(n / fps / self.period))
        return any(0 <= n - self.mark_frame(j, fps) < self.flash_frames for j in (k - 1, k, k + 1) if j >= 1)

    def beep_starts(self, first: int, last: int, fps: int) -> list[int]:
        """Audio sample indices (48 kHz) of the beeps that sound in [first, last)."""
        per_frame = AUDIO_RATE // fps
        length = self.beep_samples
        k = max(1, int((first / AUDIO_RATE) / self.period) - 1)
        out = []
        while (s := self.mark_frame(k, fps) * per_frame) < last:
            if s + length > first:
                out.append(s)
            k += 1
        return out

    @property
    def beep_samples(self) -> int:
        return round(self.beep_ms * AUDIO_RATE / 1000)


class _PacedTrack(MediaStreamTrack):
    """Produces frames in real time; counts them; ends when told to."""

    def __init__(self, owner: "Publisher", interval: float):
        super().__init__()
        self._owner = owner
        self._interval = interval
        self._t0: float | None = None  # loop time of frame 0
        self.frames = 0
        self.first_wall: float | None = None
        self.last_wall: float | None = None

    async def _pace(self) -> int:
        if self._owner._ending:
            raise MediaStreamError
        loop = asyncio.get_running_loop()
        n = self.frames
        if self._t0 is None:
            self._t0 = self._owner._track_origin(loop)
        delay = self._t0 + n * self._interval - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if self._owner._ending:
            raise MediaStreamError
        if self.first_wall is None:
            self.first_wall = time.time()
        self.frames = n + 1
        self.last_wall = time.time()
        return n


class _ColourVideo(_PacedTrack):
    kind = "video"

    def __init__(self, owner: "Publisher"):
        super().__init__(owner, 1.0 / owner.fps)
        w, h = owner.width, owner.height
        self._base = np.empty((h, w, 3), dtype=np.uint8)
        self._base[:, :] = owner.color
        self._square = max(8, (min(w, h) // 12) // 2 * 2)
        self._step = fractions.Fraction(VIDEO_CLOCK, owner.fps)
        self._rng = np.random.default_rng(0) if owner.pattern == "noise" else None
        self._sync = owner.sync if owner.pattern == "sync" else None
        if self._sync is not None:
            self._base[:, :] = self._sync.dark
            self._flash = np.empty_like(self._base)
            self._flash[:, :] = owner.color

    async def recv(self) -> av.VideoFrame:
        n = await self._pace()
        every = self._owner.keyframe_interval
        if every and n and n % max(1, round(every * self._owner.fps)) == 0 and self._owner._force_keyframe:
            self._owner._force_keyframe()
        if self._rng is not None:
            img = self._rng.integers(0, 256, self._base.shape, dtype=np.uint8)
        elif self._sync is not None and self._sync.is_flash(n, self._owner.fps):
            img = self._flash
        else:
            img = self._base.copy()
            s, w = self._square, self._owner.width
            x = (n * 4) % max(1, w - s)
            y = max(0, self._owner.height // 16)
            img[y:y + s, x:x + s] = self._sync.square if self._sync is not None else 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = int(n * self._step)
        frame.time_base = fractions.Fraction(1, VIDEO_CLOCK)
        return frame


class _ToneAudio(_PacedTrack):
    kind = "audio"

    def __init__(self, owner: "Publisher"):
        super().__init__(owner, AUDIO_SAMPLES / AUDIO_RATE)
        self._w = 2 * math.pi * owner.tone_hz / AUDIO_RATE
        self._sync = owner.sync if owner.pattern == "sync" else None

    def _beeps(self, first: int) -> np.ndarray:
        """Sync mode: samples [first, first + AUDIO_SAMPLES): silence, and the beeps that sound there."""
        clip, fps = self._sync, self._owner.fps
        out = np.zeros(AUDIO_SAMPLES)
        for start in clip.beep_starts(first, first + AUDIO_SAMPLES, fps):
            lo, hi = max(first, start), min(first + AUDIO_SAMPLES, start + clip.beep_samples)
            k = np.arange(lo, hi, dtype=np.float64)
            out[lo - first:hi - first] = clip.level * np.sin(self._w * (k - start))
        return out

    async def recv(self) -> av.AudioFrame:
        n = await self._pace()
        if self._sync is not None:
            pcm = (32767 * self._beeps(n * AUDIO_SAMPLES)).astype(np.int16).reshape(1, -1)
        else:
            k = np.arange(n * AUDIO_SAMPLES, (n + 1) * AUDIO_SAMPLES, dtype=np.float64)
            pcm = (0.25 * 32767 * np.sin(self._w * k)).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = AUDIO_RATE
        frame.pts = n * AUDIO_SAMPLES
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


def _preferred(kind: str, mime: str):
    caps = RTCRtpSender.getCapabilities(kind).codecs
    if mime == "video/H264":
        chosen = [c for c in caps if c.mimeType == mime and c.parameters.get("packetization-mode") == "1"]
        # Constrained baseline (42e01f) first: what aiortc's libx264 set-up emits.
        chosen.sort(key=lambda c: c.parameters.get("profile-level-id") != "42e01f")
        chosen += [c for c in caps if c.mimeType == "video/rtx"]
    else:
        chosen = [c for c in caps if c.mimeType.lower() == mime.lower()]
    assert chosen, f"aiortc offers no {mime}: {[c.mimeType for c in caps]}"
    return chosen


class Publisher:
    """One WHIP publication by aiortc, on its own thread and asyncio loop.

    Attributes after start(): `connected` (True while the peer connection is
    connected), `session_url`, `answer_sdp`, `offer_sdp`, `started_at` (Unix s
    of the first frame of any track), `media_origin` (sync mode: Unix s of
    media time 0, shared by both tracks), `frames_sent` / `audio_frames_sent`,
    `keyframe_requests` (PLI/FIR received, answered with a key frame unless
    `ignore_keyframe_requests`), `states` (connectionStates);
    after stop(): `stopped_at` (Unix s when the tracks ended; no frame is
    produced after it), `published_seconds`, `delete_status`.
    """

    def __init__(self, whip_url: str, *, token: str | None = None, color=(255, 0, 0), tone_hz: float = 440.0,
                 width: int = 320, height: int = 240, fps: int = 15, video: bool = True, audio: bool = True,
                 aux: bool = False, keyframe_interval: float | None = None, pattern: str = "solid",
                 verify: bool | str = True, ignore_keyframe_requests: bool = False,
                 sync: SyncClip | None = None, start_at: float | None = None):
        assert video or audio, "nothing to publish"
        assert pattern in ("solid", "noise", "sync"), pattern
        self.pattern = pattern
        # pattern="sync": the clip's marks (SyncClip); start_at: the Unix
        # time of media time 0 (else the first frame asked for), shared by
        # both tracks; frames wait for it.
        self.sync = sync or SyncClip()
        if pattern == "sync":
            assert AUDIO_RATE % int(fps) == 0, "sync marks need whole audio samples per video frame"
        self.start_at = start_at
        self._origin_loop: float | None = None
        self.media_origin: float | None = None
        # Sync mode: every RTCP sender report aiortc sent, as (kind, the
        # report's NTP time as Unix s, the media time (s) of its RTP time).
        self.sender_reports: list[tuple[str, float, float]] = []
        if aux:
            u = urlsplit(whip_url)
            if not u.path.rstrip("/").endswith("/aux"):
                whip_url = urlunsplit(u._replace(path=u.path.rstrip("/") + "/aux"))
        self.url = whip_url
        self.token = token
        # requests' verify= for an https:// WHIP URL: a CA file, or the default.
        self.verify = verify
        self.color = tuple(int(c) for c in color)
        self.tone_hz = float(tone_hz)
        self.width, self.height, self.fps = int(width), int(height), int(fps)
        self.want_video, self.want_audio = video, audio
        # None: key frames only at the start and when the receiver asks
        # (PLI/FIR), as browsers do; else one every this many seconds too.
        self.keyframe_interval = keyframe_interval
        self.keyframe_requests = 0  # PLIs/FIRs received for the video track
        self.keyframe_request_times: list[float] = []  # Unix s of each
        # True: PLIs/FIRs are still counted but answered with nothing (a
        # broken or hostile publisher); key frames then come only at the
        # start, every keyframe_interval, and from send_keyframe().
        self.ignore_keyframe_requests = ignore_keyframe_requests
        self._force_keyframe = None
        self.offer_sdp: str | None = None
        self.answer_sdp: str | None = None
        self.session_url: str | None = None
        self.delete_status: int | None = None
        self.stopped_at: float | None = None
        self.states: list[str] = []  # every connectionState, in order
        self._ending = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pc: RTCPeerConnection | None = None
        self._video: _ColourVideo | None = None
        self._audio: _ToneAudio | None = None
        self._connected_evt: asyncio.Event | None = None

    # -- figures ------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return bool(self._pc) and self._pc.connectionState == "connected"

    @property
    def frames_sent(self) -> int:
        """Video frames handed to the encoder (audio frames if audio-only)."""
        t = self._video or self._audio
        return t.frames if t else 0

    @property
    def audio_frames_sent(self) -> int:
        return self._audio.frames if self._audio else 0

    @property
    def started_at(self) -> float | None:
        firsts = [t.first_wall for t in (self._video, self._audio) if t and t.first_wall is not None]
        return min(firsts) if firsts else None

    @property
    def published_seconds(self) -> float:
        assert self.started_at is not None and self.stopped_at is not None, "not started and stopped"
        return self.stopped_at - self.started_at

    def sync_marks(self) -> list[float]:
        """Sync mode: media times (s) of the marks whose flash frame was sent
        (their beeps too, when audio ran as long); their Unix times are
        `media_origin` + these."""
        assert self.pattern == "sync", "not a sync clip"
        return self.sync.marks(self.fps, self._video.frames if self._video else 0)

    def sender_report_errors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """Sync mode: for each sender report of the `kind` track, its media
        time (s) and how far its wall time is from when that media instant was
        due (ms): media_origin + media time. aiortc pairs the RTP time of the
        last packet sent with the time it was sent, so this is how late that
        packet left (encoding, a starved event loop); a receiver that maps
        RTP time to wall time by these reports inherits the error."""
        rows = [(m, (w - self.media_origin - m) * 1000) for k, w, m in self.sender_reports if k == kind]
        return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])

    def _watch_sender_reports(self) -> None:
        """Sync mode with `start_at`: logs every sender report in `sender_reports`. The RTP
        time of media time 0 is the first RTP packet's of each track (aiortc
        starts each track's RTP times at a random origin + its first frame's
        pts, which is 0)."""
        pc = self._pc
        kinds = {t.sender._ssrc: t.kind for t in pc.getTransceivers()}
        first_rtp: dict[int, int] = {}
        transport = pc.getTransceivers()[0].sender.transport  # bundled: the one transport
        send_rtp = transport._send_rtp

        async def sending_rtp(data: bytes) -> None:
            if len(data) >= 12 and not 192 <= data[1] <= 223:  # RTP, not RTCP (RFC 5761)
                ssrc = int.from_bytes(data[8:12], "big")
                if ssrc in kinds and ssrc not in first_rtp:
                    first_rtp[ssrc] = int.from_bytes(data[4:8], "big")
            await send_rtp(data)

        transport._send_rtp = sending_rtp
        for t in pc.getTransceivers():
            sender, ssrc, kind = t.sender, t.sender._ssrc, t.kind
            clock = VIDEO_CLOCK if kind == "video" else AUDIO_RATE

            async def sending_rtcp(packets, send=sender._send_rtcp, ssrc=ssrc, kind=kind, clock=clock) -> None:
                for sr in packets:
                    if isinstance(sr, RtcpSrPacket) and ssrc in first_rtp and sr.sender_info.ntp_timestamp:
                        ntp = sr.sender_info.ntp_timestamp
                        wall = (ntp >> 32) - NTP_UNIX_OFFSET + (ntp & 0xFFFFFFFF) / 2**32
                        media = ((sr.sender_info.rtp_timestamp - first_rtp[ssrc]) & 0xFFFFFFFF) / clock
                        self.sender_reports.append((kind, wall, media))
                await send(packets)

            sender._send_rtcp = sending_rtcp

    def _track_origin(self, loop: asyncio.AbstractEventLoop) -> float:
        """Loop time of a track's frame 0: when it is first asked for; in sync
        mode one origin for both tracks (`start_at`, or the first ask)."""
        if self.pattern != "sync":
            return loop.time()
        if self._origin_loop is None:
            now_loop, now = loop.time(), time.time()
            at = self.start_at if self.start_at is not None and self.start_at > now else now
            self._origin_loop = now_loop + (at - now)
            self.media_origin = at
        return self._origin_loop

    def stall(self, seconds: float) -> None:
        """Blocks the publisher's event loop for `seconds` (a starved sender:
        the frames due meanwhile are made and sent late, in a burst, with
        their pts on time)."""
        assert self._loop is not None, "not started"
        self._loop.call_soon_threadsafe(time.sleep, seconds)

    def send_keyframe(self) -> None:
        """Makes the next video frame a key frame (as a PLI would), whatever
        `ignore_keyframe_requests` says."""
        assert self._loop is not None and self._force_keyframe is not None, "no video being sent"
        self._loop.call_soon_threadsafe(self._force_keyframe)

    # -- the loop thread ----------------------------------------------------
    def _run(self, coro, timeout: float):
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _ensure_loop(self) -> None:
        if self._loop is not None:
            return
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def main():
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(ready.set)
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, name=f"aiortc {self.url}", daemon=True)
        self._thread.start()
        ready.wait(5)

    # -- start --------------------------------------------------------------
    async def _make_offer(self) -> str:
        # No STUN/TURN (nothing outside the box); one transport for every
        # m-line, as browsers do.
        self._pc = pc = RTCPeerConnection(RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE))
        self._connected_evt = asyncio.Event()

        @pc.on("connectionstatechange")
        def _changed():
            self.states.append(pc.connectionState)
            log.info("%s: connectionState %s", self.url, pc.connectionState)
            if pc.connectionState in ("connected", "failed", "closed"):
                self._connected_evt.set()

        if self.want_audio:
            self._audio = _ToneAudio(self)
            t = pc.addTransceiver(self._audio, direction="sendonly")
            t.setCodecPreferences(_preferred("audio", "audio/opus"))
        if self.want_video:
            self._video = _ColourVideo(self)
            t = pc.addTransceiver(self._video, direction="sendonly")
            t.setCodecPreferences(_preferred("video", "video/H264"))
            # aiortc answers PLI/FIR by RTCRtpSender._send_keyframe(): count them.
            sender = t.sender
            force = sender._send_keyframe
            self._force_keyframe = force

            def requested():
                self.keyframe_requests += 1
                self.keyframe_request_times.append(time.time())
                if not self.ignore_keyframe_requests:
                    force()

            sender._send_keyframe = requested
        offer = await pc.createOffer()
        # aiortc gathers every candidate here (non-trickle).
        await pc.setLocalDescription(offer)
        return pc.localDescription.sdp

    async def _apply_answer(self, sdp: str, timeout: float) -> None:
        pc = self._pc
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        # RFC 8843 §8.2 (BUNDLE): an answer carries ICE candidates in the
        # tagged (first) m= section only, as kiroku's does. aiortc 1.x with
        # max-bundle takes the remote candidates of the *last* m= section
        # sharing the transport (its `iceCandidates[transport] = media`
        # overwrites), i.e. none, and ICE never starts checking. Hand every
        # answered candidate to the one bundled ICE transport.
        transport = pc.getTransceivers()[0].sender.transport.transport
        known = {(c.ip, c.port, c.protocol) for c in transport.getRemoteCandidates()}
        for media in aiortc_sdp.SessionDescription.parse(sdp).media:
            for c in media.ice_candidates:
                if (c.ip, c.port, c.protocol) not in known:
                    known.add((c.ip, c.port, c.protocol))
                    await transport.addRemoteCandidate(c)
        try:
            await asyncio.wait_for(self._connected_evt.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def _diagnosis(self) -> str:
        pc = self._pc
        if pc is None:
            return "no peer connection"
        parts = [f"connectionState={pc.connectionState}", f"iceConnectionState={pc.iceConnectionState}",
                 f"iceGatheringState={pc.iceGatheringState}", f"states={self.states}"]
        for t in pc.getTransceivers():
            dtls = t.sender.transport
            ice = dtls.transport if dtls else None
            parts.append(f"{t.kind}: dtls={dtls.state if dtls else None} ice={ice.state if ice else None}")
            conn = getattr(ice.iceGatherer, "_connection", None) if ice else None  # aioice.Connection
            if conn is not None:
                parts.append(f"local={[c.to_sdp() for c in conn.local_candidates]}")
                parts.append(f"remote={[c.to_sdp() for c in conn.remote_candidates]}")
                checks = [(p.local_addr, p.remote_addr, p.state.name) for p in getattr(conn, "_check_list", [])]
                parts.append(f"checks={checks}")
            break  # bundled: one transport
        return "; ".join(parts)

    def start(self, timeout: float = 10.0) -> "Publisher":
        """POSTs the offer, applies the 201 answer and waits for 'connected'.

        Raises WhipError if the endpoint refuses the offer, ConnectError
        (with ICE/DTLS states and candidate pairs) if the connection does not
        come up within `timeout` seconds.
        """
        assert self._pc is None, "start() once"
        deadline = time.monotonic() + timeout
        self._ensure_loop()
        self.offer_sdp = self._run(self._make_offer(), timeout)
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        r = requests.post(self.url, data=self.offer_sdp.encode(), headers=headers, verify=self.verify,
                          timeout=max(1.0, deadline - time.monotonic()))
        if r.status_code != 201:
            self._close_quietly()
            raise WhipError(r.status_code, r.text, self.offer_sdp)
        ctype = r.headers.get("Content-Type", "")
        assert ctype.split(";")[0].strip() == "application/sdp", f"answer Content-Type {ctype!r}"
        location = r.headers.get("Location")
        assert location, "201 without Location"
        # Relative to where the offer was answered (a 307 may have moved it).
        self.session_url = urljoin(r.url, location)
        self.answer_sdp = r.text
        left = max(0.5, deadline - time.monotonic())
        self._run(self._apply_answer(self.answer_sdp, left), left + 5)
        if self._pc.connectionState != "connected":
            why = self._diagnosis()
            self._close_quietly()
            raise ConnectError(f"{self.url}: not connected within {timeout} s: {why}")
        if self.pattern == "sync" and self.start_at is not None and self.start_at > time.time():
            # Before the media starts, so that the first RTP packets are seen.
            self._loop.call_soon_threadsafe(self._watch_sender_reports)
        return self

    # -- stop ---------------------------------------------------------------
    async def _close(self) -> None:
        if self._pc is not None:
            await self._pc.close()

    def _close_quietly(self) -> None:
        try:
            if self._loop is not None:
                self._run(self._close(), 10)
        except Exception as e:  # noqa: BLE001 - best effort on an error path
            log.warning("closing %s: %s", self.url, e)
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(10)
            self._loop.close()
            self._loop = None

    def stop(self, delete: bool = True) -> None:
        """Ends the tracks, DELETEs the session (unless delete=False: vanish)
        and closes the peer connection. Idempotent."""
        if self._loop is None:
            return
        if not self._ending:
            self._ending = True
            self.stopped_at = time.time()
        if delete and self.session_url and self.delete_status is None:
            try:
                self.delete_status = requests.delete(self.session_url, timeout=10, verify=self.verify).status_code
            except requests.RequestException as e:
                log.warning("DELETE %s: %s", self.session_url, e)
                self.delete_status = -1
        self._close_quietly()

    def __enter__(self) -> "Publisher":
        if self._pc is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"Publisher({self.url}, color={self.color}, tone={self.tone_hz}, frames={self.frames_sent}, "
                f"audio_frames={self.audio_frames_sent}, states={self.states})")
