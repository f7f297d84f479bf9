"""WHIP offer limits against the real daemon (docs/security.md, issue 15):
offers per client address, per app and per room (429 + Retry-After), a
bound on sessions whose peer has not connected (503), a flood of offers
from many addresses that must leave memory bounded and the daemon serving,
and the UDP router refusing STUN binding requests whose MESSAGE-INTEGRITY
does not verify with the peer's ICE password.

Offers are sent with http.client from chosen loopback source addresses
(127.0.0.N, all routed to lo on Linux), so that each "client" has an
address of its own; real publishing is done by aiortc
(tests/e2e/independent_publisher.py) and judged with ffprobe."""

from __future__ import annotations

import http.client
import math
import os
import re
import socket
import threading
import time
from pathlib import Path

import pytest
import TLSSigAPIv2

from kiroku_e2e import (APP_ID, APP_ID2, APP_SIG, USER_SIG_KEY, create_params, metric_value,
                        wait_until)
from recording import decode_ok, decoded_video_frames, parse_playlist, segments_seconds, single_base, task_files
from test_whip import OFFER

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
from aioice import stun  # noqa: E402  (aiortc's ICE agent)
from independent_publisher import Publisher, whip_url  # noqa: E402

FPS = 15


# --------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------

class Answer:
    """One HTTP answer: status, headers (lower-case names), body text."""

    def __init__(self, status: int, headers: dict, body: str):
        self.status, self.headers, self.body = status, headers, body

    @property
    def retry_after(self) -> str | None:
        return self.headers.get("retry-after")

    @property
    def location(self) -> str | None:
        return self.headers.get("location")

    def __repr__(self) -> str:
        return f"Answer({self.status}, Retry-After={self.retry_after!r}, {self.body[:200]!r})"


def _request(d, method: str, path: str, source: str, body: bytes = b"", headers: dict | None = None,
             timeout: float = 15) -> Answer:
    """One request on a fresh connection from `source` (a loopback address)."""
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=timeout, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode(errors="replace"))
    finally:
        conn.close()


def offer(d, room, user, *, source: str = "127.0.0.1", app: int = APP_ID, token: str | None = None,
          sdp: str = OFFER) -> Answer:
    """POSTs a WHIP offer (test_whip's str0m-answerable OFFER by default)."""
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return _request(d, "POST", f"/whip/{app}/{room}/{user}", source, sdp.encode(), headers)


def delete(d, location: str, source: str = "127.0.0.1") -> int:
    """DELETEs a session by its resource URL (the 201's Location)."""
    return _request(d, "DELETE", location, source).status


def metrics_text(d, source: str = "127.0.0.2") -> str:
    """/metrics read from `source` (not an address whose limits a test spends)."""
    a = _request(d, "GET", "/metrics", source, timeout=5)
    assert a.status == 200, a
    return a.body


def metric(d, name: str, labels: dict | None = None, **kw) -> float:
    return metric_value(metrics_text(d), name, labels, **kw)


def limited(d, limit: str) -> float:
    """kiroku_whip_offers_limited_total{limit}: strict once the family
    exists (another limit's child may be there), 0 for a child not yet made."""
    return metric_value(metrics_text(d), "kiroku_whip_offers_limited_total", {"limit": limit}, default=0.0)


def user_sig(user: str, key: str = USER_SIG_KEY) -> str:
    return TLSSigAPIv2.TLSSigAPIv2(APP_SIG, key).gen_sig(user, 3600)


def assert_too_many(a: Answer, key: str, limit: int, at_most_elapsed: float) -> int:
    """A 429 naming `ingest.<key>` whose Retry-After is the wait for one
    token of a bucket of `limit` a minute that was full `at_most_elapsed`
    seconds ago and has since been emptied: 60/limit - elapsed, rounded up
    to whole seconds. Returns Retry-After."""
    assert a.status == 429, a
    assert a.headers.get("content-type", "").startswith("text/plain"), a.headers
    assert f"ingest.{key}" in a.body, a
    assert a.retry_after is not None and a.retry_after.isdigit(), a.headers
    ra = int(a.retry_after)
    period = 60 / limit
    assert max(1, math.ceil(period - at_most_elapsed)) <= ra <= math.ceil(period), (ra, period, at_most_elapsed)
    return ra


