#!/usr/bin/python3
"""Publish a test pattern and a tone to a WHIP endpoint with GStreamer's
webrtcbin (Debian's GStreamer, python3-gi), non-trickle: the offer is POSTed
once ICE gathering is complete.

    gst_whip.py --url http://127.0.0.1:8080/whip/1400000001/1234/alice --duration 8

Exit status: 0 when the peer connection reached 'connected' and RTP flowed
(webrtcbin's outbound-rtp stats count packets for every track and, for a
kiroku WHIP URL unless --no-verify-rooms, kiroku's GET /v1/rooms shows frames
for them; --require-rr also wants an RTCP receiver report); 1 with a reason
on stderr otherwise (2 for HTTP/signalling errors).

The last line on stdout is always one JSON object (for tests): `ok`, `code`,
`reason`, `connected_at` (Unix s when webrtcbin's connection-state became
'connected', i.e. ICE and DTLS done: no media reaches the peer before),
`stopped_at` (Unix s just before the WHIP DELETE, which ends the session at
the peer; media flows until then), `published_seconds` (their difference,
null if never connected), `sent` (RTP packets per kind), `ice_states`,
`states`.

Two things a GStreamer 1.22 publisher needs to reach kiroku (both off by
default, so that the script shows the failures as a user meets them):
  --local-address 127.0.0.1  when kiroku's candidate is on loopback: libnice
      gathers no loopback candidate and pins each socket to its interface
      (IP_UNICAST_IF), so its checks from e.g. 192.0.2.2 to 127.0.0.1 leave
      on eth0 and never arrive (ICE 'failed').
  --cert-curve prime256v1    replaces webrtcbin's own RSA-2048 DTLS
      certificate with an ECDSA one (kiroku verifies both; stock dimpl, str0m's
      DTLS, verified only ECDSA P-256/P-384: vendor/README.md).

What it sends is what GStreamer's WebRTC examples and webrtcsink send:
x264enc tune=zerolatency (sliced threads: on a multi-core box each picture
is several slices) and rtph264pay config-interval=-1 aggregate-mode=
zero-latency, which puts SPS/PPS before every IDR *slice*: an IDR access
unit goes out as STAP-A [AUD SPS PPS SEI SPS PPS IDR] + STAP-A [SPS PPS IDR]
(same timestamp, marker on the last). --single-slice avoids that.

Needs: gstreamer1.0-plugins-{bad,good,ugly} gstreamer1.0-nice python3-gi
gir1.2-gst-plugins-bad-1.0 gir1.2-gstreamer-1.0, gir1.2-nice-0.1 for
--local-address, the openssl CLI for --cert-curve (run with Debian's
/usr/bin/python3, which has `gi`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import gi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kiroku_status  # noqa: E402

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402


def log(*a):
    print(f"[gst_whip {time.monotonic():.3f}]", *a, file=sys.stderr, flush=True)


def pipeline_desc(args) -> str:
    parts = [
        f"webrtcbin name=w bundle-policy={args.bundle_policy} latency=0",
    ]
    if not args.no_video:
        parts.append(
            "videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 "
            "! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=30 bitrate=500 "
            + ("sliced-threads=false " if args.single_slice else "")
            + "! video/x-h264,profile=constrained-baseline "
            "! rtph264pay config-interval=-1 aggregate-mode=zero-latency "
            "! application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000 ! w."
        )
    if not args.no_audio:
        parts.append(
            "audiotestsrc is-live=true wave=sine freq=440 ! audioconvert ! audioresample "
            "! opusenc frame-size=20 ! rtpopuspay "
            "! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! w."
        )
    return " ".join(parts)


def ssrc_kinds(sdp: str) -> dict:
    """SSRC -> media kind ('audio'/'video') from an SDP's a=ssrc lines."""
    kinds, kind = {}, None
    for line in sdp.splitlines():
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
        elif line.startswith("a=ssrc:") and kind:
            kinds[int(line[7:].split(" ", 1)[0])] = kind
    return kinds


def make_pem(curve: str) -> str:
    """An ECDSA certificate and key (PEM, cert first) made with the openssl CLI."""
    with tempfile.TemporaryDirectory() as d:
        key, cert = os.path.join(d, "key.pem"), os.path.join(d, "cert.pem")
        subprocess.run(["openssl", "ecparam", "-name", curve, "-genkey", "-noout", "-out", key], check=True)
        subprocess.run(["openssl", "req", "-new", "-x509", "-key", key, "-out", cert, "-days", "30",
                        "-subj", "/CN=gst-whip", "-sha256"], check=True)
        with open(cert) as c, open(key) as k:
            return c.read() + k.read()


def pem_fingerprint(pem: str) -> str:
    """`sha-256 AB:CD:...` of the certificate in `pem`."""
    out = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256"], input=pem,
                         capture_output=True, text=True, check=True).stdout
    return "sha-256 " + out.strip().split("=", 1)[1]


