"""Single-stream recording (RecordMode 1) end to end: publishers in, a task
created and deleted with Tencent's SDK, then the files checked against the
spec's naming rules and with ffprobe/ffmpeg, and the callbacks checked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import http.server
from functools import partial
from pathlib import Path

import pytest

from kiroku_e2e import APP_ID, REPO, create_params, free_port, metric_samples, wait_until
from recording import (UTC17, beep_times, encode_id, play_in_chromium, decode_ok, ffprobe, flash_times, parse_playlist, playlist_start,
                       publish, publish_report, single_base, task_files, to_unix_ms)
from test_whip import CHROMIUM, _Quiet, tracks, user_status, whip_url

SEGMENT_SECONDS = 4


@pytest.fixture(scope="module")
def rec_receiver():
    from kiroku_e2e import CallbackReceiver
    r = CallbackReceiver().start()
    yield r
    r.stop()
    r.assert_no_bad_bodies()


@pytest.fixture(scope="module")
def recd(kiroku_module, rec_receiver):
    return kiroku_module("rec", callback_url=rec_receiver.url,
                         recording={"segment_seconds": SEGMENT_SECONDS})


def wait_stopped(receiver, task_id: str, timeout: float = 30) -> list:
    """Waits for 305 (the end of the files) and returns every callback, in order."""
    receiver.wait_event(task_id, 305, timeout)
    return receiver.delivered(task_id)


def check_callback_order(cbs: list, leave_code: int) -> None:
    types = [c.event_type for c in cbs]
    assert all(c.sign_ok for c in cbs), "every callback carries a valid Sign"
    assert types[:2] == [301, 303], types
    assert types[-1] == 305 and types.index(302) < types.index(305), types
    assert types.count(302) == 1 and types.count(305) == 1, types
    stop = next(c for c in cbs if c.event_type == 302)
    assert stop.payload == {"LeaveCode": leave_code}, stop.payload
    assert next(c for c in cbs if c.event_type == 305).payload == {"Status": 0}
    # 307 comes before the 304 of the same playlist.
    for c in cbs:
        if c.event_type == 304:
            name = c.payload["FileList"]
            slices = [i for i, x in enumerate(cbs) if x.event_type == 307 and x.payload["FileName"] == name]
            assert slices and slices[0] < cbs.index(c), (name, types)


def check_stream(folder: Path, base: str, codec: str, publish_seconds: float | None,
                 tolerance: float = 0.01) -> tuple:
    """The playlist `base.m3u8` and its segments: names, tags, ffprobe, duration."""
    pl = parse_playlist(folder / f"{base}.m3u8")
    assert pl.ended, f"{base}: #EXT-X-ENDLIST"
    assert pl.segments, base
    for dur, name, _ in pl.segments:
        assert re.fullmatch(re.escape(base) + "_" + UTC17 + r"\.ts", name), name
        info = ffprobe(folder / name)
        streams = info["streams"]
        assert [s["codec_name"] for s in streams] == [codec], (name, streams)
        if codec == "aac":
            assert streams[0]["sample_rate"] == "48000" and streams[0]["profile"] == "LC", streams[0]
        else:
            assert (int(streams[0]["width"]), int(streams[0]["height"])) == pl.video_size, (name, pl.video_size)
    # The first segment's UTC name is the recording start time.
    first_utc = pl.segments[0][1][-20:-3]
    t = time.gmtime(pl.start_rec_time // 1000)
    assert first_utc == time.strftime("%Y%m%d%H%M%S", t) + f"{pl.start_rec_time % 1000:03d}", (first_utc, pl.start_rec_time)
    whole = ffprobe(folder / f"{base}.m3u8")
    assert [s["codec_name"] for s in whole["streams"]] == [codec]
    if publish_seconds is not None:
        assert abs(pl.total - publish_seconds) <= tolerance * publish_seconds, (base, pl.total, publish_seconds)
    return pl


class Browser:
    """Headless Debian Chromium publishing its fake camera and microphone
    (H.264 + Opus) through tests/whip/publish.html, served from another origin."""

    def __init__(self, d, room, user: str, tmp_path: Path):
        self.page = http.server.ThreadingHTTPServer(
            ("127.0.0.1", free_port()), partial(_Quiet, directory=str(REPO / "tests" / "whip")))
        threading.Thread(target=self.page.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{self.page.server_port}/publish.html?whip={whip_url(d, room, user)}"
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             "--disable-quic", f"--user-data-dir={tmp_path / 'chrome'}", "--use-fake-device-for-media-stream",
             "--use-fake-ui-for-media-stream", "--allow-loopback-in-peer-connection", url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def kill(self) -> float:
        """Kills the browser; returns the Unix ms it stopped publishing."""
        stopped = time.time() * 1000
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.page.shutdown()
        return stopped


def browser_publishing(d, room, user) -> bool:
    u = user_status(d, room, user)
    if not u:
        return False
    t = tracks(u)
    return "audio" in t and "main_video" in t and t["main_video"]["frames"] > 10


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (tests/run-all.sh installs it)")
def test_two_publishers_aux_and_a_browser_are_recorded_exactly_as_the_spec_names_them(recd, rec_receiver,
                                                                                        tmp_path):
    """Two `kiroku publish` users (different tones and patterns, one also
    publishing aux) and a headless Chromium publisher, 30+ s each."""
    api = recd.sdk()
    room = 5101
    task_id = api.create(create_params(room=str(room), max_idle=60))
    assert api.describe(task_id)["Status"] == "Idle"
    browser = Browser(recd, room, "browser_1", tmp_path)
    try:
        wait_until(lambda: browser_publishing(recd, room, "browser_1"), 45, 0.25, "the browser's media")
        assert api.describe(task_id)["Status"] == "InProgress"
    except BaseException:
        browser.kill()
        raise
    fps = 15
    alice = publish(recd, room, "alice", "--aux", "--tone", "440", "--pattern", "bars", "--fps", str(fps),
                    "--sync-marks", "2", duration=32)
    bob = publish(recd, room, "bob_smith", "--tone", "660", "--pattern", "solid", "--color", "#c02020",
                  "--fps", str(fps), "--sync-marks", "2", duration=32)
    try:
        reports = {"alice": publish_report(alice), "bob_smith": publish_report(bob)}
    finally:
        # What of the browser's audio reached the box (its Opus frames are
        # 20 ms), read just before it stops; the browser is stopped even if
        # the read fails.
        try:
            status = user_status(recd, room, "browser_1")
        finally:
            browser_stopped_ms = browser.kill()
        browser_audio_frames = tracks(status).get("audio", {}).get("frames", 0) if status else 0
    time.sleep(0.5)
    described = api.describe(task_id)
    api.delete(task_id)
    cbs = wait_stopped(rec_receiver, task_id)
    check_callback_order(cbs, leave_code=0)

    folder = task_files(recd, task_id)
    expected = {}
    for user, aux in (("alice", True), ("bob_smith", False)):
        rep = reports[user]
        video_frames = rep["video_frames_sent"] / (2 if aux else 1)
        seconds = video_frames / fps
        audio_seconds = rep["audio_frames_sent"] * 0.02
        kinds = [("main", "audio", "aac", audio_seconds), ("main", "video", "h264", seconds)]
        if aux:
            kinds.append(("aux", "video", "h264", seconds))
        for media, kind, codec, secs in kinds:
            base = single_base(room, user, media, kind)
            try:
                expected[base] = check_stream(folder, base, codec, secs)
            except AssertionError as e:
                # Name the timeline's view (re-anchors, refused reports) and
                # the first segment, to tell a lost first GOP from a squeeze.
                text = recd.metrics_text()
                events = {labels.get("event"): v for labels, v in
                          metric_samples(text, "kiroku_recorder_clock_events_total") if v}
                first = parse_playlist(folder / f"{base}.m3u8").segments[:2]
                # Key frame requests along the way (a lost first GOP is a
                # request that did not reach the publisher, or came late).
                requests = {name: sum(v for _, v in metric_samples(text, name)) for name in (
                    "kiroku_recorder_keyframe_requests_total", "kiroku_ingest_keyframe_requests_total",
                    "kiroku_ingest_keyframe_requests_deferred_total")}
                answered = {u: r.get("keyframe_requests") for u, r in reports.items()}
                raise AssertionError(f"{e}; timeline events {events}; first segments {first}; "
                                     f"key frame requests {requests}, seen by the publishers {answered}") from e
    for base, codec in ((single_base(room, "browser_1", "main", "audio"), "aac"),
                        (single_base(room, "browser_1", "main", "video"), "h264")):
        pl = parse_playlist(folder / f"{base}.m3u8")
        published = (browser_stopped_ms - pl.start_rec_time) / 1000
        assert published >= 30, published
        try:
            if codec == "aac":
                # The audio holds every frame that reached the box, and is
                # no longer than the wall time. Against the wall time alone
                # it can be short: a CPU-starved Chromium captures less
                # audio than time passes (a CI run: 0.41 s of 32.9 s), and
                # only a sender report after the stall tells the box of it.
                expected[base] = check_stream(folder, base, codec, None)
                reached = browser_audio_frames * 0.020
                assert reached >= 0.95 * published, (base, "audio that reached the box", reached, published)
                assert 0.99 * reached <= expected[base].total <= 1.01 * published, (
                    base, expected[base].total, "reached", reached, "published", published)
            else:
                expected[base] = check_stream(folder, base, codec, published)
        except AssertionError as e:
            # A loaded box starves Chromium's capture threads: say what the
            # recorder's timeline made of its sender reports.
            events = {labels.get("event"): v for labels, v in
                      metric_samples(recd.metrics_text(), "kiroku_recorder_clock_events_total") if v}
            raise AssertionError(f"{e}; timeline events {events}") from e
    # Exactly the expected files: the playlists and the segments they name.
    names = {p.name for p in folder.iterdir()}
    want = {f"{b}.m3u8" for b in expected} | {n for pl in expected.values() for _, n, _ in pl.segments}
    assert names == want, sorted(names ^ want)
    # Several segments, cut near the target at key frames: every 2 s for
    # `kiroku publish`; the browser sends key frames rarely, so its segments
    # run to target + grace (2 s), when one is requested.
    for base, pl in expected.items():
        assert len(pl.segments) >= 5, base
        assert all(d <= SEGMENT_SECONDS + 3.5 for d, _, _ in pl.segments[:-1]), (base, pl.segments)
    # Describe's list, the playlist tag and callback 307 agree.
    listed = {f["FileName"]: f for f in described["StorageFileList"]}
    slices = {c.payload["FileName"]: c.payload for c in cbs if c.event_type == 307}
    infos = {c.payload["FileList"] for c in cbs if c.event_type == 304}
    assert set(listed) == set(slices) == infos == {f"{b}.m3u8" for b in expected}
    for base, pl in expected.items():
        name = f"{base}.m3u8"
        user = next(u for u in ("alice", "bob_smith", "browser_1") if encode_id(u) in base)
        track = "audio" if base.endswith("_audio") else "video"
        assert listed[name]["BeginTimeStamp"] == slices[name]["BeginTimeStamp"] == pl.start_rec_time, name
        assert listed[name]["UserId"] == slices[name]["UserId"] == user
        assert listed[name]["TrackType"] == slices[name]["TrackType"] == track
    for base in expected:
        decode_ok(folder / f"{base}.m3u8")
    check_sync(folder, room, reports, expected)
    # A standard HLS player: Chromium's built-in one in a <video> element
    # loads, plays, seeks to the end and ends each kind of playlist.
    for i, base in enumerate((single_base(room, "alice", "main", "video"), single_base(room, "alice", "main", "audio"),
                              single_base(room, "browser_1", "main", "video"))):
        r = play_in_chromium(CHROMIUM, folder, f"{base}.m3u8", tmp_path / f"player{i}", wait_ms=7000)
        assert r and "error" not in r, (base, r)
        events = [e[0] for e in r["events"]]
        assert "playing" in events and "seeked" in events and "ended" in events, (base, r)
        # Chromium's player reports audio durations to the millisecond but
        # video ones up to ~0.5 s short of the EXTINF sum (which ffprobe and
        # the frame count confirm); 2 % covers its estimate.
        assert abs(r["duration"] - expected[base].total) <= 0.02 * expected[base].total, (base, r, expected[base].total)
        if base.endswith("_video"):
            assert (r["width"], r["height"]) == expected[base].video_size and r["decodedFrames"] > 0, (base, r)


def check_sync(folder: Path, room, reports: dict, expected: dict, period_ms: float = 2000) -> None:
    """Every publisher's flashes (video) and beeps (audio) sit on the server
    timeline within 40 ms of each other and of the instant the publisher
    made them: one user's audio and video line up, and so do different users."""
    offsets = []
    for user, rep in reports.items():
        a_base, v_base = single_base(room, user, "main", "audio"), single_base(room, user, "main", "video")
        a_path, v_path = folder / f"{a_base}.m3u8", folder / f"{v_base}.m3u8"
        a0, v0 = playlist_start(a_path), playlist_start(v_path)
        flashes = [to_unix_ms(expected[v_base], v0, t) for t in flash_times(v_path)]
        beeps = [to_unix_ms(expected[a_base], a0, t) for t in beep_times(a_path)]
        assert len(flashes) >= 10 and len(beeps) >= 10, (user, flashes, beeps)
        start = rep["media_start_unix_ms"]
        for f in flashes:
            b = min(beeps, key=lambda b: abs(b - f))
            k = round((f - start) / period_ms)
            if k == 0:
                continue  # media time 0 passes before the publisher connects
            mark = start + k * period_ms
            offsets.append((user, round(f - mark, 1), round(b - mark, 1)))
    print("sync offsets (user, flash − mark ms, beep − mark ms):", offsets)
    for user, flash, beep in offsets:
        assert abs(flash - beep) <= 40, f"{user}: flash {flash} ms but beep {beep} ms from the mark\n{offsets}"
        assert abs(flash) <= 40 and abs(beep) <= 40, f"{user}: flash {flash} ms, beep {beep} ms from the mark\n{offsets}"


