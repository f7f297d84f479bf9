"""Supervision (issue 16): a media thread that dies is noticed, reported by
/healthz while it is down, and started again; a state store that refuses
commits loses no callback; SIGTERM always ends the process in bounded time.

Faults are injected through `POST /v1/faults`, which exists only when the
daemon runs with KIROKU_TEST_FAULTS=1 (daemon/src/faults.rs)."""

from __future__ import annotations

import json
from pathlib import Path
import signal
import socket
import threading
import time

import pytest
import requests

from kiroku_e2e import ADMIN_HEADERS, APP_ID, create_params, metric_value, wait_until
from recording import decode_ok, parse_playlist, single_base, task_files

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
from independent_publisher import Publisher, whip_url  # noqa: E402

FAULTS_ENV = {"KIROKU_TEST_FAULTS": "1"}


def metric(d, name: str) -> float:
    return metric_value(d.metrics_text(), name, default=0.0)
FPS = 15


def inject(d, fault: dict) -> None:
    r = requests.post(d.url + "/v1/faults", json=fault, headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 204, (r.status_code, r.text)


class HealthWatch:
    """Polls /healthz every 20 ms on its own thread; keeps every answer that
    was not `200 ok`, so that a short outage is not missed."""

    def __init__(self, d):
        self.url = d.url + "/healthz"
        self.down: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        s = requests.Session()
        while not self._stop.is_set():
            try:
                r = s.get(self.url, timeout=2)
                if r.status_code != 200:
                    self.down.append((r.status_code, r.text))
            except requests.RequestException as e:
                self.down.append((0, str(e)))
            time.sleep(0.02)

    def stop(self) -> list[tuple[int, str]]:
        self._stop.set()
        self._thread.join(5)
        return self.down


def test_without_the_variable_there_is_no_fault_endpoint(kiroku):
    d = kiroku("nofaults")
    r = requests.post(d.url + "/v1/faults", json={"ingest": True}, headers=ADMIN_HEADERS, timeout=5)
    assert r.status_code == 404, r.status_code


def test_a_recorder_that_dies_is_restarted_as_ha1_with_306(kiroku, receiver):
    """The recorder thread of a single-stream task panics mid-recording:
    /healthz reports it while it is down, the task goes on under `ha1_`
    names with callback 306, and what the publisher sends afterwards is
    recorded (ffprobe decodes the new playlists)."""
    d = kiroku("recpanic", env=FAULTS_ENV, callback_url=receiver.url)
    d.expect_panics = True
    api = d.sdk()
    room, user = 9501, "steady"
    task = api.create(create_params(room=str(room), max_idle=60))
    pub = Publisher(whip_url(d.url, APP_ID, room, user), fps=FPS).start(timeout=15)
    try:
        wait_until(lambda: api.describe(task)["Status"] == "InProgress", 10, 0.2, "the task recording")
        time.sleep(2)
        watch = HealthWatch(d)
        inject(d, {"recorder": task})
        receiver.wait_event(task, 306, 15)
        time.sleep(3)
        down = watch.stop()
    finally:
        pub.stop()
    assert any(status == 503 and f"recorder of task {task}" in text for status, text in down), down
    assert requests.get(d.url + "/healthz", timeout=5).text == "ok\n"
    assert metric(d, "kiroku_recorder_panics_total") == 1
    assert metric(d, "kiroku_recorder_restarts_total") == 1
    assert api.describe(task)["Status"] in ("InProgress", "Idle"), "the task must go on"
    api.delete(task)
    receiver.wait_event(task, 305, 30)
    folder = task_files(d, task)
    for kind in ("video", "audio"):
        playlist = folder / f"{single_base(room, user, 'main', kind, ha=1)}.m3u8"
        assert playlist.exists(), sorted(p.name for p in folder.iterdir())
        pl = parse_playlist(playlist)
        assert pl.ended and pl.total >= 2.0, (kind, pl.text)
        decode_ok(playlist)
    print(f"recorder panic: healthz down {len(down)} polls, ha1_ playlists recorded")


def test_a_recorder_that_keeps_dying_ends_its_task_with_302_and_a_reason(kiroku, receiver):
    """After three restarts (ha1_..ha3_) a fourth death ends the task: 302
    with LeaveCode 3 (the server removed the recorder) and a Reason."""
    d = kiroku("recdeath", env=FAULTS_ENV, callback_url=receiver.url)
    d.expect_panics = True
    api = d.sdk()
    task = api.create(create_params(room="9502", max_idle=60))
    for n in range(1, 4):
        inject(d, {"recorder": task})
        wait_until(lambda: sum(1 for c in receiver.delivered(task) if c.event_type == 306) == n, 15, 0.1,
                   f"306 number {n}")
    inject(d, {"recorder": task})
    stop = receiver.wait_event(task, 302, 15).payload
    assert stop["LeaveCode"] == 3, stop
    assert "3 restarts" in stop["Reason"], stop
    api.wait_gone(task, timeout=15)
    assert metric(d, "kiroku_recorder_panics_total") == 4
    assert metric(d, "kiroku_recorder_restarts_total") == 3


def test_an_ingest_engine_panic_drops_the_peers_and_publishers_get_back_in(kiroku, receiver):
    """The ingest engine panics: every peer is dropped (the room is empty),
    /healthz says so while the engine restarts, the restart is counted,
    and a publisher that publishes again is recorded."""
    d = kiroku("ingpanic", env=FAULTS_ENV, callback_url=receiver.url)
    d.expect_panics = True
    api = d.sdk()
    room = 9503
    task = api.create(create_params(room=str(room), max_idle=60))
    first = Publisher(whip_url(d.url, APP_ID, room, "before"), fps=FPS).start(timeout=15)
    try:
        wait_until(lambda: metric(d, "kiroku_ingest_peers") == 1, 10, 0.1, "one peer")
        watch = HealthWatch(d)
        inject(d, {"ingest": True})
        wait_until(lambda: metric(d, "kiroku_ingest_engine_restarts_total") == 1, 10, 0.05,
                   "the engine restart")
        wait_until(lambda: requests.get(d.url + "/healthz", timeout=2).status_code == 200, 10, 0.05,
                   "healthy again")
        down = watch.stop()
        assert metric(d, "kiroku_ingest_peers") == 0
        rooms = requests.get(d.url + "/v1/rooms", headers=ADMIN_HEADERS, timeout=5).json()
        assert rooms["sessions"] == 0 and not any(r.get("users") for r in rooms["rooms"]), rooms
    finally:
        first.stop()
    assert any(status == 503 and "ingest engine" in text for status, text in down), down
    second = Publisher(whip_url(d.url, APP_ID, room, "after"), fps=FPS).start(timeout=15)
    try:
        time.sleep(3)
    finally:
        second.stop()
    api.delete(task)
    receiver.wait_event(task, 305, 30)
    playlist = task_files(d, task) / f"{single_base(room, 'after', 'main', 'video')}.m3u8"
    pl = parse_playlist(playlist)
    assert pl.ended and pl.total >= 1.5, pl.text
    decode_ok(playlist)
    print(f"ingest panic: healthz down {len(down)} polls; the new publisher recorded {pl.total:.2f} s")


def test_refused_commits_lose_no_callback(kiroku, receiver):
    """The state store refuses the next five commits (as a full disk
    would): the task's changes and callbacks wait and are retried, and once
    the store accepts them every callback arrives, in order."""
    d = kiroku("commits", env=FAULTS_ENV, callback_url=receiver.url)
    api = d.sdk()
    room = 9504
    task = api.create(create_params(room=str(room), max_idle=60))
    inject(d, {"commit_failures": 5})
    pub = Publisher(whip_url(d.url, APP_ID, room, "disk"), fps=FPS).start(timeout=15)
    try:
        wait_until(lambda: metric(d, "kiroku_store_commit_retries_total") >= 5, 20, 0.1,
                   "five refused commits retried")
        time.sleep(2)
    finally:
        pub.stop()
    api.delete(task)
    receiver.wait_event(task, 305, 30)
    types = [c.event_type for c in receiver.delivered(task)]
    # 301 start, 303 upload start, 307 first slice, 304 playlists, 302 stop, 305.
    for t in (301, 303, 304, 302, 305):
        assert t in types, types
    assert types.index(301) < types.index(302) < types.index(305), types
    assert metric(d, "kiroku_store_errors_total") >= 5


def full_disk_wrapper(data_dir) -> list[str]:
    """`kiroku serve` with `data_dir` on a small tmpfs of its own: a mount
    namespace (`unshare -rm`, unprivileged) the test reaches through
    /proc/<pid>/root."""
    return ["unshare", "-rm", "sh", "-c",
            'mount -t tmpfs -o size=24m,mode=0700 kiroku-full "$0" && exec "$@"', str(data_dir)]


def fill(path) -> int:
    """Writes `path` until the disk is full; returns the bytes written."""
    written = 0
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n = f.write(chunk if written < (1 << 30) else chunk[:4096])
            except OSError as e:
                assert e.errno == 28, e  # ENOSPC
                break
            if not n:
                break
            written += n
    # Also the last bytes a 1 MiB write could not place.
    with open(path, "ab", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 512)
            except OSError:
                return written
            written += 512


def test_a_full_disk_under_the_state_store_loses_no_callback(kiroku, receiver, tmp_path):
    """A real full disk under `data_dir` (a 24 MB tmpfs filled to the last
    byte while a task records): the segment write fails, so the task must
    stop (308 LocalStorageFull, then 302), but the state store cannot
    commit either. The commits are counted and retried while the daemon
    keeps answering; once space is freed the stop goes through by itself
    and every callback arrives, in order. (redb refused every commit after
    one I/O error until the file was opened again: callbacks waited for a
    restart.)"""
    data = tmp_path / "full-data"
    data.mkdir()
    d = kiroku("full", callback_url=receiver.url, data_dir=data, wrapper=full_disk_wrapper(data))
    mounts = Path(f"/proc/{d.proc.pid}/mounts").read_text()
    assert f" {data} tmpfs " in mounts, mounts
    inside = Path(f"/proc/{d.proc.pid}/root") / str(data).lstrip("/")
    api = d.sdk()
    room = 9505
    task = api.create(create_params(room=str(room), max_idle=60))
    pub = Publisher(whip_url(d.url, APP_ID, room, "full"), fps=FPS).start(timeout=15)
    filler = inside / "filler"
    try:
        receiver.wait_event(task, 307, 20)
        filled = fill(filler)
        assert filled > 1 << 20, filled
        # Recording on: segments, playlists and state cannot be written.
        wait_until(lambda: metric(d, "kiroku_store_errors_total") >= 1
                   or metric(d, "kiroku_recorder_write_failures_total") >= 1, 20, 0.2,
                   "a write refused by the full disk, counted")
        r = requests.get(d.url + "/healthz", timeout=5)
        assert r.status_code in (200, 503), r
        # The task stops at its next segment cut (10 s segments, and a key
        # frame to wait for): on a loaded machine that alone can take 20 s.
        wait_until(lambda: metric(d, "kiroku_store_commit_retries_total") >= 2, 45, 0.1,
                   "commits refused by the full disk, retried")
        assert 302 not in [c.event_type for c in receiver.delivered(task)]
        time.sleep(1)
    finally:
        filler.unlink()
    # Room again: the stop and its callbacks go through without a restart.
    receiver.wait_event(task, 302, 30)
    receiver.wait_event(task, 305, 30)
    pub.stop()
    types = [c.event_type for c in receiver.delivered(task)]
    assert types.index(301) < types.index(308) < types.index(302) < types.index(305), types
    assert types.count(302) == 1, types
    assert "state store open again" in d.log_text()
    with pytest.raises(Exception) as gone:
        api.describe(task)
    assert "FailedOperation.TaskNotExist" in str(gone.value), gone.value
    print(f"full disk: {filled} bytes filled; callbacks {types}; "
          f"store errors {metric(d, 'kiroku_store_errors_total')}, "
          f"retries {metric(d, 'kiroku_store_commit_retries_total')}")


class HungStorage:
    """An S3 endpoint that accepts connections and never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(c)

    def close(self) -> None:
        self.sock.close()
        for c in self.held:
            c.close()


def test_sigterm_ends_the_process_in_bounded_time_whatever_is_pending(kiroku, receiver):
    """Uploads to a bucket that never answers are pending and a recording
    is live when SIGTERM comes: the daemon still exits within its bound
    (2 × shutdown_grace_seconds + 15 s), and 0 when it drained in time."""
    hung = HungStorage()
    try:
        d = kiroku("sigterm", callback_url=receiver.url, server={"shutdown_grace_seconds": 3},
                   recording={"segment_seconds": 1},
                   storage={"retry_base_ms": 200, "retry_max_seconds": 1,
                            "s3": {"aws_endpoint": f"http://127.0.0.1:{hung.port}", "allow_http": True,
                                   "path_style": True, "connect_timeout_secs": 30,
                                   "request_timeout_secs": 600}})
        api = d.sdk()
        room = 9505
        params = create_params(room=str(room), max_idle=60)
        params["StorageParams"] = {"CloudStorage": {"Vendor": 1, "Region": "us-east-1", "Bucket": "rec",
                                                    "AccessKey": "AKIDhung", "SecretKey": "hung-secret-000001",
                                                    "FileNamePrefix": ["p"]}}
        task = api.create(params)
        pub = Publisher(whip_url(d.url, APP_ID, room, "stuck"), fps=FPS, keyframe_interval=1.0).start(timeout=15)
        try:
            wait_until(lambda: hung.held, 15, 0.1, "an upload reaching the hung bucket")
            time.sleep(1)
            t0 = time.monotonic()
            d.proc.send_signal(signal.SIGTERM)
            d.proc.wait(2 * 3 + 15 + 5)
            took = time.monotonic() - t0
        finally:
            pub.stop()
        bound = 2 * 3 + 15
        print(f"SIGTERM with uploads hung: exited {d.proc.returncode} after {took:.1f} s (bound {bound} s)")
        assert took <= bound + 2, took
        # Restart: the task resumes, its files are still in the spool.
        d.start()
        assert api.describe(task)["TaskId"] == task
        assert json.dumps(api.describe(task))
    finally:
        hung.close()


def test_a_corrupt_task_record_is_quarantined_and_the_daemon_starts_with_the_rest(kiroku):
    """One task record damaged on disk (its JSON broken in state.redb, in
    every copy the file holds): the daemon starts, resumes the other task,
    sets the damaged one aside (logged with its id, counted in
    kiroku_store_quarantined_records) and keeps it set aside across
    restarts."""
    d = kiroku("corrupt")
    api = d.sdk()
    damaged = api.create(create_params(room="9601", max_idle=3600))
    kept = api.create(create_params(room="9602", max_idle=3600))
    assert d.stop() == 0
    state = Path(d.config["data_dir"]) / "state.redb"
    raw = state.read_bytes()
    needle = f'"task_id":"{damaged}"'.encode()
    copies = raw.count(needle)
    assert copies >= 1, "the record is plain JSON without [secrets]"
    state.write_bytes(raw.replace(needle, f'"task_id":#{damaged}"'.encode()))

    d.start()
    assert api.describe(kept)["TaskId"] == kept
    with pytest.raises(Exception) as gone:
        api.describe(damaged)
    assert "FailedOperation.TaskNotExist" in str(gone.value), gone.value
    assert metric(d, "kiroku_store_quarantined_records") == 1
    log = d.log_text()
    assert "quarantined" in log and damaged in log, d.log_tail()
    # Set aside for good: the next start finds it in quarantine, not among
    # the tasks, and resumes the other one again.
    d.restart()
    assert api.describe(kept)["TaskId"] == kept
    assert metric(d, "kiroku_store_quarantined_records") == 1
    print(f"corrupt record: {copies} copies damaged; {damaged} quarantined, {kept} resumed")