# --------------------------------------------------------------------------
# Rates
# --------------------------------------------------------------------------

def test_offers_per_address_are_limited_before_the_body_is_read(kiroku):
    """offers_per_minute_per_address 5: five offers from 127.0.0.1 are
    answered, the sixth is 429 with Retry-After 12 s (60/5, less the refill
    since the first) naming the key; a seventh declaring a body it never
    sends is refused at once, so the budget is taken before anything is
    read; 127.0.0.3 keeps its own budget."""
    d = kiroku("per_address", ingest={"offers_per_minute_per_address": 5})
    t0 = time.monotonic()
    for i in range(5):
        a = offer(d, 8101, f"addr{i}")
        assert a.status == 201, a
        # Deleted at once, so that unconnected sessions play no part.
        assert delete(d, a.location) == 200
    sixth = offer(d, 8101, "addr5")
    elapsed = time.monotonic() - t0
    ra = assert_too_many(sixth, "offers_per_minute_per_address", 5, elapsed)
    assert "from this address" in sixth.body, sixth

    # Over the limit, a POST is answered without its body: here one that
    # declares 1000 bytes and sends none (a body read would wait for it).
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
    t1 = time.monotonic()
    conn.putrequest("POST", f"/whip/{APP_ID}/8101/addr6")
    conn.putheader("Content-Type", "application/sdp")
    conn.putheader("Content-Length", "1000")
    conn.endheaders()
    r = conn.getresponse()
    unsent = Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode())
    took = time.monotonic() - t1
    conn.close()
    assert unsent.status == 429 and "offers_per_minute_per_address" in unsent.body, unsent
    assert took < 2, took

    other = offer(d, 8101, "addr7", source="127.0.0.3")
    assert other.status == 201, other
    assert delete(d, other.location, "127.0.0.3") == 200
    print(f"per address: 5 × 201 in {elapsed:.2f} s, then 429 with Retry-After {ra} ({sixth.body.strip()!r}); "
          f"a POST with an unsent body refused in {took * 1000:.0f} ms; 127.0.0.3 → 201")
    assert limited(d, "address") == 2
    assert limited(d, "app") == limited(d, "room") == limited(d, "pending") == 0
    assert metric(d, "kiroku_whip_sessions_refused_total", {"status": "429"}) == 2
    assert metric(d, "kiroku_whip_sessions_created_total") == 6


