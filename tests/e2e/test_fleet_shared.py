"""Fleet mode, part three (issue 17): what a box keeps beside its tasks
lives in PostgreSQL, and a shared folder bounds what a dead box can take
with it.

- Upload targets (where a task's spooled files go) and the VOD store's
  file records are rows of `node_records`, under the box that keeps them;
  any box answers a VOD URL, redirecting to the box that holds the file.
- With `cluster.shared_dir` (a folder every box mounts: NFS, CephFS), each
  box spools and journals there; the box that takes a dead box's room over
  uploads what the dead box's spool held of the room's tasks and finishes
  their open segments, so a box that never comes back loses no more than
  one that restarts (about a second per track)."""

from __future__ import annotations

import signal
import time

import pytest
import requests

from kiroku_e2e import create_params, metric_value, wait_until

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
from test_fleet_ops import failover_gap, first_run_losses, fleet, owner_of  # noqa: E402
from test_storage import BUCKET, Moto, Relay, check_bucket_recording, check_mp4, cloud_storage, storage_config  # noqa: E402


def records(pg, db: str, record_set: str, node: str) -> list[str]:
    out = pg.psql(f"SELECT key FROM node_records WHERE record_set = '{record_set}' AND node_id = '{node}' "
                  "ORDER BY key", db)
    return [k for k in out.splitlines() if k]


def test_upload_targets_and_vod_records_are_in_postgresql_and_any_box_serves_a_vod_file(
        kiroku, pg, receiver, tmp_path):
    from recording import publish, publish_report
    moto = Moto()
    try:
        moto.client.create_bucket(Bucket=BUCKET)
        db = "fleet_records"
        a, b = fleet(kiroku, pg, db, 2, callback_url=receiver.url, storage=storage_config(moto.port),
                     recording={"segment_seconds": 2})
        # A task that uploads: its target is a row of box 0's while it runs.
        s3_task = a.sdk().create(create_params(room="9981", max_idle=60, StorageParams=cloud_storage(["nr"])))
        assert owner_of(pg, db, s3_task) == f"{db}-0"
        wait_until(lambda: records(pg, db, "upload_targets", f"{db}-0") == [s3_task], 10, 0.2,
                   "the upload target in PostgreSQL")
        assert records(pg, db, "upload_targets", f"{db}-1") == []
        # A VOD task (placed on whichever box has more room), published
        # through the other box (redirected).
        vod_task = a.sdk().create(create_params(room="9982", max_idle=60,
                                                StorageParams={"CloudVod": {"TencentVod": {}}}))
        holder_id = owner_of(pg, db, vod_task)
        holder, other = (a, b) if holder_id == f"{db}-0" else (b, a)
        p = publish(other, 9982, "vic", "--fps", "15", duration=6)
        publish_report(p)
        a.sdk().delete(vod_task)
        assert receiver.wait_event(vod_task, 312, 60).payload == {"Status": 0}
        commit = next(c.payload for c in receiver.delivered(vod_task) if c.event_type == 311)
        file_id = commit["FileId"]
        assert commit["VideoUrl"] == f"{holder.url}/vod/{file_id}.mp4", commit
        assert records(pg, db, "vod_files", holder_id) == [file_id]
        # The other box does not hold the file: it redirects to the holder.
        r = requests.get(f"{other.url}/vod/{file_id}.mp4", allow_redirects=False, timeout=10)
        assert r.status_code == 307 and r.headers["Location"] == commit["VideoUrl"], (r.status_code, r.headers)
        local = tmp_path / "through-the-other-box.mp4"
        local.write_bytes(requests.get(f"{other.url}/vod/{file_id}.mp4", timeout=30).content)
        check_mp4(local, ["aac", "h264"], 6.0, 2.0)
        unknown = ("4" if file_id[0] != "4" else "5") + file_id[1:]
        assert requests.get(f"{other.url}/vod/{unknown}.mp4", allow_redirects=False, timeout=10).status_code == 404
        # The task that uploads ends: its target row goes.
        a.sdk().delete(s3_task)
        receiver.wait_event(s3_task, 302, 30)
        wait_until(lambda: records(pg, db, "upload_targets", f"{db}-0") == [], 30, 0.2,
                   "the ended task's upload target removed")
    finally:
        moto.stop()


