"""WHIP ingest end to end: `kiroku publish` and headless Chromium publish
into the real daemon; the status endpoint and metrics must show their media
at the right rates. Bad offers, auth, CORS, abrupt publisher death, and 1000
sessions opened and closed without leaking memory or sockets."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import requests
import TLSSigAPIv2

from kiroku_e2e import ADMIN_HEADERS, APP_ID, APP_SIG, KIROKU_BIN, REPO, USER_SIG_KEY, free_port, uniq, wait_until

OFFER = """v=0\r
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=group:BUNDLE 0 1\r
a=msid-semantic: WMS\r
m=audio 9 UDP/TLS/RTP/SAVPF 111\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=ice-ufrag:abcd\r
a=ice-pwd:abcdefghijklmnopqrstuvwx\r
a=fingerprint:sha-256 12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0\r
a=setup:actpass\r
a=mid:0\r
a=sendonly\r
a=rtcp-mux\r
a=rtpmap:111 opus/48000/2\r
a=fmtp:111 minptime=10;useinbandfec=1\r
a=ssrc:1111 cname:whiptest\r
m=video 9 UDP/TLS/RTP/SAVPF 96 102\r
c=IN IP4 0.0.0.0\r
a=rtcp:9 IN IP4 0.0.0.0\r
a=ice-ufrag:abcd\r
a=ice-pwd:abcdefghijklmnopqrstuvwx\r
a=fingerprint:sha-256 12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0:12:34:56:78:9A:BC:DE:F0\r
a=setup:actpass\r
a=mid:1\r
a=sendonly\r
a=rtcp-mux\r
a=rtcp-fb:102 nack\r
a=rtcp-fb:102 nack pli\r
a=rtpmap:96 VP8/90000\r
a=rtpmap:102 H264/90000\r
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r
a=ssrc:2222 cname:whiptest\r
"""


def vp8_only(offer: str) -> str:
    return offer.replace(" 96 102\r", " 96\r").replace("a=rtpmap:102 H264/90000\r\n", "").replace(
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n", "")


def no_opus(offer: str) -> str:
    return offer.replace("SAVPF 111\r", "SAVPF 0\r").replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000").replace(
        "a=fmtp:111 minptime=10;useinbandfec=1\r\n", "")


@pytest.fixture(scope="module")
def whipd(kiroku_module):
    return kiroku_module("whip")


def whip_url(d, room, user, aux=False, app=APP_ID):
    return f"{d.url}/whip/{app}/{room}/{user}" + ("/aux" if aux else "")


def post_offer(d, room, user, sdp=OFFER, ctype="application/sdp", token=None, app=APP_ID, aux=False):
    headers = {"Content-Type": ctype}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(whip_url(d, room, user, aux, app), data=sdp.encode(), headers=headers, timeout=10)


def rooms(d) -> list[dict]:
    r = requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    return r.json()["rooms"]


def user_status(d, room, user) -> dict | None:
    for r in rooms(d):
        if str(r["room_id"]) == str(room):
            for u in r["users"]:
                if u["user_id"] == user:
                    return u
    return None


def tracks(u: dict) -> dict:
    return {t["kind"]: t for t in u["tracks"]}


def publish(d, room, user, *args, duration=8.0):
    return subprocess.Popen(
        [KIROKU_BIN, "publish", "--url", d.url, "--room", str(room), "--user", user, "--duration", str(duration), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kiroku_publish_shows_media_at_the_right_rates(whipd):
    room = 4101
    before = whipd.metric_baseline("kiroku_ingest_frames_total", {"track": "main_video"})
    p = publish(whipd, room, "pub", "--count", "2", "--aux", "--fps", "15", duration=7)
    # Let the frame-rate windows fill, then look.
    wait_until(lambda: (u := user_status(whipd, room, "pub_2")) and len(u["tracks"]) == 3
               and tracks(u)["main_video"]["frames"] > 45, 15, 0.2, "pub_2 publishing three tracks")
    status = {u: user_status(whipd, room, u) for u in ("pub_1", "pub_2")}
    for name, u in status.items():
        t = tracks(u)
        assert set(t) == {"audio", "main_video", "aux_video"}, name
        assert t["audio"]["codec"] == "opus" and t["main_video"]["codec"] == "h264"
        assert 40 <= t["audio"]["frame_rate"] <= 60, (name, t["audio"])
        for kind in ("main_video", "aux_video"):
            assert 12 <= t[kind]["frame_rate"] <= 18, (name, t[kind])
            assert (t[kind]["width"], t[kind]["height"]) == (640, 360)
            assert t[kind]["state"] == "publishing" and t[kind]["keyframes"] >= 1
        assert {s["stream"] for s in u["sessions"]} == {"main", "aux"}
        assert all(s["packets"] > 0 for s in u["sessions"])
    # `--count 2` starts both publishers at once: either may join first.
    users = [u for r in rooms(whipd) if r["room_id"] == room for u in r["users"]]
    assert {u["user_id"] for u in users} == {"pub_1", "pub_2"}
    joined = [u["joined_at_ms"] for u in users]
    assert joined == sorted(joined), f"users in join order: {users}"
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "4 session(s), 4 connected" in out, out
    # The publisher's DELETE ends the sessions: the users leave.
    wait_until(lambda: user_status(whipd, room, "pub_1") is None, 5, 0.1, "pub_1 to leave after DELETE")
    assert whipd.metric("kiroku_ingest_frames_total", {"track": "main_video"}) - before > 150
    assert whipd.metric("kiroku_whip_sessions_ended_total", {"reason": "deleted"}) >= 4


def test_string_rooms_are_separate_from_integer_rooms(whipd):
    p1 = publish(whipd, 4102, "int_user", duration=4)
    p2 = publish(whipd, 4102, "str_user", "--string-room", duration=4)
    wait_until(lambda: user_status(whipd, 4102, "str_user") and user_status(whipd, 4102, "int_user"), 10, 0.2)
    by_type = {(r["room_id"], r["room_id_type"]): [u["user_id"] for u in r["users"]] for r in rooms(whipd)}
    assert by_type[(4102, "integer")] == ["int_user"]
    assert by_type[("4102", "string")] == ["str_user"]
    for p in (p1, p2):
        p.communicate(timeout=30)
        assert p.returncode == 0


def test_a_publisher_that_vanishes_leaves_after_the_ice_timeout(whipd):
    room = 4103
    before = whipd.metric_baseline("kiroku_whip_sessions_ended_total", {"reason": "ice_timeout"})
    p = publish(whipd, room, "ghost", "--no-delete", duration=3)
    wait_until(lambda: user_status(whipd, room, "ghost"), 10, 0.1, "ghost to join")
    p.communicate(timeout=30)
    assert p.returncode == 0
    assert user_status(whipd, room, "ghost") is not None, "still there right after vanishing"
    left = time.monotonic()
    wait_until(lambda: user_status(whipd, room, "ghost") is None, 40, 0.25, "ghost to leave without DELETE")
    assert time.monotonic() - left < 40
    assert whipd.metric("kiroku_whip_sessions_ended_total", {"reason": "ice_timeout"}) > before


def test_publishing_again_replaces_the_old_session(whipd):
    room = 4104
    r1 = post_offer(whipd, room, "twice")
    r2 = post_offer(whipd, room, "twice")
    assert r1.status_code == r2.status_code == 201
    gone = requests.delete(whipd.url + r1.headers["Location"], timeout=5)
    assert gone.status_code == 404, "the first session was replaced by the second"
    assert requests.delete(whipd.url + r2.headers["Location"], timeout=5).status_code == 200


def test_bad_offers_get_specific_errors(whipd):
    room = 4105
    r = post_offer(whipd, room, "u1", sdp="this is not sdp")
    assert r.status_code == 400 and "SDP" in r.text, r.text
    r = post_offer(whipd, room, "u1", ctype="application/json")
    assert r.status_code == 415 and "application/sdp" in r.text
    r = post_offer(whipd, room, "u1", sdp=vp8_only(OFFER))
    assert r.status_code == 422 and "H.264" in r.text and "VP8" in r.text, r.text
    r = post_offer(whipd, room, "u1", sdp=no_opus(OFFER))
    assert r.status_code == 422 and "Opus" in r.text and "PCMU" in r.text, r.text
    r = post_offer(whipd, room, "u1", sdp=OFFER.replace("a=sendonly", "a=recvonly"))
    assert r.status_code == 422, r.text
    r = post_offer(whipd, room, "u1", app=1499999999)
    assert r.status_code == 404 and "1499999999" in r.text
    r = post_offer(whipd, "not-a-number", "u1")
    assert r.status_code == 400 and "roomType" in r.text, r.text
    r = post_offer(whipd, room, "bad user!")
    assert r.status_code == 400
    r = requests.post(whip_url(whipd, room, "u1"), data=b"\xff\xfe\x00garbage", headers={"Content-Type": "application/sdp"}, timeout=5)
    assert r.status_code == 400
    assert r.headers.get("Access-Control-Allow-Origin") == "*", "errors carry CORS too"
    assert whipd.metric("kiroku_whip_sessions_refused_total", {"status": "422"}) >= 3
    assert requests.get(whipd.url + "/healthz", timeout=5).text.strip() == "ok"


def test_usersig_is_required_and_verified(whipd):
    room = 4106
    user = uniq("sig")
    r = post_offer(whipd, room, user, app=APP_SIG)
    assert r.status_code == 401 and "Bearer" in r.text
    good = TLSSigAPIv2.TLSSigAPIv2(APP_SIG, USER_SIG_KEY).gen_sig(user, 3600)
    wrong_key = TLSSigAPIv2.TLSSigAPIv2(APP_SIG, "not-the-key").gen_sig(user, 3600)
    other_user = TLSSigAPIv2.TLSSigAPIv2(APP_SIG, USER_SIG_KEY).gen_sig("someone_else", 3600)
    real_time = time.time
    try:
        TLSSigAPIv2.time.time = lambda: real_time() - 7200  # issued 2 h ago, valid for 1 h
        expired = TLSSigAPIv2.TLSSigAPIv2(APP_SIG, USER_SIG_KEY).gen_sig(user, 3600)
    finally:
        TLSSigAPIv2.time.time = real_time
    for bad, why in ((wrong_key, "signature"), (other_user, "someone_else"), (expired, "expired"), ("garbage", "")):
        r = post_offer(whipd, room, user, app=APP_SIG, token=bad)
        assert r.status_code == 401, (why, r.status_code, r.text)
        assert why.lower() in r.text.lower(), (why, r.text)
    r = post_offer(whipd, room, user, app=APP_SIG, token=good)
    assert r.status_code == 201, r.text
    assert requests.delete(whipd.url + r.headers["Location"], timeout=5).status_code == 200


def test_session_resource_cors_patch_delete(whipd):
    r = requests.options(whip_url(whipd, 4107, "u"), headers={"Origin": "http://example.test",
                                                             "Access-Control-Request-Method": "POST"}, timeout=5)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in r.headers["Access-Control-Allow-Methods"]
    assert "authorization" in r.headers["Access-Control-Allow-Headers"].lower()
    r = post_offer(whipd, 4107, "u")
    assert r.status_code == 201 and r.headers["Content-Type"] == "application/sdp"
    assert r.text.startswith("v=0") and "a=ice-lite" in r.text and "H264" in r.text
    assert "Location" in r.headers["Access-Control-Expose-Headers"]
    loc, etag = whipd.url + r.headers["Location"], r.headers["ETag"]
    frag = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\n"
    patch = partial(requests.patch, loc, data=frag, timeout=5)
    assert patch(headers={"Content-Type": "application/sdp"}).status_code == 415
    assert patch(headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": '"stale"'}).status_code == 412
    assert patch(headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}).status_code == 422
    assert patch(headers={"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": etag}).status_code == 204
    assert requests.delete(loc, timeout=5).status_code == 200
    assert requests.delete(loc, timeout=5).status_code == 404
    assert requests.patch(loc, data=frag, headers={"Content-Type": "application/trickle-ice-sdpfrag"}, timeout=5).status_code == 404


def _proc_usage(pid: int) -> tuple[int, int]:
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return rss_kb, len(os.listdir(f"/proc/{pid}/fd"))


def test_a_thousand_sessions_do_not_leak(kiroku):
    # A thousand offers in seconds from one address into one room: the
    # offer limits (test_whip_limits.py) are lifted, this is about leaks.
    d = kiroku("leak", ingest={"offers_per_minute_per_address": 1_000_000, "offers_per_minute_per_app": 1_000_000,
                               "offers_per_minute_per_room": 1_000_000})
    pid = d.proc.pid
    s = requests.Session()

    def cycle(n):
        for i in range(n):
            r = s.post(whip_url(d, 4108, f"u{i % 50}"), data=OFFER.encode(), headers={"Content-Type": "application/sdp"}, timeout=10)
            assert r.status_code == 201, r.text
            assert s.delete(d.url + r.headers["Location"], timeout=10).status_code == 200

    cycle(100)
    wait_until(lambda: d.metric("kiroku_ingest_peers") == 0, 10, 0.1, "peers to be released")
    rss0, fds0 = _proc_usage(pid)
    cycle(900)
    wait_until(lambda: d.metric("kiroku_ingest_peers") == 0, 10, 0.1, "peers to be released")
    rss1, fds1 = _proc_usage(pid)
    assert fds1 <= fds0 + 3, f"file descriptors grew from {fds0} to {fds1}"
    assert rss1 - rss0 < 30_000, f"RSS grew by {rss1 - rss0} kB over 900 sessions"
    assert requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5).json()["sessions"] == 0
    assert d.metric("kiroku_whip_sessions_created_total") == 1000


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a):
        pass


def start_chromium(url: str, tmp_path: Path) -> subprocess.Popen:
    """Headless Chromium on `url` with the fake camera and microphone, in a
    session of its own (kill it with os.killpg); its log in tmp_path/chrome.log."""
    return subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-quic", f"--user-data-dir={tmp_path / 'chrome'}", "--use-fake-device-for-media-stream",
         "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection", "--enable-logging=stderr", url],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "chrome.log", "wb"), start_new_session=True)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (tests/run-all.sh installs it)")
def test_headless_chromium_publishes_h264_and_opus(whipd, tmp_path):
    page_port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", page_port), partial(_Quiet, directory=str(REPO / "tests" / "whip")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    room, user = 4109, "browser"
    # The page is on another origin than the daemon: CORS is exercised for real.
    url = f"http://127.0.0.1:{page_port}/publish.html?whip={whip_url(whipd, room, user)}"
    chrome = start_chromium(url, tmp_path)
    try:
        def flowing():
            u = user_status(whipd, room, user)
            if not u:
                return None
            t = tracks(u)
            ok = "audio" in t and "main_video" in t and t["main_video"]["frames"] > 60 and t["audio"]["frames"] > 200
            return u if ok else None
        u = wait_until(flowing, 45, 0.5, "the browser's audio and video to flow")
        t = tracks(u)
        assert t["main_video"]["codec"] == "h264" and t["audio"]["codec"] == "opus"
        assert 8 <= t["main_video"]["frame_rate"] <= 31, t["main_video"]
        assert 40 <= t["audio"]["frame_rate"] <= 60, t["audio"]
        assert t["main_video"]["width"] and t["main_video"]["height"]
    except AssertionError:
        print((tmp_path / "chrome.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        os.killpg(chrome.pid, signal.SIGKILL)
        chrome.wait(10)
        server.shutdown()
    # The browser died without DELETE: its user leaves after the ICE timeout.
    wait_until(lambda: user_status(whipd, room, user) is None, 40, 0.25, "the killed browser to leave")
