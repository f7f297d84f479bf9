"""Storage and outputs end to end: recordings uploaded to a real S3-compatible
server (moto's standalone server, checked with boto3), storage outages and
daemon crashes between spool and upload, MP4/AAC outputs checked with
ffprobe, and the built-in VOD store fetched over HTTP with range requests.

Outages are made with a TCP relay in front of moto that stops listening
(connection refused, as when the server is down) and listens again later:
moto keeps its buckets in memory, so stopping moto itself would also lose
what was uploaded before the outage."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kiroku_e2e import APP_ID, REPO, create_params, free_port, has_ingest, wait_until
from recording import UTC17, encode_id, ffprobe, parse_playlist, publish, publish_report

pytestmark = pytest.mark.skipif(not has_ingest(), reason="this kiroku build has no WHIP ingest")

boto3 = pytest.importorskip("boto3")

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


def check_bucket_recording(objects: dict[str, bytes], folder: str, tmp: Path) -> dict[str, list[str]]:
    """Every object under `folder` is a playlist or a segment named by one; every
    segment a playlist names is there; each playlist ended; every segment decodes.
    Returns playlist name → its segments."""
    names = {k[len(folder) + 1:]: v for k, v in objects.items()}
    assert all("/" not in n for n in names), list(names)
    playlists = {n: v for n, v in names.items() if n.endswith(".m3u8")}
    assert playlists, list(names)
    named: dict[str, list[str]] = {}
    for name, text in playlists.items():
        path = tmp / name
        path.write_bytes(text)
        pl = parse_playlist(path)
        segs = [s for _, s, _ in pl.segments]
        named[name] = segs
        missing = [s for s in segs if s not in names]
        assert not missing, f"{name} names segments the bucket lacks: {missing}"
    all_named = {s for segs in named.values() for s in segs}
    extra = [n for n in names if not n.endswith(".m3u8") and n not in all_named]
    assert not extra, f"objects no playlist names: {extra}"
    for seg in all_named:
        p = tmp / seg
        p.write_bytes(names[seg])
        info = ffprobe(p)
        assert info["streams"], seg
    return named


def spool_entries(d) -> list[Path]:
    return sorted((Path(d.config["data_dir"]) / "spool").glob("*.ent"))


def test_recording_lands_in_s3_with_callbacks(kiroku, receiver, moto, tmp_path):
    d = kiroku("s3", callback_url=receiver.url, recording={"segment_seconds": 2},
               storage=storage_config(moto.port))
    api = d.sdk()
    room, user = "4101", "alice"
    task = api.create(create_params(room=room, StorageParams=cloud_storage(["p1", "p2"])))
    pub = publish(d, room, user, duration=6)
    publish_report(pub)
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
    backend = "io_uring" if d.metric("kiroku_spool_backend", {"backend": "io_uring"}) == 1 else "plain"
    assert d.metric("kiroku_spool_backend", {"backend": backend}) == 1
    assert re.search(r"spool (opened|: io_uring unavailable)", d.log_text())


def test_outage_strands_files_then_uploads_them(kiroku, receiver, moto, tmp_path):
    relay = Relay(moto.port)
    d = kiroku("outage", callback_url=receiver.url, recording={"segment_seconds": 2},
               storage=storage_config(relay.port, drain_timeout_seconds=2))
    api = d.sdk()
    room, user = "4102", "bob"
    task = api.create(create_params(room=room, StorageParams=cloud_storage([])))
    pub = publish(d, room, user, duration=10)
    # The first playlist is uploaded before the outage.
    receiver.wait_event(task, 304, 20)
    relay.cut()
    publish_report(pub)
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
    total = 0.0
    for name in named:
        if name.endswith("_video.m3u8"):
            (tmp_path / name).write_bytes(objects[f"{task}/{name}"])
            total = parse_playlist(tmp_path / name).total
    assert total > 7, f"the whole recording arrived ({total:.1f} s of video)"
    assert not (Path(d.config["data_dir"]) / "targets" / f"{task}.json").exists()


def test_kill9_between_spool_and_upload_loses_nothing(kiroku, receiver, moto, tmp_path):
    relay = Relay(moto.port)
    d = kiroku("crash", callback_url=receiver.url, recording={"segment_seconds": 2},
               storage=storage_config(relay.port))
    api = d.sdk()
    room, user = "4103", "carol"
    relay.cut()
    task = api.create(create_params(room=room, StorageParams=cloud_storage(["c"])))
    pub = publish(d, room, user, duration=8)
    wait_until(lambda: len(spool_entries(d)) >= 4, 20, 0.2, "segments spooled while the storage is down")
    publish_report(pub)
    spooled = len(spool_entries(d))
    d.kill9()
    relay.restore()
    d.start()
    # The task resumes (ha1_) and the files of the first run are uploaded.
    wait_until(lambda: not spool_entries(d), 30, 0.2, "the spool drained after the restart")
    api.delete(task)
    stop = receiver.wait_event(task, 305, 60)
    assert stop.payload == {"Status": 0}, stop.payload
    objects = moto.objects(f"c/{task}/")
    named = check_bucket_recording(objects, f"c/{task}", tmp_path)
    base = f"{APP_ID}_{room}__UserId_s_{encode_id(user)}__UserId_e_main_video"
    first = named.get(f"{base}.m3u8")
    assert first, f"the first run's playlist arrived: {sorted(named)}"
    assert len(first) >= 2, first
    assert spooled >= 4
    # Keys are unique in a bucket; "nothing duplicated" means every segment is
    # named by exactly one playlist.
    all_segments = [s for segs in named.values() for s in segs]
    assert len(all_segments) == len(set(all_segments))


def test_full_spool_fails_only_its_task(kiroku, receiver, moto, tmp_path):
    relay = Relay(moto.port)
    relay.cut()
    d = kiroku("full", callback_url=receiver.url, recording={"segment_seconds": 1},
               storage=storage_config(relay.port, spool_capacity_mb=1))
    api = d.sdk()
    full_task = api.create(create_params(room="4104", StorageParams=cloud_storage([])))
    local_task = api.create(create_params(room="4105"))
    pubs = [publish(d, "4104", "dave", duration=25), publish(d, "4105", "erin", duration=12)]
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
    publish_report(pubs[1])
    api.delete(local_task)
    assert receiver.wait_event(local_task, 305, 30).payload == {"Status": 0}
    folder = Path(d.config["data_dir"]) / "storage" / local_task
    pl = parse_playlist(folder / f"{APP_ID}_4105__UserId_s_{encode_id('erin')}__UserId_e_main_video.m3u8")
    assert pl.ended and pl.total > 9, pl.total
    assert 308 not in [c.event_type for c in receiver.delivered(local_task)]
    pubs[0].kill()
    relay.restore()