def test_a_dead_box_that_never_comes_back_loses_no_more_than_a_restart_with_a_shared_folder(
        kiroku, pg, receiver, tmp_path):
    """Box a records through a relay that is then cut: its closed segments
    wait in its spool (in the shared folder), its open ones in the journal.
    a is killed and never restarted. Box b takes the task over, uploads
    a's spooled files of the task, finishes the open segments from the
    journal, and records on: the bucket holds the first run up to within
    1.5 s of the kill per track, then b's `ha1_` run."""
    from recording import publish
    moto = Moto()
    relay = Relay(moto.port)
    try:
        moto.client.create_bucket(Bucket=BUCKET)
        db = "fleet_shared"
        shared = tmp_path / "shared"
        a, b = fleet(kiroku, pg, db, 2, cluster_extra={"shared_dir": str(shared)}, callback_url=receiver.url,
                     recording={"segment_seconds": 2},
                     storage=[storage_config(relay.port), storage_config(moto.port)])
        a_spool = shared / "spool" / f"{db}-0"
        room = 9991
        task = a.sdk().create(create_params(room=str(room), max_idle=120, StorageParams=cloud_storage(["sh"])))
        p = publish(b, room, "sam", "--reconnect", "--fps", "15", duration=60)
        try:
            receiver.wait_event(task, 304, 30)
            relay.cut()
            wait_until(lambda: len(list(a_spool.glob("*.ent"))) >= 4, 20, 0.2, "closed segments in a's spool")
            time.sleep(1.0)  # into an open segment
            assert any(shared.joinpath("journal", task).glob("*.part")), "the open segments are journaled"
            stranded = len(list(a_spool.glob("*.ent")))
            killed_at = time.time()
            a.kill9()
            resumed = receiver.wait_event(task, 306, 25)
            resumed_after = time.time() - killed_at
            assert resumed.payload == {"Status": 0}, resumed.payload
            time.sleep(4)
        finally:
            stopped_at = time.time()
            p.send_signal(signal.SIGINT)
            p.communicate(timeout=30)
        assert list(a_spool.glob("*.ent")) == [], "b uploaded a's spooled files of the task"
        taken = metric_value(b.metrics_text(), "kiroku_upload_taken_over_files_total")
        assert taken >= stranded - 1, (taken, stranded)  # older playlist versions are dropped, not sent
        assert "uploaded what a dead box's spool held of a task taken over" in b.log_text()
        assert "open segment recovered from the journal" in b.log_text()
        b.sdk().delete(task)
        receiver.wait_event(task, 302, 60)
        receiver.wait_event(task, 305, 60)
        stops = [c.payload["Status"] for c in receiver.delivered(task) if c.event_type == 305]
        assert stops == [0], stops
        folder = f"sh/{task}"
        named = check_bucket_recording(moto.objects(folder + "/"), folder, tmp_path)
        found = first_run_losses(named, tmp_path, killed_at)
        assert all(pl.ended for _, pl in found.values()), "the first run's playlists end"
        losses = {k: v for k, (v, _) in found.items()}
        gap, wall, recorded, _ = failover_gap(named, tmp_path, stopped_at)
        print(f"shared folder, box never back: {stranded} spooled files ({taken:.0f} uploaded by b), "
              f"lost {', '.join(f'{k} {v:.2f} s' for k, v in losses.items())}; 306 after {resumed_after:.2f} s; "
              f"gap {gap:.2f} s; recorded {recorded:.2f} s of {wall:.2f} s wall")
        assert all(-0.5 < v <= 1.5 for v in losses.values()), losses
        assert gap < 15, gap
        assert abs(recorded - (wall - gap)) <= 1.0, (recorded, wall, gap)
    finally:
        relay.cut()
        moto.stop()