def test_offers_per_room_and_per_app_count_only_authenticated_publishers(kiroku):
    """offers_per_minute_per_room 3 and _per_app 8, the address limit out of
    the way: the fourth offer into a room is 429 (Retry-After 20 s) while
    another room of the app gets in; the ninth offer of an app is 429 while
    another app gets in. Where the app checks UserSigs, offers without a
    valid one are 401 and spend neither the room's nor the app's budget:
    after twelve of them, three signed offers still get in."""
    d = kiroku("per_room_app", ingest={"offers_per_minute_per_address": 1000, "offers_per_minute_per_room": 3,
                                       "offers_per_minute_per_app": 8})
    created = 0

    def accepted(a: Answer, source: str) -> None:
        nonlocal created
        assert a.status == 201, a
        assert delete(d, a.location, source) == 200
        created += 1

    # Per room, each offer from an address of its own.
    t0 = time.monotonic()
    for i in range(3):
        accepted(offer(d, 8201, f"room{i}", source=f"127.0.0.{11 + i}"), f"127.0.0.{11 + i}")
    fourth = offer(d, 8201, "room3", source="127.0.0.14")
    room_ra = assert_too_many(fourth, "offers_per_minute_per_room", 3, time.monotonic() - t0)
    assert "for this room" in fourth.body, fourth
    accepted(offer(d, 8202, "room4", source="127.0.0.15"), "127.0.0.15")

    # Per app: APP_ID2, every offer into a room of its own.
    t0 = time.monotonic()
    for i in range(8):
        accepted(offer(d, 8210 + i, f"app{i}", app=APP_ID2, source=f"127.0.0.{21 + i}"), f"127.0.0.{21 + i}")
    ninth = offer(d, 8230, "app8", app=APP_ID2, source="127.0.0.29")
    app_ra = assert_too_many(ninth, "offers_per_minute_per_app", 8, time.monotonic() - t0)
    assert "for this app" in ninth.body, ninth
    accepted(offer(d, 8231, "app9", source="127.0.0.30"), "127.0.0.30")  # APP_ID: its own budget

    # APP_SIG (user_sig_key): twelve offers into one room without a valid
    # UserSig, more than the room's 3 and the app's 8.
    room, user = 8240, "signed"
    bad = [None, "garbage", user_sig(user, "not-the-key-of-this-app"), user_sig("someone_else")] * 3
    for token in bad:
        a = offer(d, room, user, app=APP_SIG, token=token, source="127.0.0.40")
        assert a.status == 401, (token, a)
        assert a.retry_after is None, a
    for i in range(3):
        accepted(offer(d, room, f"{user}{i}", app=APP_SIG, token=user_sig(f"{user}{i}"), source="127.0.0.41"),
                 "127.0.0.41")
    # ... and the room's limit does hold for signed offers.
    over = offer(d, room, f"{user}3", app=APP_SIG, token=user_sig(f"{user}3"), source="127.0.0.41")
    assert over.status == 429 and "offers_per_minute_per_room" in over.body, over
    print(f"per room: 429 with Retry-After {room_ra} ({fourth.body.strip()!r}); per app: 429 with Retry-After "
          f"{app_ra} ({ninth.body.strip()!r}); {len(bad)} × 401 left the signed room's 3 offers intact")

    assert limited(d, "room") == 2
    assert limited(d, "app") == 1
    assert limited(d, "address") == limited(d, "pending") == 0
    assert metric(d, "kiroku_whip_sessions_refused_total", {"status": "429"}) == 3
    assert metric(d, "kiroku_whip_sessions_refused_total", {"status": "401"}) == len(bad)
    assert metric(d, "kiroku_whip_sessions_created_total") == created == 16


# --------------------------------------------------------------------------
# Unconnected sessions
# --------------------------------------------------------------------------

def test_unconnected_sessions_are_bounded(kiroku):
    """max_pending_sessions 3: a publisher that connected no longer counts;
    three offers nobody connects fill the bound and the next one is 503
    with Retry-After 5; DELETE through one's Location frees a place."""
    d = kiroku("pending", ingest={"max_pending_sessions": 3})
    with Publisher(whip_url(d.url, APP_ID, 8301, "connected"), fps=FPS).start(timeout=15):
        # test_whip's OFFER carries a made-up DTLS fingerprint and nobody
        # sends STUN for it: these sessions stay unconnected.
        held = []
        for i in range(3):
            a = offer(d, 8302, f"held{i}")
            assert a.status == 201, a
            held.append(a.location)
        full = offer(d, 8302, "held3")
        assert full.status == 503, full
        assert full.retry_after == "5", full.headers
        assert "ingest.max_pending_sessions" in full.body and "(3 of ingest.max_pending_sessions 3)" in full.body, full
        # A publisher posting its own stream again replaces its waiting
        # session: that takes no new place, so the full bound lets it in.
        redo = offer(d, 8302, "held2")
        assert redo.status == 201, redo
        assert delete(d, held.pop()) == 404, "the replaced session's URL still works"
        held.append(redo.location)
        # The connected publisher and the three waiting ones (the engine
        # takes a new peer from its queue within a tick, 20 ms).
        wait_until(lambda: metric(d, "kiroku_ingest_peers") == 4, 2, 0.02, "four peers in the engine")

        assert delete(d, held.pop(0)) == 200
        again = offer(d, 8302, "held4")
        assert again.status == 201, again
        held.append(again.location)
        assert offer(d, 8302, "held5").status == 503
        for loc in held:
            assert delete(d, loc) == 200
    wait_until(lambda: metric(d, "kiroku_ingest_peers") == 0, 5, 0.1, "every peer gone")
    assert limited(d, "pending") == 2
    assert metric(d, "kiroku_whip_sessions_refused_total", {"status": "503"}) == 2
    print(f"pending bound: 503 {full.body.strip()!r}, Retry-After {full.retry_after}")