class Publisher:
    def __init__(self, args):
        self.args = args
        self.loop = GLib.MainLoop()
        self.pipe = Gst.parse_launch(pipeline_desc(args))
        self.w = self.pipe.get_by_name("w")
        self.configure_ice()
        self.pem = make_pem(args.cert_curve) if args.cert_curve != "rsa" else None
        self.pem_applied = False
        if self.pem:
            self.pipe.connect("deep-element-added", self.on_element_added)
        self.result: tuple[int, str] | None = None
        self.location: str | None = None
        self.offer_sdp: str | None = None
        self.answer_sdp: str | None = None
        self.connected_at: float | None = None
        self.connected_wall: float | None = None
        self.stopped_wall: float | None = None
        self.sent: dict = {}
        self.states: list[str] = []
        self.ice_states: list[str] = []
        self.w.connect("on-negotiation-needed", self.on_negotiation_needed)
        self.w.connect("notify::ice-gathering-state", self.on_gathering)
        self.w.connect("notify::connection-state", self.on_conn_state)
        self.w.connect("notify::ice-connection-state", self.on_ice_state)
        bus = self.pipe.get_bus()
        bus.add_signal_watch()
        bus.connect("message::error", self.on_error)
        self.posted = False

    def configure_ice(self):
        """No UPnP (libnice's gupnp-igd multicasts SSDP M-SEARCH to
        239.255.255.250 on every interface) and no ICE-TCP; with
        --local-address, gather host candidates only on those addresses
        (libnice skips loopback interfaces when it enumerates them)."""
        if self.args.local_address:
            # Nice's typelib must be loaded before the agent gets a Python
            # wrapper, or the wrapper lacks NiceAgent's methods.
            gi.require_version("Nice", "0.1")
            from gi.repository import Nice
        # Keep the Python wrappers alive as long as the pipeline: PyGObject
        # (3.42) drops one reference too many when they are collected, which
        # frees webrtcbin's ICE agent under it (criticals, then a crash).
        self._ice = ice = self.w.get_property("ice-agent")
        ice.set_property("ice-tcp", False)
        self._agent = agent = ice.get_property("agent")
        agent.set_property("upnp", False)
        agent.set_property("ice-tcp", False)
        for ip in self.args.local_address:
            addr = Nice.Address.new()
            if not addr.set_from_string(ip):
                raise SystemExit(f"--local-address {ip!r} is not an IP address")
            agent.add_local_address(addr)

    def on_element_added(self, _bin, _sub, element):
        # webrtcbin's DTLS elements generate an RSA-2048 certificate; hand
        # them ours before the offer's fingerprint is computed from it.
        if element.get_factory() and element.get_factory().get_name() in ("dtlssrtpdec", "dtlsdec"):
            element.set_property("pem", self.pem)
            self.pem_applied = True
            log(f"DTLS certificate of {element.get_name()} replaced ({self.args.cert_curve})")

    # -- helpers ---------------------------------------------------------
    def finish(self, code: int, why: str):
        if self.result is None:
            self.result = (code, why)
            GLib.idle_add(self.loop.quit)

    def on_error(self, _bus, msg):
        err, dbg = msg.parse_error()
        hint = ""
        if "dtls" in (dbg or "").lower() and not self.pem:
            hint = (" [DTLS failed with webrtcbin's own RSA-2048 certificate: a server whose DTLS verifies "
                    "only ECDSA (stock str0m/dimpl) refuses it; try --cert-curve prime256v1]")
        self.finish(1, f"pipeline error: {err.message} ({dbg}){hint}")

    def ice_hint(self) -> str:
        if any(st in ("connected", "completed") for st in self.ice_states):
            if self.pem:
                return " [ICE connected, DTLS failed]"
            return (" [ICE connected, DTLS failed with webrtcbin's own RSA-2048 certificate: a server whose "
                    "DTLS verifies only ECDSA (stock str0m/dimpl) refuses it; try --cert-curve prime256v1]")
        def loopback_candidates(sdp):
            return [line for line in (sdp or "").splitlines()
                    if line.startswith("a=candidate:") and " 127." in line]
        if loopback_candidates(self.answer_sdp) and not loopback_candidates(self.offer_sdp):
            return (" [kiroku's candidate is on loopback but libnice gathered none there; libnice pins its "
                    "sockets to their interface (IP_UNICAST_IF), so checks to 127.0.0.1 never arrive: "
                    "try --local-address 127.0.0.1]")
        return ""

    # -- negotiation -----------------------------------------------------
    def on_negotiation_needed(self, _w):
        log("negotiation needed: creating the offer")
        p = Gst.Promise.new_with_change_func(self.on_offer_created, None)
        self.w.emit("create-offer", None, p)

    def on_offer_created(self, promise, _data):
        promise.wait()
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.w.emit("set-local-description", offer, Gst.Promise.new())
        log("local description set; gathering candidates")

    def on_gathering(self, _w, _pspec):
        state = self.w.get_property("ice-gathering-state")
        log("ice-gathering-state", state.value_nick)
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE and not self.posted:
            self.posted = True
            threading.Thread(target=self.post_offer, daemon=True).start()

    def post_offer(self):
        desc = self.w.get_property("local-description")
        sdp = desc.sdp.as_text()
        if self.pem:
            # webrtcbin computed the offer's fingerprint from the RSA
            # certificate its DTLS elements started with, before
            # deep-element-added let us swap in ours: put ours in the offer.
            if not self.pem_applied:
                GLib.idle_add(self.finish, 2, "the DTLS elements were never seen: certificate not replaced")
                return
            fp = pem_fingerprint(self.pem)
            sdp = "\r\n".join(f"a=fingerprint:{fp}" if line.startswith("a=fingerprint:") else line
                               for line in sdp.split("\r\n"))
        self.offer_sdp = sdp
        if self.args.dump_sdp:
            log("OFFER:\n" + sdp)
        headers = {"Content-Type": "application/sdp"}
        if self.args.token:
            headers["Authorization"] = f"Bearer {self.args.token}"
        req = urllib.request.Request(self.args.url, data=sdp.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status = r.status
                body = r.read().decode()
                loc = r.headers.get("Location")
        except urllib.error.HTTPError as e:
            GLib.idle_add(self.finish, 2, f"WHIP POST answered {e.code}: {e.read().decode(errors='replace').strip()}")
            return
        except OSError as e:
            GLib.idle_add(self.finish, 2, f"WHIP POST failed: {e}")
            return
        log(f"POST -> {status}, Location {loc}")
        if status != 201:
            GLib.idle_add(self.finish, 2, f"WHIP POST answered {status}, not 201")
            return
        self.location = urllib.parse.urljoin(self.args.url, loc) if loc else None
        self.answer_sdp = body
        if self.args.dump_sdp:
            log("ANSWER:\n" + body)
        GLib.idle_add(self.apply_answer, body)

    def apply_answer(self, body: str):
        res, msg = GstSdp.SDPMessage.new_from_text(body)
        if res != GstSdp.SDPResult.OK:
            self.finish(2, "the answer is not SDP")
            return False
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        self.w.emit("set-remote-description", answer, Gst.Promise.new())
        log("remote description set")
        return False

    # -- state ------------------------------------------------------------
    def on_conn_state(self, _w, _pspec):
        st = self.w.get_property("connection-state").value_nick
        self.states.append(st)
        log("connection-state", st)
        if self.result is not None:
            # Decided already: webrtcbin 1.22 reports 'connected' while the
            # pipeline shuts down after a failed DTLS handshake; ignore it.
            return
        if st == "connected" and self.connected_at is None:
            self.connected_at = time.monotonic()
            self.connected_wall = time.time()
            GLib.timeout_add(int(self.args.duration * 1000), self.check_media)
        elif st == "failed":
            self.finish(1, "connection-state became 'failed'" + self.ice_hint())

    def on_ice_state(self, _w, _pspec):
        st = self.w.get_property("ice-connection-state").value_nick
        self.ice_states.append(st)
        log("ice-connection-state", st)

    def check_media(self):
        p = Gst.Promise.new_with_change_func(self.on_stats, None)
        self.w.emit("get-stats", None, p)
        return False

    def on_stats(self, promise, _data):
        promise.wait()
        stats = promise.get_reply()
        sent = {}
        received_by_peer = {}

        # GStreamer 1.22 labels every outbound-rtp entry of a bundle with
        # the kind of one codec (kind=audio twice): map SSRCs to kinds with
        # the offer's a=ssrc lines instead.
        kind_of = ssrc_kinds(self.offer_sdp or "")

        def each(_field, value, _u):
            if isinstance(value, Gst.Structure):
                t = value.get_value("type")
                nick = t.value_nick if hasattr(t, "value_nick") else str(t)
                if os.environ.get("GST_WHIP_DUMP_STATS"):
                    log("stats:", value.to_string())
                ssrc = value.get_value("ssrc") if value.has_field("ssrc") else None
                kind = kind_of.get(ssrc) or (value.get_value("kind") if value.has_field("kind") else "?")
                if nick == "outbound-rtp":
                    sent[kind] = sent.get(kind, 0) + (value.get_value("packets-sent") if value.has_field("packets-sent") else 0)
                elif nick == "remote-inbound-rtp":
                    received_by_peer[kind] = value.get_value("packets-received") if value.has_field("packets-received") else 0
            return True

        stats.foreach(each, None)
        log("outbound packets sent:", sent, "| peer reports received:", received_by_peer)
        self.sent = dict(sent)
        GLib.idle_add(self.judge, sent, received_by_peer)

    def judge(self, sent, received_by_peer):
        want = [k for k, skip in (("video", self.args.no_video), ("audio", self.args.no_audio)) if not skip]
        missing = [k for k in want if not sent.get(k)]
        server = ""
        if not self.args.no_verify_rooms and kiroku_status.parse_whip_url(self.args.url):
            try:
                tracks = kiroku_status.user_tracks(self.args.url)
            except OSError as e:
                tracks = None
                server = f"; /v1/rooms failed: {e}"
            if tracks is not None:
                server = "; kiroku shows " + ", ".join(f"{k}: {t['frames']} frames" for k, t in sorted(tracks.items()))
            kinds = {"video": "aux_video" if "/aux" in self.args.url else "main_video", "audio": "audio"}
            no_frames = [k for k in want if not (tracks or {}).get(kinds[k], {}).get("frames")]
            if "/aux" in self.args.url and "audio" in no_frames:
                no_frames.remove("audio")  # kiroku does not record audio on aux
            if no_frames and not missing:
                self.finish(1, f"RTP sent {sent} but kiroku got no frames for {no_frames}{server or '; user not in the room'}")
                return False
        if missing:
            self.finish(1, f"connected but no RTP sent for {missing}: {sent}")
        elif self.args.require_rr and not any(received_by_peer.values()):
            self.finish(1, f"RTP sent {sent} but no receiver report says it arrived: {received_by_peer}")
        else:
            self.finish(0, f"connected; RTP sent {sent}; peer reports received {received_by_peer}{server}")
        return False

    # -- run ----------------------------------------------------------------
    def run(self) -> int:
        self.pipe.set_state(Gst.State.PLAYING)
        GLib.timeout_add(int(self.args.connect_timeout * 1000), self.on_connect_timeout)
        self.loop.run()
        # Media flows until the DELETE (or the pipeline stops).
        self.stopped_wall = time.time()
        if self.location and not self.args.no_delete:
            try:
                urllib.request.urlopen(urllib.request.Request(self.location, method="DELETE"), timeout=5).read()
            except OSError as e:
                log("DELETE failed:", e)
        self.pipe.set_state(Gst.State.NULL)
        code, why = self.result or (1, "no result")
        print(("OK: " if code == 0 else "FAIL: ") + why, file=sys.stderr if code else sys.stdout)
        published = (self.stopped_wall - self.connected_wall) if self.connected_wall is not None else None
        print(json.dumps({"client": "gstreamer", "ok": code == 0, "code": code, "reason": why,
                          "connected_at": self.connected_wall, "stopped_at": self.stopped_wall,
                          "published_seconds": published, "sent": self.sent, "states": self.states,
                          "ice_states": self.ice_states, "gstreamer": Gst.version_string()}), flush=True)
        return code

    def on_connect_timeout(self):
        if self.connected_at is None:
            self.finish(1, f"not connected within {self.args.connect_timeout}s (states: {self.states})" + self.ice_hint())
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="WHIP endpoint URL")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds to publish once connected")
    ap.add_argument("--connect-timeout", type=float, default=20.0)
    ap.add_argument("--token", help="Bearer token (UserSig)")
    ap.add_argument("--bundle-policy", default="max-bundle", choices=["none", "balanced", "max-compat", "max-bundle"])
    ap.add_argument("--cert-curve", default="rsa",
                    help="DTLS certificate: 'rsa' keeps webrtcbin's own (RSA-2048, GStreamer 1.22's only kind); "
                         "an OpenSSL curve name (prime256v1, secp384r1) makes an ECDSA one")
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--no-delete", action="store_true")
    ap.add_argument("--no-verify-rooms", action="store_true",
                    help="do not check kiroku's GET /v1/rooms for the published frames")
    ap.add_argument("--require-rr", action="store_true", help="also require an RTCP receiver report from the peer")
    ap.add_argument("--local-address", action="append", default=[],
                    help="gather ICE host candidates only on this address (repeatable; e.g. 127.0.0.1). "
                         "Needs gir1.2-nice-0.1")
    ap.add_argument("--single-slice", action="store_true",
                    help="x264enc sliced-threads=false: one slice per picture. By default (tune=zerolatency on a "
                         "multi-core box) x264 cuts each picture into several slices and rtph264pay "
                         "(config-interval=-1) sends SPS/PPS before *every* IDR slice, so an IDR access unit "
                         "carries SPS/PPS between its slices")
    ap.add_argument("--dump-sdp", action="store_true")
    args = ap.parse_args()
    Gst.init(None)
    return Publisher(args).run()


if __name__ == "__main__":
    sys.exit(main())