def users_files(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.m3u8")}


def test_subscription_lists_and_a_live_modify(recd, rec_receiver):
    """Allow/deny lists per media kind with a wildcard; Modify replaces them
    live: a newly allowed track starts at its next key frame, a removed one
    ends its playlist cleanly."""
    api = recd.sdk()
    room = 5102
    task_id = api.create(create_params(room=str(room), max_idle=60, RecordParams={
        "RecordMode": 1, "MaxIdleTime": 60,
        "SubscribeStreamUserIds": {"SubscribeAudioUserIds": ["al_.*$"], "UnSubscribeVideoUserIds": ["al_2"]}}))
    small = ("--width", "320", "--height", "180", "--fps", "10", "--keyframe-interval", "10")
    pubs = {u: publish(recd, room, u, *small, duration=16) for u in ("al_1", "al_2", "bob")}
    wait_until(lambda: api.describe(task_id)["Status"] == "InProgress", 15, 0.2)
    time.sleep(6)
    modified_ms = time.time() * 1000
    api.modify(task_id, SubscribeStreamUserIds={"SubscribeAudioUserIds": ["al_2", "bob"]})
    for p in pubs.values():
        publish_report(p)
    api.delete(task_id)
    wait_stopped(rec_receiver, task_id)
    folder = task_files(recd, task_id)
    pl = {}
    for user, kind in (("al_1", "audio"), ("al_1", "video"), ("al_2", "audio"), ("al_2", "video"),
                       ("bob", "audio"), ("bob", "video")):
        base = single_base(room, user, "main", kind)
        pl[(user, kind)] = check_stream(folder, base, "aac" if kind == "audio" else "h264", None)
    assert users_files(folder) == {single_base(room, u, "main", k) + ".m3u8" for u, k in pl}
    # Before the Modify: al_1 audio (removed by it) ran about 6 s and ended.
    assert 4 < pl[("al_1", "audio")].total < 10, pl[("al_1", "audio")].total
    # Added by the Modify: started after it, at a key frame (within 1 s).
    for added in (("al_2", "video"), ("bob", "audio")):
        begin = pl[added].start_rec_time
        assert modified_ms - 100 <= begin <= modified_ms + 1500, (added, begin - modified_ms)
        assert 5 < pl[added].total < 11, (added, pl[added].total)
    # Never touched: the whole ~16 s.
    for whole in (("al_1", "video"), ("al_2", "audio"), ("bob", "video")):
        assert pl[whole].total > 13, (whole, pl[whole].total)


def test_a_user_who_leaves_and_returns_continues_after_a_discontinuity(recd, rec_receiver):
    api = recd.sdk()
    room = 5103
    task_id = api.create(create_params(room=str(room), max_idle=60))
    first = publish_report(publish(recd, room, "comeback", "--fps", "10", "--keyframe-interval", "10", duration=7))
    time.sleep(4)
    second = publish_report(publish(recd, room, "comeback", "--fps", "10", "--keyframe-interval", "10", duration=7))
    api.delete(task_id)
    wait_stopped(rec_receiver, task_id)
    folder = task_files(recd, task_id)
    # On return the new publication is subscribed when the room reports it
    # and recorded from its first key frame (asked for at once by PLI): the
    # frames sent before that, one or two at 10 fps, cannot be recorded.
    video = check_stream(folder, single_base(room, "comeback", "main", "video"), "h264",
                         (first["video_frames_sent"] + second["video_frames_sent"]) / 10, tolerance=0.025)
    audio = check_stream(folder, single_base(room, "comeback", "main", "audio"), "aac",
                         (first["audio_frames_sent"] + second["audio_frames_sent"]) * 0.02, tolerance=0.025)
    for pl in (video, audio):
        discs = [i for i, (_, _, d) in enumerate(pl.segments) if d]
        assert len(discs) == 1 and pl.text.count("#EXT-X-DISCONTINUITY") == 1, pl.text
        # Segment names keep real UTC: the gap shows between the two runs.
        before, after = pl.segments[discs[0] - 1], pl.segments[discs[0]]

        def utc_s(name: str) -> float:
            u = name[-20:-3]
            return time.mktime(time.strptime(u[:14], "%Y%m%d%H%M%S")) + int(u[14:]) / 1000

        gap = utc_s(after[1]) - (utc_s(before[1]) + before[0])
        assert 3.5 < gap < 7, gap
        decode_ok(folder / f"{single_base(room, 'comeback', 'main', 'video' if pl is video else 'audio')}.m3u8")


def test_no_publisher_for_max_idle_time_stops_the_task_with_leave_code_99(recd, rec_receiver):
    api = recd.sdk()
    room = 5104
    task_id = api.create(create_params(room=str(room), max_idle=5))
    publish_report(publish(recd, room, "brief", "--fps", "10", duration=5))
    left = time.time()
    stop = rec_receiver.wait_event(task_id, 302, 15)
    assert stop.payload == {"LeaveCode": 99}
    assert 4.5 <= stop.received_at - left <= 8, stop.received_at - left
    cbs = wait_stopped(rec_receiver, task_id)
    check_callback_order(cbs, leave_code=99)
    folder = task_files(recd, task_id)
    for kind, codec in (("audio", "aac"), ("video", "h264")):
        check_stream(folder, single_base(room, "brief", "main", kind), codec, None)
    api.wait_gone(task_id)


def test_av_merge_puts_a_users_audio_and_video_in_one_stream(recd, rec_receiver):
    api = recd.sdk()
    room = 5105
    task_id = api.create(create_params(room=str(room), RecordParams={"RecordMode": 1, "MaxIdleTime": 60, "AvMerge": 1}))
    rep = publish_report(publish(recd, room, "merged", "--aux", "--fps", "15", "--sync-marks", "2", duration=12))
    described = api.describe(task_id)
    api.delete(task_id)
    cbs = wait_stopped(rec_receiver, task_id)
    folder = task_files(recd, task_id)
    av = single_base(room, "merged", "main", "av")
    aux = single_base(room, "merged", "aux", "video")
    assert users_files(folder) == {f"{av}.m3u8", f"{aux}.m3u8"}
    pl = parse_playlist(folder / f"{av}.m3u8")
    assert pl.ended and pl.video_size == (640, 360)
    for _, name, _ in pl.segments:
        codecs = sorted(s["codec_name"] for s in ffprobe(folder / name)["streams"])
        assert codecs == ["aac", "h264"], (name, codecs)
    assert abs(pl.total - rep["video_frames_sent"] / 2 / 15) <= 0.01 * pl.total + 0.07
    decode_ok(folder / f"{av}.m3u8")
    check_stream(folder, aux, "h264", None)
    tracks = {f["FileName"]: f["TrackType"] for f in described["StorageFileList"]}
    assert tracks == {f"{av}.m3u8": "audio_video", f"{aux}.m3u8": "video"}
    assert {c.payload["TrackType"] for c in cbs if c.event_type == 307} == {"audio_video", "video"}
    # Flash and beep of each mark in the one file within 40 ms.
    start = playlist_start(folder / f"{av}.m3u8")
    flashes, beeps = flash_times(folder / f"{av}.m3u8"), beep_times(folder / f"{av}.m3u8")
    assert len(flashes) >= 4, flashes
    for f in flashes:
        assert min(abs(b - f) for b in beeps) <= 0.040, (f, beeps, start)


def test_stream_type_and_media_id_pick_what_is_recorded(recd, rec_receiver):
    api = recd.sdk()
    room_a, room_b = 5106, 5109
    audio_only = api.create(create_params(room=str(room_a), RecordParams={"RecordMode": 1, "MaxIdleTime": 60,
                                                                          "StreamType": 1}))
    aux_video = api.create(create_params(room=str(room_b), RecordParams={"RecordMode": 1, "MaxIdleTime": 60,
                                                                         "StreamType": 2, "MediaId": 2}))
    pa = publish(recd, room_a, "speaker", "--aux", "--fps", "10", duration=6)
    pb = publish(recd, room_b, "presenter", "--aux", "--fps", "10", duration=6)
    publish_report(pa)
    publish_report(pb)
    for t in (audio_only, aux_video):
        api.delete(t)
        wait_stopped(rec_receiver, t)
    assert users_files(task_files(recd, audio_only)) == {single_base(room_a, "speaker", "main", "audio") + ".m3u8"}
    assert users_files(task_files(recd, aux_video)) == {single_base(room_b, "presenter", "aux", "video") + ".m3u8"}


def test_at_most_25_streams_are_recorded_per_task(recd, rec_receiver):
    api = recd.sdk()
    room = 5107
    before = recd.metric("kiroku_recorder_streams_refused_total")
    task_id = api.create(create_params(room=str(room), max_idle=60))
    rep = publish_report(publish(recd, room, "crowd", "--count", "26", "--no-audio", "--width", "160",
                                 "--height", "96", "--fps", "5", "--keyframe-interval", "5", duration=8))
    assert rep["connected"] == 26
    api.delete(task_id)
    wait_stopped(rec_receiver, task_id, timeout=60)
    files = users_files(task_files(recd, task_id))
    assert len(files) == 25, sorted(files)
    assert recd.metric("kiroku_recorder_streams_refused_total") - before == 1
    assert "stream not recorded" in recd.log_text()


def test_a_silent_publisher_in_the_room_holds_off_the_idle_stop(recd, rec_receiver):
    """Spec §3.4: a publisher who is in the room but sends nothing does not
    start the MaxIdleTime count; the count starts when they leave."""
    api = recd.sdk()
    room = 5110
    task_id = api.create(create_params(room=str(room), max_idle=5))
    silent = publish(recd, room, "quiet", "--mute", duration=12)
    publish_report(silent)
    left = time.time()
    assert api.describe(task_id)["Status"] == "Idle", "no media: still Idle"
    assert 302 not in [c.event_type for c in rec_receiver.delivered(task_id)], "not stopped while present"
    stop = rec_receiver.wait_event(task_id, 302, 15)
    assert stop.payload == {"LeaveCode": 99}
    assert 4.5 <= stop.received_at - left <= 8, stop.received_at - left
    wait_stopped(rec_receiver, task_id)
    assert not task_files(recd, task_id).exists() or not any(task_files(recd, task_id).iterdir())