# --------------------------------------------------------------------------
# Recording check (an aiortc publisher judged with ffprobe)
# --------------------------------------------------------------------------

def publish_and_check_recording(d, receiver, room: int, user: str, seconds: float = 4.0) -> str:
    """A RecordMode 1 task, an aiortc publisher for `seconds`; its audio and
    video playlists must hold what it published (test_storage's tolerances:
    at most 0.5 s of start-up missing, never more than 0.1 s over)."""
    api = d.sdk()
    task = api.create(create_params(room=str(room), max_idle=60))
    pub = Publisher(whip_url(d.url, APP_ID, room, user), width=320, height=240, fps=FPS).start(timeout=15)
    try:
        wait_until(lambda: api.describe(task)["Status"] == "InProgress", 10, 0.2, "the task recording")
        time.sleep(seconds)
    finally:
        pub.stop()
    assert pub.delete_status == 200, pub.delete_status
    assert pub.states[:2] == ["connecting", "connected"] and "failed" not in pub.states, pub.states
    api.delete(task)
    receiver.wait_event(task, 305, 30)
    folder = task_files(d, task)
    published = pub.published_seconds
    figures = [f"published {published:.3f} s, {pub.frames_sent} frames"]
    for kind in ("video", "audio"):
        playlist = folder / f"{single_base(room, user, 'main', kind)}.m3u8"
        pl = parse_playlist(playlist)
        assert pl.ended and pl.segments, pl.text
        recorded = sum(segments_seconds(folder, [n for _, n, _ in pl.segments]))
        figures.append(f"{kind} {recorded:.3f} s")
        assert published - 0.5 <= recorded <= published + 0.1, figures
        if kind == "video":
            frames = decoded_video_frames(playlist)
            figures.append(f"{frames} frames")
            assert pub.frames_sent - 0.5 * FPS <= frames <= pub.frames_sent, figures
        decode_ok(playlist)
    summary = "; ".join(figures)
    print(f"recording after the test's abuse ({user}): {summary}")
    return summary


# --------------------------------------------------------------------------
# Flood
# --------------------------------------------------------------------------

def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


FLOOD_OFFERS = 1500
FLOOD_SOURCES = [f"127.0.0.{n}" for n in range(100, 120)]  # 20 addresses
FLOOD_ROOMS = 100  # 15 offers a room: under the default 120 a minute
# Peak RSS over the RSS before the flood, at most. Measured (debug build,
# 2 cores): +10.9 to +11.0 MB for the 256 sessions left pending, 43 kB each
# (str0m's Rtc with its DTLS context); the same flood with the bound lifted
# (max_pending_sessions 100000, offers_per_minute_per_app 100000) left
# 1240 sessions and grew 47 MB. 24 MB is twice what the bounded flood
# takes and half what an unbounded one does.
FLOOD_RSS_BOUND_KB = 24 * 1024


