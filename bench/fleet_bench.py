#!/usr/bin/env python3
"""Fleet benchmarks (issue 17), printed as tables; figures go to
docs/performance.md.

1. API on PostgreSQL: `api-load` against a box on the embedded store and
   against a box in fleet mode, one after the other in the same run
   (20 requests/s per action; p99 goal < 10 ms on both).
2. Failover: `--kills` times, the box that owns a recording task is killed
   (`kill -9`); the time from the kill to the task resumed on another box
   (its 306 callback) is measured, for each `--leases` value.
3. Placement and recording: three boxes (max_tasks 100 each), `--rooms`
   rooms, each with a task and one publisher (`kiroku publish`, 320x180 at
   10 fps); every task must write segments; prints where the tasks went.
4. The cost of a shared folder (`cluster.shared_dir`): a recording task
   with a publisher and a bucket (moto), its box killed `--shared-kills`
   times (spread over a segment), four ways in the same run: each box's
   own disk, and a shared folder, each with the bucket reachable and cut
   off for the 6 s before the kill (a backlog in the dead box's spool).
   Prints the time from the kill to the 306, the files the survivor
   uploaded for the dead box, and the first run's media lost (the kill
   less the end of its video in the bucket) while the dead box is down.

Usage (after `cargo build --release -p kiroku -p kiroku-bench`):
    .venv/bin/python bench/fleet_bench.py --kiroku target/release/kiroku \\
        --api-load target/release/api-load
The PostgreSQL cluster is a throw-away one (Debian's `postgresql`, as the
tests start it)."""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import kiroku_e2e  # noqa: E402
from kiroku_e2e import (APP_ID, CallbackReceiver, Daemon, base_config, create_params, deep_merge,  # noqa: E402
                        free_port, wait_until)
from pg_cluster import PgCluster  # noqa: E402


def boxes(kiroku: str, work: Path, url: str, n: int, lease: int, receiver: CallbackReceiver,
          prefix: str, **extra) -> list[Daemon]:
    kiroku_e2e.KIROKU_BIN = kiroku
    out = []
    for i in range(n):
        port = free_port()
        cfg = base_config(work / f"{prefix}{i}" / "data", port, receiver.url)
        cfg = deep_merge(cfg, {"cluster": {"postgres_url": url, "node_id": f"{prefix}{i}", "lease_seconds": lease},
                               "log": {"level": "warn"}})
        cfg = deep_merge(cfg, extra)
        d = Daemon(work / f"{prefix}{i}", cfg, name=f"{prefix}{i}")
        out.append(d.start())
    return out


def api_on_postgres(args, pg: PgCluster) -> None:
    print("\n## 1. REST API, embedded store and PostgreSQL, same run")
    for label, extra in (("embedded", []), ("postgres", ["--postgres-url", pg.create_db("bench_api")])):
        r = subprocess.run([args.api_load, "--kiroku", args.kiroku, "--seconds", str(args.api_seconds), *extra],
                           capture_output=True, text=True, timeout=300)
        print(r.stdout.strip() or r.stderr[-2000:])


def failover(args, pg: PgCluster, work: Path) -> None:
    print(f"\n## 2. Failover: {args.kills} kills per lease, 3 boxes, kill -9 of the task's box -> 306")
    print(f"{'lease s':>8} {'kills':>6} {'median s':>9} {'min s':>7} {'max s':>7}  each")
    for lease in args.leases:
        receiver = CallbackReceiver()
        receiver.start()
        db = f"bench_failover_{lease}"
        fleet = boxes(args.kiroku, work, pg.create_db(db), 3, lease, receiver, f"fo{lease}-")
        by_node = {d.config["cluster"]["node_id"]: d for d in fleet}
        times = []
        try:
            for k in range(args.kills):
                task = fleet[0].sdk().create(create_params(room=str(70000 + lease * 100 + k), max_idle=600))
                receiver.wait_event(task, 301, 10)
                owner = pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{task}'", db)
                victim = by_node[owner]
                # A kill at a random point of the heartbeat cycle.
                time.sleep((k % 5) * lease / 25)
                killed = time.monotonic()
                victim.kill9()
                receiver.wait_event(task, 306, lease * 3 + 10)
                times.append(time.monotonic() - killed)
                victim.start()
                wait_until(lambda: pg.psql(f"SELECT count(*) FROM nodes WHERE heartbeat_at > now() - "
                                           f"interval '{lease} seconds'", db) == "3", 30, 0.2, "3 boxes alive")
        finally:
            for d in fleet:
                if d.running:
                    d.stop()
            receiver.stop()
        print(f"{lease:>8} {len(times):>6} {statistics.median(times):>9.2f} {min(times):>7.2f} {max(times):>7.2f}  "
              + " ".join(f"{t:.1f}" for t in times))


