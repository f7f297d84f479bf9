"""Hostile media over a real WHIP session (issue 16's media half): a
publisher that ignores key-frame requests, and one whose key frames carry
crafted SPS NAL units. Both are aiortc publishers
(tests/e2e/independent_publisher.py) against the real daemon; what was
recorded is judged from the playlists, the metrics, GET /v1/rooms and
ffmpeg.

- A segment is held in memory until a key frame cuts it. A publisher that
  never answers PLIs would grow it for ever; `recording.max_keyframe_wait_seconds`
  ends it (daemon/src/hls/segmenter.rs, Decision::End) and the stream
  resumes, after a discontinuity, at the next key frame.
- The H.264 SPS parser (daemon/src/media/h264.rs, parse_sps) reads fields
  the publisher chooses; a debug build (which the suite runs) panics on
  arithmetic overflow. It runs in the ingest engine (the track's
  resolution), in the recorder (the playlist's video size) and in the MP4
  converter (the avcC): crafted SPS units must reach all three and leave
  every one of them running. (Against a build from before the scaling-list
  fix, test 2 fails: the ingest thread panics with "attempt to add with
  overflow" in h264::skip_scaling_list.)
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests

from kiroku_e2e import ADMIN_HEADERS, APP_ID, create_params, metric_value, wait_until
from recording import decoded_video_frames, decode_ok, encode_id, ffprobe, parse_playlist, single_base, task_files

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
from aiortc.codecs.h264 import H264Encoder  # noqa: E402
from independent_publisher import Publisher, whip_url  # noqa: E402
from test_supervision import HealthWatch  # noqa: E402

FPS = 15


def metric(d, name: str, labels: dict | None = None) -> float:
    return metric_value(d.metrics_text(), name, labels, default=0.0)


def video_track(d, room: int, user: str) -> dict | None:
    """The user's video track in GET /v1/rooms (docs/ingest.md), or None."""
    r = requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 200, r.text
    for rm in r.json()["rooms"]:
        if str(rm["room_id"]) != str(room):
            continue
        for u in rm["users"]:
            if u["user_id"] == user:
                return next((t for t in u["tracks"] if "video" in t["kind"]), None)
    return None


