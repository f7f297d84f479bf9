"""Storage and outputs end to end: recordings uploaded to a real S3-compatible
server (moto's standalone server, checked with boto3), storage outages and
daemon crashes between spool and upload, MP4/AAC outputs checked with
ffprobe, and the built-in VOD store fetched over HTTP with range requests.

Media comes from an independent publisher (aiortc over WHIP,
tests/e2e/independent_publisher.py), not from `kiroku publish`, the binary
under test; recorded durations are measured with ffprobe and judged against
the publisher's own wall clock and frame count.

Outages are made with a TCP relay in front of moto that stops listening
(connection refused, as when the server is down) and listens again later:
moto keeps its buckets in memory, so stopping moto itself would also lose
what was uploaded before the outage."""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3  # tests/e2e/requirements.txt
import pytest

from kiroku_e2e import APP_ID, REPO, create_params, free_port, wait_until
from recording import (UTC17, decoded_video_frames, encode_id, ffprobe, first_pts, parse_playlist,
                       segments_seconds)

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
from independent_publisher import Publisher, whip_url  # noqa: E402

BUCKET = "recordings"
REGION = "us-east-1"
MOTO_BIN = Path(sys.executable).with_name("moto_server")


class Moto:
    """moto_server on a free port, in its own process."""

    def __init__(self):
        if not MOTO_BIN.exists():
            pytest.fail(f"{MOTO_BIN} missing: the test command installs moto[server] into .venv")
        self.port = free_port()
        self.proc = subprocess.Popen([str(MOTO_BIN), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{self.port}"
        self.client = boto3.client("s3", endpoint_url=url, region_name=REGION,
                                   aws_access_key_id="AK", aws_secret_access_key="SK")
        wait_until(self._up, 20, 0.2, "moto_server listening")

    def _up(self) -> bool:
        try:
            self.client.list_buckets()
            return True
        except Exception:
            return False

    def objects(self, prefix: str) -> dict[str, bytes]:
        out = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = self.client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        return out

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            # A moto holding gigabytes (a long soak) can take longer to exit.
            self.proc.kill()
            self.proc.wait(10)


class Relay:
    """A TCP relay 127.0.0.1:<port> → moto that can be cut (refuses connections) and restored."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.restore()

    def restore(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def cut(self):
        """Stops listening and drops every open connection."""
        with self._lock:
            if self._listener:
                # close() alone does not wake the thread blocked in accept(),
                # which would then let one more connection through to moto;
                # shutdown() makes that accept() fail at once.
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile: refuse it too
                    client.close()
                    upstream.close()
                    return
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


@pytest.fixture(scope="module")
def moto():
    m = Moto()
    m.client.create_bucket(Bucket=BUCKET)
    yield m
    m.stop()


def storage_config(endpoint_port: int, **extra) -> dict:
    return {
        "spool_capacity_mb": 256,
        "retry_base_ms": 200,
        "retry_max_seconds": 1,
        "drain_timeout_seconds": extra.pop("drain_timeout_seconds", 20),
        "s3": {
            "aws_endpoint": f"http://127.0.0.1:{endpoint_port}",
            "allow_http": True,
            "path_style": True,
            "connect_timeout_secs": 2,
            "request_timeout_secs": 10,
            "max_retries": 0,
            "retry_timeout_secs": 1,
        },
        **extra,
    }


def cloud_storage(prefix: list[str]) -> dict:
    return {"CloudStorage": {"Vendor": 1, "Region": REGION, "Bucket": BUCKET, "AccessKey": "AKIDEXAMPLE",
                             "SecretKey": "secret", "FileNamePrefix": prefix}}


# The aiortc publishers here: 15 fps, a key frame forced every 30 frames
# (2 s, the cadence the segment and MP4-split limits below are judged by),
# plus one at the start and one per key frame request (PLI) of the recorder.
PUBLISH_FPS = 15
GOP_SECONDS = 30 / PUBLISH_FPS
# A TS segment's own duration (ffprobe) against its #EXTINF: kiroku writes
# the EXTINF from the same timestamps ffprobe reads, in milliseconds, so they
# agree within 20 ms: less than one AAC frame (21.3 ms) or video frame (67 ms).
SEGMENT_DURATION_TOLERANCE = 0.02


@pytest.fixture
def publisher():
    """`publisher(d, room, user, **kw)`: an aiortc Publisher (15 fps, a key
    frame every GOP_SECONDS; `kw` as Publisher takes), started (connected)
    when returned. Every one still publishing is stopped at teardown, so a
    failed test leaves none sending."""
    started: list[Publisher] = []

    def start(d, room, user: str, **kw) -> Publisher:
        kw = {"fps": PUBLISH_FPS, "keyframe_interval": GOP_SECONDS, **kw}
        pub = Publisher(whip_url(d.url, APP_ID, room, user), **kw)
        started.append(pub)
        return pub.start(timeout=10)

    yield start
    for pub in started:
        pub.stop()


def publish_for(seconds: float, *pubs: Publisher) -> None:
    """Keeps each publisher on until `seconds` after its own first frame,
    then stops it (ends its tracks, DELETEs its session)."""
    for pub in sorted(pubs, key=lambda p: p.started_at):
        time.sleep(max(0.0, pub.started_at + seconds - time.time()))
        pub.stop()
    for pub in pubs:
        assert pub.delete_status == 200 and "failed" not in pub.states, (pub, pub.delete_status)


def decode_clean(path: Path) -> None:
    """`ffmpeg -v error -i <file> -f null -`: exit 0 and not one error line.

    A `.ts` is read as MPEG-TS (`-f mpegts`), as an HLS player does: a
    segment of a few TS packets (a task's last 64 ms of audio) is too short
    for ffmpeg's format probe, which then takes it for an MPEG program
    stream."""
    fmt = ["-f", "mpegts"] if path.suffix == ".ts" else []
    r = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *fmt, "-i", str(path), "-f", "null", "-"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and not r.stderr.strip(), f"{path.name} does not decode cleanly: {r.stderr[-2000:]}"


def check_bucket_recording(objects: dict[str, bytes], folder: str, tmp: Path,
                           unended_ok: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Every object under `folder` is a playlist or a segment named by one; every
    segment a playlist names is there; each playlist ended (except those named
    in `unended_ok`: a playlist whose writer was killed); every segment is
    downloaded and decodes without a single error, and its #EXTINF is its
    span on the media timeline: up to the next segment's first timestamp
    (ffprobe's start_time; a gap in the publisher's timeline at a cut
    belongs to the segment before it, which ffprobe's duration cannot see),
    and for the last segment (or the last before a discontinuity) its own
    duration. Returns playlist name → its segments."""
    names = {k[len(folder) + 1:]: v for k, v in objects.items()}
    assert all("/" not in n for n in names), list(names)
    playlists = {n: v for n, v in names.items() if n.endswith(".m3u8")}
    assert playlists, list(names)
    named: dict[str, list[str]] = {}
    extinf: dict[str, float] = {}
    # segment → the segment after it in its playlist, unless a discontinuity is between them
    following: dict[str, str | None] = {}
    for name, text in playlists.items():
        path = tmp / name
        path.write_bytes(text)
        pl = parse_playlist(path)
        assert pl.ended or name in unended_ok, f"{name} has no #EXT-X-ENDLIST"
        segs = [s for _, s, _ in pl.segments]
        named[name] = segs
        extinf.update({s: d for d, s, _ in pl.segments})
        for (_, seg, _), nxt in zip(pl.segments, [*pl.segments[1:], None]):
            following[seg] = nxt[1] if nxt is not None and not nxt[2] else None
        missing = [s for s in segs if s not in names]
        assert not missing, f"{name} names segments the bucket lacks: {missing}"
    all_named = {s for segs in named.values() for s in segs}
    extra = [n for n in names if not n.endswith(".m3u8") and n not in all_named]
    assert not extra, f"objects no playlist names: {extra}"
    probed: dict[str, dict] = {}
    for seg in sorted(all_named):
        p = tmp / seg
        p.write_bytes(names[seg])
        info = ffprobe(p)
        assert info["streams"], seg
        decode_clean(p)
        probed[seg] = info["format"]
    for seg in sorted(all_named):
        got = float(probed[seg]["duration"])
        nxt = following[seg]
        if nxt is not None:
            span = float(probed[nxt]["start_time"]) - float(probed[seg]["start_time"])
            assert abs(span - extinf[seg]) <= SEGMENT_DURATION_TOLERANCE, \
                f"{seg}: the next segment starts {span:.3f} s later, #EXTINF {extinf[seg]:.3f} s"
            assert got <= extinf[seg] + SEGMENT_DURATION_TOLERANCE, \
                f"{seg}: ffprobe says {got:.3f} s, longer than its #EXTINF {extinf[seg]:.3f} s"
            continue
        # A segment of a few frames (the tail a recorder closes when its
        # task moves to another box) gives ffprobe too few timestamps to
        # infer the last frame's duration: one frame interval more is fine.
        tolerance = SEGMENT_DURATION_TOLERANCE if extinf[seg] >= 0.5 else 1.0 / PUBLISH_FPS + 0.005
        assert abs(got - extinf[seg]) <= tolerance, \
            f"{seg}: ffprobe says {got:.3f} s, #EXTINF {extinf[seg]:.3f} s"
    return named


def spool_entries(d) -> list[Path]:
    return sorted((Path(d.config["data_dir"]) / "spool").glob("*.ent"))


SPOOL_MAGIC = b"KRKSPOL1"


def read_spool(d) -> list[tuple[str, str, bytes]]:
    """What the daemon made durable in its spool, in put order: (task id,
    object key, payload) per entry file. The entry layout is the spool's
    (daemon/src/output/spool/format.rs): magic KRKSPOL1, u32 LE task-id length,
    u32 LE key length, u64 LE payload length, task id, key, payload; files
    are named by their 16-hex-digit sequence number."""
    out = []
    for path in spool_entries(d):
        raw = path.read_bytes()
        assert raw[:8] == SPOOL_MAGIC, f"{path.name}: not a spool entry ({raw[:8]!r})"
        task_len, key_len, data_len = struct.unpack_from("<IIQ", raw, 8)
        header = 24 + task_len + key_len
        assert header + data_len == len(raw), f"{path.name}: {len(raw)} bytes, header says {header + data_len}"
        out.append((raw[24:24 + task_len].decode(), raw[24 + task_len:header].decode(), raw[header:]))
    return out


def test_recording_lands_in_s3_with_callbacks(kiroku, receiver, moto, publisher, tmp_path):
    d = kiroku("s3", callback_url=receiver.url, recording={"segment_seconds": 2},
               storage=storage_config(moto.port))
    api = d.sdk()
    room, user = "4101", "alice"
    task = api.create(create_params(room=room, StorageParams=cloud_storage(["p1", "p2"])))
    pub = publisher(d, room, user)
    publish_for(6, pub)
    # Describe lists the playlists while the task runs.
    files = wait_until(lambda: api.describe(task)["StorageFileList"] or None, 10, what="StorageFileList")
    api.delete(task)
    stop = receiver.wait_event(task, 305, 60)
    assert stop.payload == {"Status": 0}, stop.payload
    folder = f"p1/p2/{task}"
    objects = moto.objects(folder + "/")
    named = check_bucket_recording(objects, folder, tmp_path)
    base = f"{APP_ID}_{room}__UserId_s_{encode_id(user)}__UserId_e_main"
    assert set(named) == {f"{base}_audio.m3u8", f"{base}_video.m3u8"}, set(named)
    assert {f["FileName"] for f in files} <= set(named)
    # check_bucket_recording left the objects in tmp_path: the uploaded
    # recording is all the publisher sent.
    check_recorded_duration(tmp_path, f"{base}_video.m3u8", pub)
    check_recorded_duration(tmp_path, f"{base}_audio.m3u8", pub)
    # 304 once per playlist, after its upload; 303 at the start; no 308.
    cbs = receiver.delivered(task)
    types = [c.event_type for c in cbs]
    assert types[:2] == [301, 303] and cbs[1].payload == {"Status": 0}, types
    infos = [c.payload["FileList"] for c in cbs if c.event_type == 304]
    assert sorted(infos) == sorted(named), infos
    assert 308 not in types, types
    assert types[-1] == 305, types
    # Nothing is left behind in the spool, and metrics saw the uploads.
    assert spool_entries(d) == []
    assert d.metric("kiroku_upload_files_total") >= len(objects)
    assert d.metric("kiroku_upload_pending_files") == 0
    # The gauge has one child, for the backend in use: the other may be absent.
    backend = "io_uring" if d.metric("kiroku_spool_backend", {"backend": "io_uring"}, default=0) == 1 else "plain"
    assert d.metric("kiroku_spool_backend", {"backend": backend}) == 1
    assert re.search(r"spool (opened|: io_uring unavailable)", d.log_text())


def test_outage_strands_files_then_uploads_them(kiroku, receiver, moto, publisher, tmp_path):
    relay = Relay(moto.port)
    d = kiroku("outage", callback_url=receiver.url, recording={"segment_seconds": 2},
               storage=storage_config(relay.port, drain_timeout_seconds=2))
    api = d.sdk()
    room, user = "4102", "bob"
    task = api.create(create_params(room=room, StorageParams=cloud_storage([])))
    pub = publisher(d, room, user)
    # The first playlist is uploaded before the outage.
    receiver.wait_event(task, 304, 20)
    relay.cut()
    publish_for(10, pub)
    api.delete(task)
    stop = receiver.wait_event(task, 305, 30)
    assert stop.payload == {"Status": 1}, "ended with files stranded"
    err = receiver.wait_event(task, 308, 5)
    assert err.payload["Code"] in ("ConnectError", "RequestError", "TransportError", "Timeout"), err.payload
    assert err.payload["Message"], err.payload
    assert spool_entries(d), "stranded files wait in the spool"
    assert d.metric("kiroku_upload_failures_total", {"kind": "transport"}) >= 1
    # The task is gone from the API while its files wait.
    api.wait_gone(task, timeout=10)
    time.sleep(3)
    relay.restore()
    recovered = wait_until(lambda: next((c for c in receiver.delivered(task)
                                         if c.event_type == 305 and c.payload == {"Status": 2}), None),
                           60, 0.2, "305 Status 2 after the storage came back")
    assert recovered
    assert spool_entries(d) == []
    objects = moto.objects(task + "/")
    named = check_bucket_recording(objects, task, tmp_path)
    base = f"{APP_ID}_{room}__UserId_s_{encode_id(user)}__UserId_e_main"
    assert set(named) == {f"{base}_audio.m3u8", f"{base}_video.m3u8"}, set(named)
    # Nothing recorded during the outage was lost: the bucket holds all the
    # publisher sent (check_bucket_recording left the objects in tmp_path).
    check_recorded_duration(tmp_path, f"{base}_video.m3u8", pub)
    check_recorded_duration(tmp_path, f"{base}_audio.m3u8", pub)
    assert d.metric("kiroku_upload_targets") == 0, "the ended task's upload target is gone"


def check_recorded_duration(folder: Path, playlist: str, pub: Publisher) -> None:
    """The stream recorded in `folder/playlist` is the whole of what the
    aiortc publisher sent, measured with ffprobe (each segment's own
    duration; for video also the frames ffprobe decodes).

    `published` is the publisher's wall clock from its first frame (produced
    once ICE and DTLS are up: a slow connection cannot hide a loss) to its
    stop(); `frames_sent` the video frames it handed to its encoder.
    - Longer: never by more than the last frame's own duration (1/15 s of
      video; 20 ms of Opus in whole 21.3 ms AAC frames) plus ffprobe's
      rounding: 0.1 s. H.264 is passed through, so never one frame more than
      were sent.
    - Shorter: the recording may lack the frames before its first key frame
      (the recorder subscribes and asks for one, PLI, and aiortc answers
      with its next frame: measured 0 or 1 frame) and what is in flight at
      the DELETE; 0.5 s (7 frames) leaves room for a loaded machine."""
    pl = parse_playlist(folder / playlist)
    assert pl.ended and pl.segments, pl.text
    durations = segments_seconds(folder, [n for _, n, _ in pl.segments])
    recorded, published = sum(durations), pub.published_seconds
    figures = (playlist, f"recorded {recorded:.3f} s (segments {[round(x, 3) for x in durations]}, "
               f"EXTINF sum {pl.total:.3f})", f"published {published:.3f} s", f"frames sent {pub.frames_sent}")
    if playlist.endswith("_video.m3u8"):
        frames = decoded_video_frames(folder / playlist)
        figures += (f"frames recorded {frames}",)
        assert pub.frames_sent - 0.5 * PUBLISH_FPS <= frames <= pub.frames_sent, figures
    print("recorded vs published:", figures)
    assert published - 0.5 <= recorded <= published + 0.1, figures


def test_kill9_between_spool_and_upload_loses_nothing(kiroku, receiver, moto, publisher, tmp_path):
    relay = Relay(moto.port)
    d = kiroku("crash", callback_url=receiver.url, recording={"segment_seconds": 2},
               storage=storage_config(relay.port))
    api = d.sdk()
    room, user = "4103", "carol"
    relay.cut()
    task = api.create(create_params(room=room, StorageParams=cloud_storage(["c"])))
    pub = publisher(d, room, user)
    wait_until(lambda: len(spool_entries(d)) >= 4, 20, 0.2, "segments spooled while the storage is down")
    publish_for(8, pub)
    d.kill9()
    # What the daemon had made durable when it died: every one of these must
    # reach the bucket, byte for byte (a playlist rewritten later may grow).
    entries = read_spool(d)
    assert len(entries) >= 4, f"{len(entries)} spool entries survived the crash"
    assert {t for t, _, _ in entries} == {task}, entries
    spooled: dict[str, bytes] = {}
    for _, key, data in entries:  # put order: a key's last entry is its latest version
        spooled[key] = data
    assert all(k.startswith(f"c/{task}/") for k in spooled), sorted(spooled)
    spooled_segments = {k for k in spooled if k.endswith(".ts")}
    assert len(spooled_segments) >= 4, f"8 s of audio and video in 2 s segments: {sorted(spooled)}"
    relay.restore()
    d.start()
    # The task resumes (ha1_) and the files of the first run are uploaded.
    wait_until(lambda: not spool_entries(d), 30, 0.2, "the spool drained after the restart")
    api.delete(task)
    stop = receiver.wait_event(task, 305, 60)
    assert stop.payload == {"Status": 0}, stop.payload
    objects = moto.objects(f"c/{task}/")
    # The kill may come before the recorder has spooled the playlists' last
    # version (#EXT-X-ENDLIST, written when the publisher leaves): a playlist
    # whose spooled version was not ended stays so (its writer died), and
    # only such a one may lack #EXT-X-ENDLIST.
    unended = frozenset(k.rsplit("/", 1)[1] for k, v in spooled.items()
                        if k.endswith(".m3u8") and b"#EXT-X-ENDLIST" not in v)
    named = check_bucket_recording(objects, f"c/{task}", tmp_path, unended_ok=unended)
    base = f"{APP_ID}_{room}__UserId_s_{encode_id(user)}__UserId_e_main_video"
    first = named.get(f"{base}.m3u8")
    assert first, f"the first run's playlist arrived: {sorted(named)}"
    assert len(first) >= 2, first
    # Completeness: everything spooled before the crash was uploaded; the
    # segments byte-identical, each playlist at least as long as spooled.
    missing = sorted(set(spooled) - set(objects))
    assert not missing, f"spooled before the kill -9, never uploaded: {missing}"
    differ = sorted(k for k in spooled_segments if objects[k] != spooled[k])
    assert not differ, f"uploaded segments differ from what was spooled: {differ}"
    for key in spooled.keys() - spooled_segments:
        assert key.endswith(".m3u8"), key
        (tmp_path / "spooled.m3u8").write_bytes(spooled[key])
        was = [seg for _, seg, _ in parse_playlist(tmp_path / "spooled.m3u8").segments]
        now = named[key.rsplit("/", 1)[1]]
        assert now[:len(was)] == was, f"{key}: spooled naming {was}, uploaded naming {now}"
    # ... and the first run has nothing in the bucket that was not spooled
    # but the segments that were open at the kill, finished from their
    # journal at the restart (record::journal): at most one per stream, and
    # each the last of its playlist.
    first_run = {k for k in objects if not k.rsplit("/", 1)[1].startswith("ha")}
    assert set(spooled) <= first_run, sorted(set(spooled) - first_run)
    recovered = {k.rsplit("/", 1)[1] for k in first_run - set(spooled)}
    last_of = {segs[-1] for name, segs in named.items() if not name.startswith("ha") and segs}
    assert len(recovered) <= 2 and recovered <= last_of, (sorted(recovered), sorted(last_of))
    assert d.log_text().count("open segment recovered from the journal") == len(recovered)
    # Keys are unique in a bucket; "nothing duplicated" means every segment is
    # named by exactly one playlist.
    all_segments = [s for segs in named.values() for s in segs]
    assert len(all_segments) == len(set(all_segments))


def test_full_spool_fails_only_its_task(kiroku, receiver, moto, publisher, tmp_path):
    relay = Relay(moto.port)
    relay.cut()
    d = kiroku("full", callback_url=receiver.url, recording={"segment_seconds": 1},
               storage=storage_config(relay.port, spool_capacity_mb=1))
    api = d.sdk()
    full_task = api.create(create_params(room="4104", StorageParams=cloud_storage([])))
    local_task = api.create(create_params(room="4105"))
    # dave's picture is noise, which the encoder cannot compress (about
    # 650 kbit/s; a solid picture would take minutes to fill 1 MB); he
    # publishes until the end of the test. erin publishes 12 s.
    dave = publisher(d, "4104", "dave", pattern="noise")
    erin = publisher(d, "4105", "erin")
    # The outage itself gives one 308 (ConnectError); the full spool another.
    err = wait_until(lambda: next((c for c in receiver.delivered(full_task) if c.event_type == 308
                                   and c.payload["Code"] == "LocalStorageFull"), None),
                     40, 0.2, "308 LocalStorageFull")
    assert "spool full" in err.payload["Message"], err.payload
    stop = receiver.wait_event(full_task, 302, 10)
    assert stop.payload == {"LeaveCode": 3}, stop.payload
    assert d.metric("kiroku_spool_full_total") >= 1
    assert re.search(r"storage full: the task stops", d.log_text())
    # The other task records on, to the end.
    publish_for(12, erin)
    api.delete(local_task)
    assert receiver.wait_event(local_task, 305, 30).payload == {"Status": 0}
    folder = Path(d.config["data_dir"]) / "storage" / local_task
    base = f"{APP_ID}_4105__UserId_s_{encode_id('erin')}__UserId_e_main"
    pl = parse_playlist(folder / f"{base}_video.m3u8")
    assert pl.ended and pl.total > 9, pl.total
    check_recorded_duration(folder, f"{base}_video.m3u8", erin)
    check_recorded_duration(folder, f"{base}_audio.m3u8", erin)
    assert 308 not in [c.event_type for c in receiver.delivered(local_task)]
    dave.stop()
    relay.restore()


# --------------------------------------------------------------------------
# MP4 / AAC outputs and the VOD store
# --------------------------------------------------------------------------

def top_level_boxes(data: bytes) -> list[str]:
    """The MP4's top-level box types, in file order."""
    out, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        assert size >= 8, (kind, size)
        out.append(kind)
        pos += size
    assert pos == len(data), "boxes cover the file exactly"
    return out


def check_mp4(path: Path, codecs: list[str], duration: float, tolerance: float) -> dict:
    boxes = top_level_boxes(path.read_bytes())
    assert boxes[0] == "ftyp" and boxes.index("moov") < boxes.index("mdat"), f"faststart: {boxes}"
    info = ffprobe(path)
    assert sorted(s["codec_name"] for s in info["streams"]) == sorted(codecs), info["streams"]
    got = float(info["format"]["duration"])
    assert abs(got - duration) <= tolerance, f"{path.name}: {got:.2f} s, expected {duration:.2f} ± {tolerance}"
    # Decodes without errors.
    # -enc_time_base:v -1: see test_merge.decodes (ffmpeg's frame-rate guess, not the file).
    r = subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-enc_time_base:v", "-1", "-f", "null", "-"],
                       capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr[-2000:]
    return info


def video_duration(path: Path) -> float:
    """Duration (s) of a file's video track, as ffprobe reads it."""
    video = [s for s in ffprobe(path)["streams"] if s["codec_type"] == "video"]
    assert len(video) == 1, video
    return float(video[0]["duration"])


def av_start_offset(path: Path) -> float:
    """Audio start minus video start (s), as a player sees them."""
    info = ffprobe(path)
    starts = {s["codec_type"]: float(s.get("start_time", 0)) for s in info["streams"]}
    return starts["audio"] - starts["video"]


def check_mp4_against_publisher(path: Path, pub: Publisher) -> None:
    """The MP4's video track is all the aiortc publisher sent, measured with
    ffprobe, with check_recorded_duration's tolerances and reasons (the
    track's duration counts its last frame's, as a segment's does): at most
    0.5 s of start-up missing, never more than published + 0.1 s, and never
    one frame more than were sent."""
    duration = video_duration(path)
    frames = decoded_video_frames(path)
    figures = (path.name, f"video {duration:.3f} s, {frames} frames",
               f"published {pub.published_seconds:.3f} s, {pub.frames_sent} frames")
    print("MP4 vs published:", figures)
    assert pub.published_seconds - 0.5 <= duration <= pub.published_seconds + 0.1, figures
    assert pub.frames_sent - 0.5 * PUBLISH_FPS <= frames <= pub.frames_sent, figures


def test_hls_mp4_in_s3_split_at_max_media_file_duration(kiroku, receiver, moto, publisher, tmp_path):
    d = kiroku("mp4s3", callback_url=receiver.url, recording={"segment_seconds": 4},
               storage=storage_config(moto.port))
    api = d.sdk()
    room, user = "4110", "frank"
    params = create_params(room=room, StorageParams=cloud_storage(["m"]))
    params["RecordParams"].update(OutputFormat=1, MaxMediaFileDuration=1, AvMerge=0)
    task = api.create(params)
    pub = publisher(d, room, user)
    publish_for(75, pub)
    api.delete(task)
    mp4_stop = receiver.wait_event(task, 310, 90)
    base = f"{APP_ID}_{room}__UserId_s_{encode_id(user)}__UserId_e_main"
    assert mp4_stop.payload == {"Status": 0, "FileList": [f"{base}_1.mp4", f"{base}_2.mp4"]}, mp4_stop.payload
    types = [c.event_type for c in receiver.delivered(task)]
    assert types.index(305) < types.index(310), types
    objects = moto.objects(f"m/{task}/")
    # HLS first: the recording's own length, to which the MP4 parts must add up.
    hls = {k: v for k, v in objects.items() if not k.endswith(".mp4")}
    named = check_bucket_recording(hls, f"m/{task}", tmp_path)
    for name in named:
        (tmp_path / name).write_bytes(objects[f"m/{task}/{name}"])
    video_total = parse_playlist(tmp_path / f"{base}_video.m3u8").total
    check_recorded_duration(tmp_path, f"{base}_video.m3u8", pub)
    parts = []
    for i in (1, 2):
        key = f"m/{task}/{base}_{i}.mp4"
        assert key in objects, sorted(objects)
        p = tmp_path / f"{i}.mp4"
        p.write_bytes(objects[key])
        parts.append(p)
    # Spec: split at MaxMediaFileDuration (1 min) at a key frame. Key frames
    # come at least every GOP_SECONDS (30 frames at 15 fps = 2 s; a key frame
    # request only adds one), so a cut at the key frame nearest the limit,
    # on either side, leaves the first part 60 s ± one GOP long: its video
    # track within that, one frame of rounding allowed below (kiroku cuts
    # before the limit: a part never passes it). The last part is the rest.
    check_mp4(parts[0], ["aac", "h264"], 60.0, GOP_SECONDS)
    first_video = video_duration(parts[0])
    # ffprobe reads the track's duration from its timescale: allow 1 ms of
    # rounding (a cut exactly one GOP and one frame before the limit read
    # 57.933322 s for 869 frames, 57.93333 s).
    assert 60.0 - GOP_SECONDS - 1 / PUBLISH_FPS - 0.001 <= first_video <= 60.0 + GOP_SECONDS, first_video
    # The parts add up to the whole recording: their video tracks to the HLS
    # video's EXTINF sum within one frame per part (a track's duration counts
    # its last frame's; EXTINFs are rounded to the ms). A file's duration
    # spans both tracks: its audio may start before the video (the A/V start
    # offset, compared with the HLS's below) and end within one AAC frame
    # after it, 0.15 s at most.
    videos = [video_duration(p) for p in parts]
    assert abs(sum(videos) - video_total) <= len(parts) / PUBLISH_FPS, \
        f"MP4 video parts {videos} sum to {sum(videos):.3f} s, the HLS video lasts {video_total:.3f} s"
    rest = video_total - first_video
    assert abs(videos[1] - rest) <= 1 / PUBLISH_FPS, (videos, video_total)
    check_mp4(parts[1], ["aac", "h264"], rest, 0.15)
    # A/V sync: the first MP4's audio starts as far from its video as in the HLS.
    hls_offset = (first_pts(tmp_path / f"{base}_audio.m3u8", "a:0")
                  - first_pts(tmp_path / f"{base}_video.m3u8", "v:0"))
    mp4_offset = av_start_offset(tmp_path / "1.mp4")
    assert abs(mp4_offset - hls_offset) < 0.04, (mp4_offset, hls_offset)
    # HLS is there too, and the staging copy is gone.
    assert any(k.endswith(".m3u8") for k in objects)
    assert not (Path(d.config["data_dir"]) / "staging" / "m" / task).exists()


def test_mp4_and_aac_only_outputs_on_local_storage(kiroku, receiver, publisher, tmp_path):
    d = kiroku("mp4local", callback_url=receiver.url, recording={"segment_seconds": 2})
    api = d.sdk()
    mp4_params = create_params(room="4111")
    mp4_params["RecordParams"].update(OutputFormat=3)
    mp4_task = api.create(mp4_params)
    aac_params = create_params(room="4112")
    aac_params["RecordParams"].update(OutputFormat=4, StreamType=1)
    aac_task = api.create(aac_params)
    gina = publisher(d, "4111", "gina")
    hugo = publisher(d, "4112", "hugo")
    publish_for(8, gina, hugo)
    # No HLS is an output: Describe lists nothing.
    assert api.describe(mp4_task)["StorageFileList"] == []
    api.delete(mp4_task)
    api.delete(aac_task)
    mp4_stop = receiver.wait_event(mp4_task, 310, 60)
    name = f"{APP_ID}_4111__UserId_s_{encode_id('gina')}__UserId_e_main.mp4"
    assert mp4_stop.payload == {"Status": 0, "FileList": [name]}, mp4_stop.payload
    folder = Path(d.config["data_dir"]) / "storage" / mp4_task
    assert sorted(p.name for p in folder.iterdir()) == [name], "only the MP4, no HLS"
    check_mp4(folder / name, ["aac", "h264"], 8.0, 1.5)
    check_mp4_against_publisher(folder / name, gina)
    # The publisher starts audio and video together; what the recording
    # shows of that is checked against its HLS in the S3 test.
    assert abs(av_start_offset(folder / name)) < 0.2
    aac_stop = receiver.wait_event(aac_task, 310, 60)
    aac_name = f"{APP_ID}_4112__UserId_s_{encode_id('hugo')}__UserId_e_main.aac"
    assert aac_stop.payload == {"Status": 0, "FileList": [aac_name]}, aac_stop.payload
    aac_folder = Path(d.config["data_dir"]) / "storage" / aac_task
    assert sorted(p.name for p in aac_folder.iterdir()) == [aac_name]
    info = ffprobe(aac_folder / aac_name)
    assert [s["codec_name"] for s in info["streams"]] == ["aac"], info
    assert abs(float(info["format"]["duration"]) - 8.0) < 1.5, info["format"]
    # ffprobe's ADTS duration is estimated from the bitrate: measure the
    # audio by its packets instead, 1024 samples each. Against what hugo
    # published, with check_recorded_duration's tolerances (its audio case).
    counted = ffprobe(aac_folder / aac_name, "-count_packets")["streams"][0]
    audio = int(counted["nb_read_packets"]) * 1024 / int(counted["sample_rate"])
    assert hugo.published_seconds - 0.5 <= audio <= hugo.published_seconds + 0.1, \
        (audio, hugo.published_seconds, counted)
    assert not (Path(d.config["data_dir"]) / "staging" / mp4_task).exists()


def test_vod_store_serves_the_mp4_with_ranges_and_expires_it(kiroku, receiver, publisher, tmp_path):
    import requests
    d = kiroku("vod", callback_url=receiver.url, recording={"segment_seconds": 2})
    api = d.sdk()
    room = "4113"
    params = create_params(room=room, StorageParams={"CloudVod": {"TencentVod": {"ExpireTime": 20}}})
    task = api.create(params)
    pubs = {u: publisher(d, room, u) for u in ("ivan", "judy")}
    publish_for(7, *pubs.values())
    assert api.describe(task)["StorageFileList"] == [], "VOD tasks list no files"
    api.delete(task)
    stop = receiver.wait_event(task, 312, 60)
    assert stop.payload == {"Status": 0}, stop.payload
    commits = [c for c in receiver.delivered(task) if c.event_type == 311]
    assert sorted(c.payload["UserId"] for c in commits) == ["ivan", "judy"], [c.payload for c in commits]
    types = [c.event_type for c in receiver.delivered(task)]
    assert types[-1] == 312 and 310 not in types and 304 not in types, types
    ids = set()
    for c in commits:
        p = c.payload
        assert p["Status"] == 0 and p["MediaId"] == "main" and p["TrackType"] == "audio_video", p
        assert re.fullmatch(r"\d{19}", p["FileId"]), p
        ids.add(p["FileId"])
        assert p["VideoUrl"] == f"{d.url}/vod/{p['FileId']}.mp4", p
        assert p["CacheFile"] == f"{APP_ID}_{room}__UserId_s_{encode_id(p['UserId'])}__UserId_e_main.mp4", p
        whole = requests.get(p["VideoUrl"], timeout=10)
        assert whole.status_code == 200 and whole.headers["Content-Type"] == "video/mp4"
        part = requests.get(p["VideoUrl"], headers={"Range": "bytes=100-1099"}, timeout=10)
        assert part.status_code == 206, part.status_code
        assert part.headers["Content-Range"] == f"bytes 100-1099/{len(whole.content)}"
        assert part.content == whole.content[100:1100]
        tail = requests.get(p["VideoUrl"], headers={"Range": "bytes=-500"}, timeout=10)
        assert tail.status_code == 206 and tail.content == whole.content[-500:]
        local = tmp_path / f"{p['FileId']}.mp4"
        local.write_bytes(whole.content)
        check_mp4(local, ["aac", "h264"], 7.0, 1.5)
        check_mp4_against_publisher(local, pubs[p["UserId"]])
        # ffprobe reads it over HTTP (seeking with range requests).
        over_http = ffprobe(p["VideoUrl"])
        assert sorted(s["codec_name"] for s in over_http["streams"]) == ["aac", "h264"]
    assert len(ids) == 2
    assert not (Path(d.config["data_dir"]) / "staging" / task).exists()
    # ExpireTime 20 s: both files go (the store checks every 10 s).
    for c in commits:
        wait_until(lambda: requests.get(c.payload["VideoUrl"], timeout=5).status_code == 404, 45, 0.5,
                   "expired VOD file gone")


def test_mixed_task_gives_one_vod_file(kiroku, receiver, publisher, tmp_path):
    import requests
    # The default mix latency (3 s): it covers the timeline's wait for the
    # aiortc publishers' sender reports (aiortc sends one every 0.5-1.5 s).
    # With 500 ms the mixed output lost the first 0.5-1.2 s of media
    # (measured: the file starts that long after the first publisher's first
    # frame), which the wall-clock check below would not allow.
    d = kiroku("vodmix", callback_url=receiver.url, recording={"segment_seconds": 2, "mix_latency_ms": 3000})
    api = d.sdk()
    room = "4114"
    params = create_params(room=room, mode=2, StorageParams={"CloudVod": {"TencentVod": {}}})
    params["MixTranscodeParams"] = {
        "VideoParams": {"Width": 320, "Height": 240, "Fps": 15, "BitRate": 300_000, "Gop": 2},
        "AudioParams": {"SampleRate": 1, "Channel": 2, "BitRate": 64000},
    }
    task = api.create(params)
    pubs = [publisher(d, room, "kate"), publisher(d, room, "liam")]
    publish_for(8, *pubs)
    api.delete(task)
    deleted_at = time.time()
    assert receiver.wait_event(task, 312, 60).payload == {"Status": 0}
    commits = [c.payload for c in receiver.delivered(task) if c.event_type == 311]
    assert len(commits) == 1, commits
    c = commits[0]
    assert c["UserId"] == "" and c["TrackType"] == "audio_video" and c["CacheFile"] == f"{APP_ID}_{room}.mp4", c
    local = tmp_path / "mixed.mp4"
    local.write_bytes(requests.get(c["VideoUrl"], timeout=10).content)
    info = check_mp4(local, ["aac", "h264"], 8.0, 2.0)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (320, 240), video
    # The mix runs on a fixed clock from the first media it places (the
    # first publisher's first frame); the Delete renders what is buffered
    # without waiting for the latency (test_independent_publisher's mixed
    # test). So the file holds at least every published frame — from the
    # first publisher's first frame to the last one's stop — and at most
    # runs on to the Delete. On a loaded box the Delete comes well after the
    # publishers stop (measured: 0.55 s), and the output ends with the media
    # there. The output is in whole frames (1/15 s), the file's duration may
    # count one AAC frame past the video, and the Delete is processed before
    # `deleted_at` by its round trip: 0.3 s on either side.
    start = min(p.started_at for p in pubs)
    media = max(p.started_at + p.published_seconds for p in pubs) - start
    wall = deleted_at - start
    got = float(info["format"]["duration"])
    print(f"mixed VOD: {got:.3f} s (video {video_duration(local):.3f} s), media {media:.3f} s, "
          f"to the Delete {wall:.3f} s, publishers {[(round(p.published_seconds, 3), p.frames_sent) for p in pubs]}")
    assert media - 0.3 <= got <= wall + 0.3, (got, media, wall)


def test_packing_jobs_wait_for_a_place_in_the_pool(kiroku, receiver, publisher, tmp_path):
    """limits.packing_jobs = 1: two VOD tasks ending together are packed
    through a pool of one place — neither is lost or stuck, and both MP4s
    arrive whole. (Whether the second had to wait depends on how fast the
    first packed; the log says when it did.)"""
    import requests
    d = kiroku("packpool", callback_url=receiver.url, limits={"packing_jobs": 1},
               recording={"segment_seconds": 2})
    api = d.sdk()
    tasks, pubs = [], []
    for room in ("4201", "4202"):
        params = create_params(room=room, StorageParams={"CloudVod": {"TencentVod": {}}})
        tasks.append(api.create(params))
        pubs.append(publisher(d, room, f"u{room}"))
    publish_for(4, *pubs)
    for t in tasks:
        api.delete(t)
    for t in tasks:
        assert receiver.wait_event(t, 312, 60).payload == {"Status": 0}
    for t, room in zip(tasks, ("4201", "4202")):
        commits = [c.payload for c in receiver.delivered(t) if c.event_type == 311]
        assert len(commits) == 1, commits
        local = tmp_path / f"{t}.mp4"
        local.write_bytes(requests.get(commits[0]["VideoUrl"], timeout=10).content)
        assert float(ffprobe(local)["format"]["duration"]) >= 3.0
    print(f"packing pool of one: the second job waited: {'waiting for a packing place' in d.log_text()}")