def test_a_flood_of_offers_is_bounded_and_a_real_publisher_records_after(kiroku, make_receiver):
    """Default limits (60 offers a minute an address, 1200 an app, 120 a
    room, 256 unconnected sessions): 1500 offers as fast as 20 threads on
    20 addresses can send them. Every one is answered 201, 429 or 503 with
    Retry-After; exactly 256 are accepted (nothing connects, nothing is
    deleted meanwhile); the peers the engine holds never exceed 256; memory
    stays bounded; /healthz from another address answers within 2 s
    throughout. Afterwards the accepted sessions are DELETEd and a real
    aiortc publisher on a fresh address is recorded in full."""
    receiver = make_receiver()
    d = kiroku("flood", callback_url=receiver.url)
    pid = d.proc.pid
    max_pending = 256
    # Warm up what a first offer allocates once (the engine, its DTLS
    # context), so that the baseline is the daemon's steady state.
    a = offer(d, 7999, "warm_up", source="127.0.0.99")
    assert a.status == 201 and delete(d, a.location, "127.0.0.99") == 200
    wait_until(lambda: metric(d, "kiroku_ingest_peers") == 0, 5, 0.1, "the warm-up peer gone")
    rss_before = _rss_kb(pid)

    answers: list[tuple[str, Answer]] = []
    errors: list[str] = []
    lock = threading.Lock()
    done = threading.Event()
    samples: list[tuple[float, int, float, int]] = []  # (t, peers, healthz s, rss kB)

    def flood(k: int, source: str) -> None:
        for j in range(FLOOD_OFFERS // len(FLOOD_SOURCES)):
            i = j * len(FLOOD_SOURCES) + k
            try:
                a = offer(d, 7000 + i % FLOOD_ROOMS, f"flood{i}", source=source)
            except OSError as e:
                with lock:
                    errors.append(f"{source} offer {i}: {e!r}")
                continue
            with lock:
                answers.append((source, a))

    def sample() -> None:
        while not done.is_set():
            t = time.monotonic()
            try:
                h = _request(d, "GET", "/healthz", "127.0.0.2", timeout=10)
                took = time.monotonic() - t
                assert h.status == 200 and h.body.strip() == "ok", h
                peers = int(metric_value(metrics_text(d), "kiroku_ingest_peers"))
                samples.append((t, peers, took, _rss_kb(pid)))
            except Exception as e:  # noqa: BLE001 - reported by the test thread
                errors.append(f"sampler: {e!r}")
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    threads = [threading.Thread(target=flood, args=(k, s)) for k, s in enumerate(FLOOD_SOURCES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    flood_seconds = time.monotonic() - started
    time.sleep(0.3)  # one more sample at the peak's plateau
    done.set()
    sampler.join(15)
    rss_flood_end = _rss_kb(pid)

    by_status: dict[int, int] = {}
    for _, a in answers:
        by_status[a.status] = by_status.get(a.status, 0) + 1
    limited_by = {"address": 0, "app": 0, "room": 0}
    for _, a in answers:
        if a.status == 429:
            key = re.search(r"ingest\.offers_per_minute_per_(address|app|room)", a.body)
            assert key, a
            limited_by[key[1]] += 1
            assert a.retry_after and a.retry_after.isdigit() and 1 <= int(a.retry_after) <= 60, a
        elif a.status == 503:
            assert a.retry_after == "5" and "ingest.max_pending_sessions" in a.body, a
    peak_peers = max(p for _, p, _, _ in samples)
    worst_healthz = max(h for _, _, h, _ in samples)
    peak_rss = max([r for _, _, _, r in samples] + [rss_flood_end])
    print(f"flood: {FLOOD_OFFERS} offers from {len(FLOOD_SOURCES)} addresses in {flood_seconds:.1f} s "
          f"({FLOOD_OFFERS / flood_seconds:.0f}/s): {dict(sorted(by_status.items()))}, 429 by limit {limited_by}; "
          f"{len(samples)} samples: peak peers {peak_peers}, worst /healthz {worst_healthz * 1000:.0f} ms; "
          f"RSS before {rss_before} kB, peak {peak_rss} kB (+{peak_rss - rss_before} kB, "
          f"{(peak_rss - rss_before) / max_pending:.0f} kB a pending session)")
    assert not errors, errors[:10]
    assert len(answers) == FLOOD_OFFERS
    assert set(by_status) <= {201, 429, 503}, by_status
    assert by_status.get(201) == max_pending, by_status
    assert by_status.get(429, 0) > 0 and by_status.get(503, 0) > 0, by_status
    # Each address had 60 offers at once, plus one a second while the flood lasted.
    assert limited_by["address"] >= FLOOD_OFFERS - len(FLOOD_SOURCES) * (60 + math.ceil(flood_seconds)), limited_by
    assert peak_peers <= max_pending, samples
    assert worst_healthz < 2.0, worst_healthz
    assert len(samples) >= 5, samples
    assert peak_rss - rss_before < FLOOD_RSS_BOUND_KB, (rss_before, peak_rss)

    text = metrics_text(d)
    assert metric_value(text, "kiroku_whip_sessions_created_total") == 1 + max_pending
    assert metric_value(text, "kiroku_ingest_peers") == max_pending
    for lim, n in limited_by.items():
        assert metric_value(text, "kiroku_whip_offers_limited_total", {"limit": lim}, default=0.0) == n, (lim, text)
    assert metric_value(text, "kiroku_whip_offers_limited_total", {"limit": "pending"}) == by_status[503]
    assert metric_value(text, "kiroku_whip_sessions_refused_total", {"status": "429"}) == by_status[429]
    assert metric_value(text, "kiroku_whip_sessions_refused_total", {"status": "503"}) == by_status[503]

    # The accepted sessions are ended by their resource URLs, so that the
    # real publisher is not refused with 503 for the next 30 s.
    t = time.monotonic()
    for source, a in answers:
        if a.status == 201:
            assert delete(d, a.location, source) == 200
    wait_until(lambda: metric(d, "kiroku_ingest_peers") == 0, 10, 0.1, "the flood's peers released")
    deleted_in = time.monotonic() - t
    rss_after = _rss_kb(pid)
    print(f"flood: {max_pending} sessions DELETEd in {deleted_in:.1f} s; RSS after {rss_after} kB "
          f"({rss_after - rss_before:+d} kB over before)")

    # 127.0.0.1 sent no offer in the flood: its budget is whole.
    publish_and_check_recording(d, receiver, 7200, "after_flood")


# --------------------------------------------------------------------------
# STUN integrity at the UDP router
# --------------------------------------------------------------------------

def _answer_ice(answer_sdp: str) -> tuple[str, str, tuple[str, int]]:
    """Our ice-ufrag, ice-pwd and UDP host candidate from an answer."""
    ufrag = re.search(r"^a=ice-ufrag:(\S+)", answer_sdp, re.M)[1]
    pwd = re.search(r"^a=ice-pwd:(\S+)", answer_sdp, re.M)[1]
    cand = re.search(r"^a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", answer_sdp, re.M | re.I)
    assert cand, answer_sdp
    return ufrag, pwd, (cand[1], int(cand[2]))


def _binding_request(username: str, key: bytes | None) -> stun.Message:
    """A connectivity check as aioice (a controlling agent) sends it:
    USERNAME, PRIORITY, ICE-CONTROLLING, then MESSAGE-INTEGRITY keyed with
    `key` and FINGERPRINT (only FINGERPRINT when `key` is None)."""
    m = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    m.attributes["USERNAME"] = username
    m.attributes["PRIORITY"] = 1853824767
    m.attributes["ICE-CONTROLLING"] = int.from_bytes(os.urandom(8), "big")
    if key is None:
        m.add_fingerprint()
    else:
        m.add_message_integrity(key)  # adds FINGERPRINT after it
    return m


def _recv_stun(sock: socket.socket, wait: float) -> list[stun.Message]:
    """Every STUN message arriving on `sock` within `wait` seconds."""
    got = []
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(2048)
        except socket.timeout:
            break
        got.append(stun.parse_message(data))
    return got


def test_forged_stun_binds_no_address_and_a_real_publisher_still_records(kiroku, make_receiver):
    """Binding requests that name a peer (our ufrag in USERNAME) but whose
    MESSAGE-INTEGRITY is wrong (a made-up key, another session's password,
    none at all) are dropped, counted one each in
    kiroku_ingest_stun_forged_total, never answered, and do not make their
    source address the peer's: a datagram from there is unroutable. The
    same request with the right password is answered with an authentic
    binding success (XOR-MAPPED-ADDRESS = our socket) and binds its source.
    Then a real aiortc publisher connects and is recorded."""
    receiver = make_receiver()
    d = kiroku("stun", callback_url=receiver.url)
    victim = offer(d, 8401, "victim")
    other = offer(d, 8401, "other")
    assert victim.status == other.status == 201, (victim, other)
    ufrag, pwd, udp = _answer_ice(victim.body)
    other_ufrag, other_pwd, _ = _answer_ice(other.body)
    assert udp[1] == int(d.config["ingest"]["udp_listen"].rsplit(":", 1)[1]), udp
    assert ufrag != other_ufrag and pwd != other_pwd
    # The engine takes new peers from its queue between datagrams (within
    # a 20 ms tick): a request sent before names no peer yet and is merely
    # unroutable (real agents retransmit).
    wait_until(lambda: metric(d, "kiroku_ingest_peers") == 2, 2, 0.02, "both peers in the engine")
    # USERNAME is "<our ufrag>:<the offer's ufrag>" (test_whip's OFFER: abcd).
    username = f"{ufrag}:abcd"
    forged_before = metric(d, "kiroku_ingest_stun_forged_total")
    unroutable = lambda: metric(d, "kiroku_ingest_unroutable_packets_total")  # noqa: E731

    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    genuine = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        attacker.bind(("127.0.0.1", 0))
        genuine.bind(("127.0.0.1", 0))
        forged = [_binding_request(username, b"wrong"), _binding_request(username, other_pwd.encode()),
                  _binding_request(username, None)]
        for m in forged:
            attacker.sendto(bytes(m), udp)
        silence = _recv_stun(attacker, 1.0)
        assert silence == [], [(m.message_class, m.transaction_id) for m in silence]
        wait_until(lambda: metric(d, "kiroku_ingest_stun_forged_total") == forged_before + len(forged), 3, 0.05,
                   f"{len(forged)} forged requests counted")
        # The attacker's address is bound to no peer: what it sends next
        # (here an RTP-like datagram) matches nothing.
        before = unroutable()
        attacker.sendto(b"\x80\x60" + bytes(30), udp)
        wait_until(lambda: unroutable() == before + 1, 3, 0.05, "the attacker's datagram unroutable")

        req = _binding_request(username, pwd.encode())
        genuine.sendto(bytes(req), udp)
        replies = _recv_stun(genuine, 1.0)
        assert len(replies) == 1, replies
        reply = replies[0]
        assert reply.message_method == stun.Method.BINDING and reply.message_class == stun.Class.RESPONSE, reply
        assert reply.transaction_id == req.transaction_id
        reply.check_message_integrity(pwd.encode())  # raises if not signed with our password
        assert tuple(reply.attributes["XOR-MAPPED-ADDRESS"]) == genuine.getsockname(), reply.attributes
        # The genuine source is now the peer's: its datagrams are routed.
        before = unroutable()
        genuine.sendto(b"\x80\x60" + bytes(30), udp)
        time.sleep(0.3)
        assert unroutable() == before
        assert metric(d, "kiroku_ingest_stun_forged_total") == forged_before + len(forged)
        print(f"STUN: {len(forged)} forged requests counted and unanswered; genuine one answered "
              f"{reply.message_class.name} from {udp}, mapped {reply.attributes['XOR-MAPPED-ADDRESS']}")
    finally:
        attacker.close()
        genuine.close()
    for a in (victim, other):
        assert delete(d, a.location) == 200
    publish_and_check_recording(d, receiver, 8402, "after_forgery")