def placement(args, pg: PgCluster, work: Path) -> None:
    print(f"\n## 3. Placement and recording: 3 boxes, {args.rooms} rooms with a task and a publisher each")
    receiver = CallbackReceiver()
    receiver.start()
    db = "bench_place"
    fleet = boxes(args.kiroku, work, pg.create_db(db), 3, 10, receiver, "pl-",
                  limits={"max_tasks": 100, "api_rate_per_second": 1000}, recording={"segment_seconds": 2})
    pubs = []
    try:
        started = time.monotonic()
        tasks = [fleet[i % 3].sdk().create(create_params(room=str(80000 + i), max_idle=600))
                 for i in range(args.rooms)]
        placed_s = time.monotonic() - started
        for i in range(args.rooms):
            pubs.append(subprocess.Popen(
                [args.kiroku, "publish", "--url", fleet[(i + 1) % 3].url, "--room", str(80000 + i), "--user", f"u{i}",
                 "--duration", str(args.record_seconds + 10), "--width", "320", "--height", "180", "--fps", "10",
                 "--bitrate", "200000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(args.record_seconds)
        recording = [t for t in tasks if any(c.event_type == 307 for c in receiver.delivered(t))]
        per_box = Counter(pg.psql("SELECT node_id FROM tasks", db).split())
        print(f"placed {len(tasks)} tasks in {placed_s:.2f} s through all three boxes: "
              f"{dict(sorted(per_box.items()))}")
        print(f"recording after {args.record_seconds} s (first segment cut, 307): {len(recording)} of {len(tasks)}")
    finally:
        for p in pubs:
            p.send_signal(signal.SIGINT)
        for p in pubs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        for d in fleet:
            d.stop()
        receiver.stop()


def shared_folder(args, pg: PgCluster, work: Path) -> None:
    from test_storage import BUCKET, Moto, Relay, cloud_storage, storage_config
    print(f"\n## 4. A shared folder: {args.shared_kills} kills each way, 3 boxes, lease 8 s, 2 s segments")
    print(f"{'way':<16} {'kills':>5} {'306 median s':>13} {'max s':>6} {'files taken':>12} {'lost median s':>14}")
    moto = Moto()
    moto.client.create_bucket(Bucket=BUCKET)
    try:
        for way in args.ways:
            relay = Relay(moto.port)
            receiver = CallbackReceiver()
            receiver.start()
            db = "bench_shared_" + way.replace(" ", "_").replace("+", "_")
            extra = {"storage": storage_config(relay.port), "recording": {"segment_seconds": 2}}
            if way.startswith("shared"):
                extra["cluster"] = {"shared_dir": str(work / db)}
            fleet = boxes(args.kiroku, work, pg.create_db(db), 3, 8, receiver, db + "-", **extra)
            by_node = {d.config["cluster"]["node_id"]: d for d in fleet}
            times, taken, lost = [], 0.0, []
            try:
                for k in range(args.shared_kills):
                    room = 90000 + k
                    task = fleet[0].sdk().create(create_params(room=str(room), max_idle=600,
                                                               StorageParams=cloud_storage(["sf"])))
                    pub = subprocess.Popen(
                        [args.kiroku, "publish", "--url", fleet[0].url, "--room", str(room), "--user", "u",
                         "--duration", "120", "--reconnect", "--fps", "15"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    try:
                        receiver.wait_event(task, 304, 30)
                        recording_since = time.time()
                        victim = by_node[pg.psql(f"SELECT node_id FROM tasks WHERE task_id = '{task}'", db)]
                        backlog = way.endswith("+backlog")
                        if backlog:
                            relay.cut()
                        # Kills spread over a 2 s segment.
                        time.sleep(6.1 + 0.4 * k)
                        killed = time.monotonic()
                        killed_wall = time.time()
                        victim.kill9()
                        if backlog:
                            relay.restore()
                        receiver.wait_event(task, 306, 40)
                        times.append(time.monotonic() - killed)
                    finally:
                        pub.send_signal(signal.SIGINT)
                        pub.wait(30)
                    fleet[0 if victim is not fleet[0] else 1].sdk().delete(task)
                    receiver.wait_event(task, 305, 60)
                    lost.append(first_run_loss(moto, f"sf/{task}", killed_wall, recording_since))
                    victim.start()
                    wait_until(lambda: pg.psql("SELECT count(*) FROM nodes WHERE heartbeat_at > now() - "
                                               "interval '8 seconds'", db) == "3", 30, 0.2, "3 boxes alive")
                for d in fleet:
                    text = d.metrics_text()
                    taken += sum(float(line.split()[-1]) for line in text.splitlines()
                                 if line.startswith("kiroku_upload_taken_over_files_total"))
            finally:
                for d in fleet:
                    if d.running:
                        d.stop()
                receiver.stop()
                relay.cut()
            print(f"{way:<16} {len(times):>5} {statistics.median(times):>13.2f} {max(times):>6.2f} "
                  f"{taken:>12.0f} {statistics.median(lost):>14.2f}  " + " ".join(f"{t:.1f}" for t in times))
    finally:
        moto.stop()


def first_run_loss(moto, folder: str, killed_wall: float, recording_since: float) -> float:
    """Seconds between the kill and the end of the first run's video in the
    bucket (the playlist's start time plus its segments' durations); with
    no first-run video playlist in the bucket, from the first playlist's
    upload (304) to the kill, at least."""
    from recording import parse_playlist
    objects = moto.objects(folder + "/")
    names = [k for k in objects if k.endswith("_video.m3u8") and "/ha" not in k]
    if not names:
        return killed_wall - recording_since
    path = Path(tempfile.mkdtemp()) / "first.m3u8"
    path.write_bytes(objects[names[0]])
    pl = parse_playlist(path)
    return killed_wall - (pl.start_rec_time / 1000 + sum(d for d, _, _ in pl.segments))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiroku", default="target/release/kiroku")
    ap.add_argument("--api-load", default="target/release/api-load")
    ap.add_argument("--api-seconds", type=int, default=10)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--leases", type=int, nargs="+", default=[8, 5])
    ap.add_argument("--rooms", type=int, default=12)
    ap.add_argument("--record-seconds", type=int, default=20)
    ap.add_argument("--shared-kills", type=int, default=5)
    ap.add_argument("--ways", nargs="+", default=["own disk", "own disk+backlog", "shared", "shared+backlog"],
                    choices=["own disk", "own disk+backlog", "shared", "shared+backlog"])
    ap.add_argument("--only", choices=["api", "failover", "placement", "shared"])
    args = ap.parse_args()
    pg = PgCluster()
    work = Path(tempfile.mkdtemp(prefix="kiroku-fleet-bench-"))
    try:
        if args.only in (None, "api"):
            api_on_postgres(args, pg)
        if args.only in (None, "failover"):
            failover(args, pg, work)
        if args.only in (None, "placement"):
            placement(args, pg, work)
        if args.only in (None, "shared"):
            shared_folder(args, pg, work)
    finally:
        pg.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
