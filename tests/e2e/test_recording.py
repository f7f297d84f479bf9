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

from kiroku_e2e import APP_ID, REPO, create_params, free_port, wait_until
from recording import (UTC17, beep_times, decode_ok, ffprobe, flash_times, parse_playlist, playlist_start,
                       publish, publish_report, single_base, task_files, to_unix_ms)
from test_whip import CHROMIUM, _Quiet, whip_url

SEGMENT_SECONDS = 4


@pytest.fixture(scope="module")
def rec_receiver():
    from kiroku_e2e import CallbackReceiver
    r = CallbackReceiver().start()
    yield r
    r.stop()


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
    assert types[-1] == 305 and types[-2] == 302 or (types.index(302) < types.index(305)), types
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


def test_two_publishers_and_aux_are_recorded_exactly_as_the_spec_names_them(recd, rec_receiver):
    api = recd.sdk()
    room = 5101
    task_id = api.create(create_params(room=str(room), max_idle=60))
    assert api.describe(task_id)["Status"] == "Idle"
    fps = 15
    alice = publish(recd, room, "alice", "--aux", "--tone", "440", "--pattern", "bars", "--fps", str(fps),
                    "--sync-marks", "2", duration=32)
    bob = publish(recd, room, "bob_smith", "--tone", "660", "--pattern", "solid", "--color", "#c02020",
                  "--fps", str(fps), "--sync-marks", "2", duration=32)
    wait_until(lambda: api.describe(task_id)["Status"] == "InProgress", 15, 0.2, "InProgress with the first media")
    reports = {"alice": publish_report(alice), "bob_smith": publish_report(bob)}
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
            expected[base] = check_stream(folder, base, codec, secs)
    # Exactly the expected files: the playlists and the segments they name.
    names = {p.name for p in folder.iterdir()}
    want = {f"{b}.m3u8" for b in expected} | {n for pl in expected.values() for _, n, _ in pl.segments}
    assert names == want, sorted(names ^ want)
    # Several segments, cut near the target at key frames (2 s GOP).
    for base, pl in expected.items():
        assert len(pl.segments) >= 6, base
        assert all(d <= SEGMENT_SECONDS + 2.5 for d, _, _ in pl.segments[:-1]), (base, pl.segments)
    # Describe's list, the playlist tag and callback 307 agree.
    listed = {f["FileName"]: f for f in described["StorageFileList"]}
    slices = {c.payload["FileName"]: c.payload for c in cbs if c.event_type == 307}
    infos = {c.payload["FileList"] for c in cbs if c.event_type == 304}
    assert set(listed) == set(slices) == infos == {f"{b}.m3u8" for b in expected}
    for base, pl in expected.items():
        name = f"{base}.m3u8"
        user = "alice" if "YWxpY2U" in base else "bob_smith"
        track = "audio" if base.endswith("_audio") else "video"
        assert listed[name]["BeginTimeStamp"] == slices[name]["BeginTimeStamp"] == pl.start_rec_time, name
        assert listed[name]["UserId"] == slices[name]["UserId"] == user
        assert listed[name]["TrackType"] == slices[name]["TrackType"] == track
    for base in expected:
        decode_ok(folder / f"{base}.m3u8")
    check_sync(folder, room, reports, expected)


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