def assert_no_panic(d) -> None:
    """Fails at once, with the panic message and location, if the daemon's
    log shows a panic (the fixture's teardown would only say so later)."""
    lines = d.log_text().splitlines()
    for i, line in enumerate(lines):
        if "panicked" in line:
            raise AssertionError("kiroku panicked:\n" + "\n".join(lines[i:i + 12]))


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class RssWatch:
    """Samples the daemon's VmRSS every 200 ms on its own thread."""

    def __init__(self, pid: int):
        self.pid = pid
        self.before = rss_kb(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(rss_kb(self.pid))
            except (OSError, AssertionError):
                return
            time.sleep(0.2)

    def stop(self) -> int:
        """The peak, in kB."""
        self._stop.set()
        self._thread.join(5)
        return max(self.samples + [self.before])


# --------------------------------------------------------------------------
# 1. A publisher that ignores key-frame requests
# --------------------------------------------------------------------------

SEGMENT = 1.0  # recording.segment_seconds
GRACE = 0.0  # recording.keyframe_grace_seconds: PLIs from 1 s into a segment
MAX_WAIT = 2.0  # recording.max_keyframe_wait_seconds
ENDED_AT = SEGMENT + GRACE + MAX_WAIT  # a segment without a key frame ends here
DEAF_SECONDS = 8.0  # phase 1: well past ENDED_AT
RESUMED_SECONDS = 2.5  # phase 2: under ENDED_AT, so the stream's end closes it
# Peak RSS over the RSS before the publisher, at most. What the daemon holds
# for one 320x240 stream at 15 fps is a few MB; 200 MB is far from that and
# far under what an unbounded segment of a real publisher reaches in hours.
RSS_BOUND_KB = 200 * 1024


def test_a_publisher_that_ignores_keyframe_requests_cannot_grow_a_segment_without_bound(kiroku, receiver):
    """segment_seconds 1, keyframe_grace_seconds 0, max_keyframe_wait_seconds
    2; the publisher counts PLIs but never answers them. Its first segment
    is ended without a key frame 3 s (1 + 0 + 2) after it opened, and
    nothing more of its video is recorded while no key frame comes (its
    audio goes on). One key frame later the video resumes in a new segment
    after #EXT-X-DISCONTINUITY, and the playlist decodes."""
    d = kiroku("deaf", callback_url=receiver.url,
               recording={"segment_seconds": SEGMENT, "keyframe_grace_seconds": GRACE,
                          "max_keyframe_wait_seconds": int(MAX_WAIT)})
    api = d.sdk()
    room, user = 9601, "deaf"
    task = api.create(create_params(room=str(room), max_idle=60))
    rss = RssWatch(d.proc.pid)
    pub = Publisher(whip_url(d.url, APP_ID, room, user), fps=FPS, keyframe_interval=None,
                    ignore_keyframe_requests=True).start(timeout=15)
    folder = task_files(d, task)
    playlist = folder / f"{single_base(room, user, 'main', 'video')}.m3u8"
    try:
        # The encoder's first frame is a key frame, but the recorder may
        # subscribe after it went by, and its request for another is
        # ignored: one key frame, sent once the recorder listens, makes the
        # start certain. If the first one was caught too, this one lands
        # inside the first segment (under 1 s into it: no cut).
        wait_until(lambda: (video_track(d, room, user) or {}).get("subscribers", 0) >= 1, 10, 0.02,
                   "the recorder subscribed to the video")
        pub.send_keyframe()
        forced_at = time.time()
        lead = forced_at - pub.started_at
        assert lead < 0.8, f"the recorder subscribed {lead:.2f} s after the first frame: too late to reason"
        # Ended at 3 s after it opened; the metric is published by the
        # recorder's next report.
        wait_until(lambda: metric(d, "kiroku_recorder_segments_ended_early_total") >= 1, ENDED_AT + 5, 0.1,
                   "the key-frame-less segment ended")
        ended_after = time.time() - forced_at
        # Keep on without key frames: nothing of the video may be recorded.
        time.sleep(max(0.0, DEAF_SECONDS - (time.time() - forced_at)))
        mid = parse_playlist(playlist)
        requests_while_deaf = pub.keyframe_requests
        pli_times = [round(t - forced_at, 2) for t in pub.keyframe_request_times]
        asked = {n: metric(d, f"kiroku_{n}_total") for n in
                 ("recorder_keyframe_requests", "ingest_keyframe_requests", "ingest_plis")}
        ended_mid = metric(d, "kiroku_recorder_segments_ended_early_total")
        # Phase 2: one key frame, then a little more.
        pub.send_keyframe()
        time.sleep(RESUMED_SECONDS)
    finally:
        pub.stop()
    peak = rss.stop()
    api.delete(task)
    receiver.wait_event(task, 305, 30)
    pl = parse_playlist(playlist)
    audio = parse_playlist(folder / f"{single_base(room, user, 'main', 'audio')}.m3u8")
    published = pub.published_seconds
    ended_total = metric(d, "kiroku_recorder_segments_ended_early_total")
    print(f"ignored PLIs: {requests_while_deaf} PLIs by {DEAF_SECONDS:.0f} s, at {pli_times} s from the key frame "
          f"sent {lead:.2f} s after the first frame ({pub.keyframe_requests} in all; daemon by then: {asked}); "
          f"segment ended {ended_after:.2f} s after the key frame; video after {DEAF_SECONDS:.0f} s "
          f"{[(round(s, 3), disc) for s, _, disc in mid.segments]}; final video "
          f"{[(round(s, 3), disc) for s, _, disc in pl.segments]} = {pl.total:.3f} s of {published:.3f} s "
          f"published; audio {audio.total:.3f} s; ended early {ended_total:.0f}; RSS {rss.before} kB before, "
          f"peak {peak} kB (+{peak - rss.before} kB, {len(rss.samples)} samples)")

    # Phase 1: one segment of ~3 s, then nothing although ~5 s more were sent.
    assert len(mid.segments) == 1, mid.text
    first, _, disc = mid.segments[0]
    assert not disc
    assert abs(first - ENDED_AT) <= 0.5, mid.text
    assert mid.total < DEAF_SECONDS - 3, mid.text
    assert ended_mid == 1, ended_mid
    # The recorder's subscription asks for a key frame at once (t ~ 0); the
    # segment running past segment + grace asks again (the recording
    # timeline holds a new track's first frames for up to 2 s, waiting for
    # sender reports, so this one comes about 2 s in).
    assert any(t > SEGMENT - 0.5 for t in pli_times), f"no key-frame request for the long segment: {pli_times}"
    # Phase 2: the key frame opens a new segment after a discontinuity; the
    # stream's end closes it (no second early end).
    assert len(pl.segments) == 2, pl.text
    assert pl.segments[0] == mid.segments[0], (mid.text, pl.text)
    resumed, _, disc = pl.segments[1]
    assert disc, pl.text
    assert RESUMED_SECONDS - 1.0 <= resumed <= RESUMED_SECONDS + 0.3, pl.text
    assert pl.total < published - 4, (pl.total, published)
    assert ended_total == 1, ended_total
    assert pl.ended, pl.text
    decode_ok(playlist)
    # Audio is recorded throughout: only the video waits for a key frame.
    assert audio.total >= published - 1.0, (audio.total, published)
    assert peak - rss.before < RSS_BOUND_KB, (rss.before, peak)


# --------------------------------------------------------------------------
# 2. Crafted SPS units in a real H.264 stream
# --------------------------------------------------------------------------

class Bits:
    """An RBSP written bit by bit (ITU-T H.264 §7.2: u(n), ue(v), se(v))."""

    def __init__(self):
        self.bits: list[str] = []

    def u(self, n: int, v: int) -> "Bits":
        self.bits.append(format(v, f"0{n}b"))
        return self

    def ue(self, v: int) -> "Bits":
        b = format(v + 1, "b")
        self.bits.append("0" * (len(b) - 1) + b)
        return self

    def se(self, v: int) -> "Bits":
        return self.ue(2 * v - 1 if v > 0 else -2 * v)

    def nal(self, header: int) -> bytes:
        """The NAL unit: header byte, RBSP with its stop bit, emulation prevention."""
        s = "".join(self.bits) + "1"
        s += "0" * (-len(s) % 8)
        rbsp = bytes(int(s[i:i + 8], 2) for i in range(0, len(s), 8))
        out, zeros = bytearray([header]), 0
        for b in rbsp:
            if zeros >= 2 and b <= 3:
                out.append(3)
                zeros = 0
            out.append(b)
            zeros = zeros + 1 if b == 0 else 0
        return bytes(out)


# se(v) values whose ue codes have 31 leading zeros (the longest a parser
# may accept): ue 2^32-3 and 2^32-2.
BIG_POS = 2**31 - 1
BIG_NEG = -(2**31 - 1)
SPS_HEADER = 0x67  # nal_ref_idc 3, type 7


def _scaling_sps() -> bytes:
    """High profile, seq_scaling_matrix_present_flag 1; list 0's first
    delta_scale is +(2^31-1), list 1's -(2^31-1) (H.264 allows -128..127;
    8 + (2^31-1) overflows an i32: the parser before the fix panicked
    there, in skip_scaling_list); the rest is a valid
    176x144 (11 x 9 macroblocks) 4:2:0 stream, so the daemon's parser,
    once past the lists, returns that size: a resolution no publisher of
    this test sends, seen in GET /v1/rooms and the playlist."""
    b = Bits().u(8, 100).u(8, 0).u(8, 30).ue(0)  # profile_idc, constraint flags, level_idc, sps id
    b.ue(1).ue(0).ue(0).u(1, 0)  # chroma_format_idc 4:2:0, bit depths 8, no bypass
    b.u(1, 1)  # seq_scaling_matrix_present_flag
    for i in range(8):
        if i < 2:
            b.u(1, 1).se(BIG_POS if i == 0 else BIG_NEG)
            for _ in range(15):
                b.se(0)  # next scale stays non-zero: all 16 deltas are read
        else:
            b.u(1, 0)
    b.ue(0).ue(2).ue(1).u(1, 0)  # log2_max_frame_num-4, poc type 2, 1 ref, no gaps
    b.ue(10).ue(8)  # 176 / 16 - 1, 144 / 16 - 1
    b.u(1, 1).u(1, 1).u(1, 0).u(1, 0)  # frame_mbs_only, direct_8x8, no cropping, no VUI
    return b.nal(SPS_HEADER)


def _huge_fields_sps() -> bytes:
    """High profile; every number as large as its code allows:
    log2_max_frame_num_minus4, pic_order_cnt_type 1 with offsets of
    ±(2^31-1) and a cycle of 255 of them (over 1300 bytes: aiortc sends
    this SPS in FU-A fragments), max_num_ref_frames, width and height."""
    b = Bits().u(8, 100).u(8, 0).u(8, 51).ue(0)
    b.ue(1).ue(0).ue(0).u(1, 0).u(1, 0)  # 4:2:0, 8 bits, no bypass, no scaling matrix
    b.ue(2**32 - 2)  # log2_max_frame_num_minus4
    b.ue(1).u(1, 0).se(BIG_POS).se(BIG_NEG).ue(255)  # poc type 1
    for i in range(255):
        b.se(BIG_POS if i % 2 else BIG_NEG)
    b.ue(2**32 - 2).u(1, 0)  # max_num_ref_frames, gaps
    b.ue(2**32 - 2).ue(2**32 - 2)  # width and height in macroblocks - 1
    b.u(1, 1).u(1, 1).u(1, 0).u(1, 0)
    return b.nal(SPS_HEADER)


def _crop_sps() -> bytes:
    """Baseline 320x480 field-coded (frame_mbs_only 0: the height doubles,
    and so does a vertical crop unit) with crop offsets of 2^31-1 each."""
    b = Bits().u(8, 66).u(8, 0).u(8, 30).ue(0)
    b.ue(0).ue(2).ue(1).u(1, 0)
    b.ue(19).ue(14)
    b.u(1, 0).u(1, 0).u(1, 1)  # frame_mbs_only 0, mb_adaptive 0, direct_8x8
    b.u(1, 1).ue(2**31 - 1).ue(2**31 - 1).ue(2**31 - 1).ue(2**31 - 1)  # cropping
    b.u(1, 0)
    return b.nal(SPS_HEADER)


# The issue's example: a baseline SPS whose crop and size fields overflowed.
ISSUE_SPS = bytes.fromhex("6742001fdc000003001000000300e8")
CRAFTED_SIZE = (176, 144)  # what _scaling_sps declares
CRAFTED = [_scaling_sps(), ISSUE_SPS, _huge_fields_sps(), _crop_sps()]


class HostileSps:
    """Replaces H264Encoder._encode_frame (aiortc/codecs/h264.py: it yields
    the NAL units of one encoded picture, which _packetize turns into RTP)
    so that every key frame's access unit (libx264 repeats SPS and PPS
    before every IDR) starts with the CRAFTED units, before the real SPS;
    with keep_real False the real SPS is left out (the PPS and the slices
    stay). Counts what it changed."""

    def __init__(self):
        self.original = H264Encoder._encode_frame
        self.keep_real = True
        self.access_units = 0
        self.nal_types: list[int] = []  # of the last changed access unit

    def method(self):
        """The replacement, a plain function (bound as a method per encoder)."""
        def _encode_frame(encoder, frame, force_keyframe):
            yield from self._encode(encoder, frame, force_keyframe)
        return _encode_frame

    def _encode(self, encoder, frame, force_keyframe):
        nals = list(self.original(encoder, frame, force_keyframe))
        if any(n and n[0] & 0x1F == 7 for n in nals):
            out = []
            for n in nals:
                if n[0] & 0x1F == 7:
                    out += CRAFTED
                    if self.keep_real:
                        out.append(n)
                else:
                    out.append(n)
            nals = out
            self.access_units += 1
            self.nal_types = [n[0] & 0x1F for n in nals]
        yield from nals


HOSTILE_SECONDS = 4.0


def test_a_hostile_sps_over_whip_takes_neither_ingest_nor_recorder_down(kiroku, receiver, monkeypatch):
    """Two aiortc publishers whose key frames (one a second) start with four
    crafted SPS units (scaling-list deltas of ±(2^31-1), every field at its
    largest, crop offsets of 2^31-1, the issue's example): the first keeps
    its real SPS after them (decodable), the second sends only the crafted
    ones. The task records HLS and MP4 (OutputFormat 1), so the SPS reaches
    the ingest engine, the recorder and the MP4 converter. None of them
    panics or restarts, /healthz stays 200 throughout, the ingest shows the
    crafted SPS's 176x144, and afterwards a normal publisher is recorded
    into a decodable playlist by the same daemon."""
    d = kiroku("hostile_sps", callback_url=receiver.url, recording={"segment_seconds": 2})
    api = d.sdk()
    room = 9602
    params = create_params(room=str(room), max_idle=60)
    params["RecordParams"]["OutputFormat"] = 1  # HLS + MP4
    task = api.create(params)
    watch = HealthWatch(d)
    hostile = HostileSps()
    figures: list[str] = []
    seen: dict[str, dict] = {}
    sent_frames: dict[str, int] = {}
    with monkeypatch.context() as m:
        m.setattr(H264Encoder, "_encode_frame", hostile.method())
        for user, keep_real in (("sps_plus_real", True), ("sps_only", False)):
            hostile.keep_real = keep_real
            units_before = hostile.access_units
            pub = Publisher(whip_url(d.url, APP_ID, room, user), fps=FPS, keyframe_interval=1.0).start(timeout=15)
            try:
                # The ingest takes the access unit's first SPS for the
                # track's resolution: the crafted 176x144 one.
                def crafted_size_seen():
                    assert_no_panic(d)
                    return (video_track(d, room, user) or {}).get("width") == CRAFTED_SIZE[0]

                wait_until(crafted_size_seen, 10, 0.05, f"{user}: the ingest parsing the crafted SPS")
                time.sleep(HOSTILE_SECONDS)
                assert_no_panic(d)
                seen[user] = video_track(d, room, user)
            finally:
                pub.stop()
            assert pub.delete_status == 200, pub.delete_status
            assert "failed" not in pub.states, pub.states
            sent = hostile.access_units - units_before
            sent_frames[user] = pub.frames_sent
            figures.append(f"{user}: {sent} key frames with {len(CRAFTED)} crafted SPS "
                           f"(NAL types {hostile.nal_types}), {pub.frames_sent} frames sent; the ingest saw "
                           f"{seen[user]['frames']} frames, {seen[user]['keyframes']} key frames, "
                           f"{seen[user]['width']}x{seen[user]['height']}")
            assert sent >= HOSTILE_SECONDS - 1, (user, sent)
            assert seen[user]["keyframes"] >= sent - 1, (user, seen[user], sent)
            assert (seen[user]["width"], seen[user]["height"]) == CRAFTED_SIZE, seen[user]
    assert H264Encoder._encode_frame is hostile.original  # the normal publisher below sends a normal stream
    # A fresh daemon: every video frame it took so far is the hostile ones.
    frames_hostile = metric(d, "kiroku_ingest_frames_total", {"track": "main_video"})

    # The same daemon, same task: a normal publisher.
    normal = Publisher(whip_url(d.url, APP_ID, room, "normal"), fps=FPS).start(timeout=15)
    try:
        wait_until(lambda: (video_track(d, room, "normal") or {}).get("width") == 320, 10, 0.05,
                   "the normal publisher's SPS")
        time.sleep(3)
    finally:
        normal.stop()
    down = watch.stop()
    restarts = metric(d, "kiroku_ingest_engine_restarts_total")
    panics = metric(d, "kiroku_recorder_panics_total")
    api.delete(task)
    receiver.wait_event(task, 305, 30)
    mp4 = receiver.wait_event(task, 310, 60).payload

    folder = task_files(d, task)
    for user in ("sps_plus_real", "sps_only", "normal"):
        path = folder / f"{single_base(room, user, 'main', 'video')}.m3u8"
        pl = parse_playlist(path)
        figures.append(f"{user} video: {len(pl.segments)} segments, {pl.total:.2f} s, metadata {pl.video_size}")
        if user == "normal":
            assert pl.ended and pl.total >= 2.0, pl.text
            assert pl.video_size == (320, 240), pl.text
            decode_ok(path)
        else:
            # Recorded (the recorder parsed every unit of the access units):
            # the playlist's size is the last SPS it could read, the real
            # one if it was sent, else the crafted 176x144.
            assert pl.ended and pl.total >= HOSTILE_SECONDS - 1.5, (user, pl.text)
            assert pl.video_size == ((320, 240) if user == "sps_plus_real" else CRAFTED_SIZE), (user, pl.text)
        if user == "sps_plus_real":
            # The real SPS follows the crafted ones (same id): decoders
            # complain about the crafted ones and decode every picture.
            decode_ok(path)
            frames = decoded_video_frames(path)
            figures.append(f"{user}: {frames} frames decoded")
            assert frames >= sent_frames[user] - FPS // 2, (frames, sent_frames[user])
    # The MP4 converter (its avcC holds every SPS of the key frames): the
    # files are made, and the one with the real SPS decodes; what a decoder
    # makes of crafted-only parameter sets is not the daemon's to judge.
    assert mp4.get("Status") == 0, mp4
    mp4_streams = {}
    for name in mp4["FileList"]:
        info = ffprobe(folder / name)
        mp4_streams[name] = [(s["codec_type"], s.get("width"), s.get("height")) for s in info["streams"]]
    assert len(mp4_streams) == 3, mp4
    decode_ok(folder / f"{APP_ID}_{room}__UserId_s_{encode_id('sps_plus_real')}__UserId_e_main.mp4")
    print("hostile SPS: " + "; ".join(figures))
    print(f"hostile SPS: ingest video frames during the hostile publishers {frames_hostile:.0f}; engine restarts "
          f"{restarts:.0f}, recorder panics {panics:.0f}; /healthz not 200 {len(down)} times; MP4 callback "
          f"{mp4}; MP4 streams {mp4_streams}")
    assert_no_panic(d)
    assert restarts == 0 and panics == 0, (restarts, panics)
    assert not down, down
    assert frames_hostile >= 2 * HOSTILE_SECONDS * FPS * 0.8, frames_hostile
    assert requests.get(d.url + "/healthz", timeout=5).text == "ok\n"
