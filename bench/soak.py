#!/usr/bin/env python3
"""Soak (issue 19): a box held at 80 % of its measured capacity for
`--minutes` with S3 storage on moto, publishers coming and going, a
ModifyCloudRecording every ~30 s and a ~60 s S3 outage in the middle.

Load. Single-stream tasks (RecordMode 1, audio + video), one room each, two
users per room (`soaka`, `soakb`). How many: `GET /v1/capacity`,
`shapes.single_2av.tasks_at_admit_limit` (the admit limit is
`limits.capacity_fraction`, 80 % by default, of what the box's capacity
profile says it carries); `--tasks N` runs N instead (a debug build carries
far less than the release profile says), and is the only way with a build
that has no /v1/capacity. The rooms are split into `--groups` groups; for
each group and each user a loop runs `kiroku publish --rooms <group>
--count 1 --user <user>` for a random `--publish-seconds` duration, pauses
a random `--pause-seconds`, and starts again, the loops staggered: users
join and leave their rooms throughout (at most 2 x groups publisher
processes at once, each encoding once for its whole group).

Churn. Every `--modify-every` seconds each task gets a ModifyCloudRecording
that changes its SubscribeStreamUserIds between two forms that admit the
same users (explicit allow-lists for audio and video; a wildcard allow-list
for audio and a deny-list naming a user who never publishes for video), so
the frame accounting below stays exact while the Modify path runs (a Modify
that really removes a user's track would make its frames unrecorded on
purpose, which the daemon's counters cannot tell from a loss).

Outage. `--outage-seconds` (60) of connection refused from S3 (a TCP relay
in front of moto stops listening, as tests/e2e/test_storage.py does),
centred on the middle of the run.

Objects. A janitor lists the bucket every 20 s, counts every segment key
once and deletes it (moto keeps objects in memory: an hour of 80 % load
would not fit); playlists stay.

Priority. The publishers run at `--rig-nice` (10 by default, the niceness
of the daemon's recorders): on a real box the publishers are elsewhere, and
at the daemon's own priority they outrank the recorders they feed, which
then store segments late for want of CPU. moto stays at the daemon's
priority: it stands in for a remote S3 on its own machine; niced with the
rig, an hour's run had uploads behind from its first minutes
(docs/performance.md, "Soak").

Figures and goals (PASS / FAIL; "not available in this build" for a metric
the binary lacks):
- daemon RSS at the end of the warm-up and at the end of the load: growth
  under 5 %, between the medians of a window at each end (10 % of the run,
  30 s to 5 min: the RSS is a saw with segment cuts and heap trims, and a
  single sample lands anywhere on it); the single samples and the slope over
  the second half (MiB per hour) beside it.
- frames: ingest got every frame the publishers sent (their `--json`
  reports); recorders took every frame ingest delivered. The daemon cannot
  count what a new track sends before its task's recorder subscribes (the
  recorder looks at the room every 50 ms) nor tell a video frame skipped
  while a new subscription waits for its first key frame from an overflow
  (both are `video_overflow`): these join transients are shown per join and
  bounded (at most 4 uncounted and 15 key-frame-wait frames per session
  join: 50 ms of Opus and video, 1 s of video); audio overflow, timeline
  overflow, write failures and stray frames must be 0.
- callbacks delivered vs expected: per task exactly one 301, 303, 302; 304
  and 307 once per playlist (two users x audio, video); 305 last, Status 0
  (or 1 then 2); 308 allowed (the outage); `kiroku_callbacks_given_up_total`
  0.
- files: every segment written (`kiroku_recorder_segments_total`) reached
  the bucket (distinct segment keys the janitor saw), uploads
  (`kiroku_upload_files_total`) at least that many, nothing pending or
  stranded at the end.
- outage: the upload backlog's peak and how long after S3 came back it
  drained (back to the most it held in the minute before the outage);
  goal: drained before the load ends.
- every segment stored (spooled) within 1 s of its cut over the whole run,
  the outage included (`kiroku_recorder_segment_latency_seconds`, when the
  build has it), and the largest task lag sampled
  (`kiroku_task_behind_seconds`), a figure.

Usage:
    .venv/bin/python bench/soak.py --kiroku target/release/kiroku --minutes 60
    .venv/bin/python bench/soak.py --kiroku target/debug/kiroku --minutes 5 --tasks 16
Prints a table and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
sys.path.insert(0, str(REPO / "bench"))

import kiroku_e2e  # noqa: E402
from kiroku_e2e import CallbackReceiver, Daemon, base_config, create_params, deep_merge, free_port  # noqa: E402

import density_bench as db  # noqa: E402
from density_bench import NA, Check, capacity, proc_rss_bytes, scrape  # noqa: E402

ROOM_BASE = 200001
USERS = ("soaka", "soakb")
PREFIX = "soak"
# Join transients the daemon cannot count (see the docstring), per session join.
UNCOUNTED_PER_JOIN = 4
KEYFRAME_WAIT_PER_JOIN = 15


def storage_pieces():
    """moto, the outage relay and the S3 config of tests/e2e/test_storage.py."""
    from test_storage import BUCKET, Moto, Relay, cloud_storage, storage_config
    return BUCKET, Moto, Relay, cloud_storage, storage_config


# --------------------------------------------------------------------------
# Publishers coming and going
# --------------------------------------------------------------------------

@dataclass
class PubRun:
    rooms: str
    user: str
    started: float
    ended: float = 0.0
    rc: int | None = None
    report: dict | None = None
    log_tail: str = ""
    signalled: bool = False  # stopped by SIGINT at the end of the soak, not by its duration


class PublisherLoop(threading.Thread):
    """Publishes `user` into `rooms` for random durations with random pauses
    until stopped; each run is its own `kiroku publish` process."""

    def __init__(self, kiroku: str, url: str, rooms: str, user: str, delay: float, durations: tuple[float, float],
                 pauses: tuple[float, float], log_dir: Path, rng: random.Random, nice: int = 0):
        super().__init__(daemon=True)
        self.nice = nice
        self.kiroku, self.url, self.rooms, self.user = kiroku, url, rooms, user
        self.delay, self.durations, self.pauses = delay, durations, pauses
        self.log_dir, self.rng = log_dir, rng
        self.runs: list[PubRun] = []
        self.halt = threading.Event()
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def stop(self) -> None:
        self.halt.set()
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.current.signalled = True
                self.proc.send_signal(signal.SIGINT)
        self.join(90)

    def run(self) -> None:
        if self.halt.wait(self.delay):
            return
        k = 0
        while not self.halt.is_set():
            k += 1
            log = self.log_dir / f"pub-{self.rooms}-{self.user}-{k}.log"
            duration = self.rng.uniform(*self.durations)
            run = PubRun(self.rooms, self.user, time.time())
            self.current = run
            with self._lock:
                if self.halt.is_set():
                    return
                self.proc = subprocess.Popen(
                    [self.kiroku, "publish", "--url", self.url, "--rooms", self.rooms, "--count", "1",
                     "--user", self.user, "--duration", f"{duration:.1f}", "--json", "--width", "320",
                     "--height", "180", "--fps", "15", "--bitrate", "200000"],
                    stdout=subprocess.PIPE, stderr=log.open("w"), text=True,
                    preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
            out, _ = self.proc.communicate()
            run.ended, run.rc = time.time(), self.proc.returncode
            try:
                run.report = json.loads(out.strip().splitlines()[-1])
            except (ValueError, IndexError):
                run.report = None
            if run.rc != 0 or run.report is None:
                run.log_tail = log.read_text(errors="replace")[-1500:]
            self.runs.append(run)
            if self.halt.wait(self.rng.uniform(*self.pauses)):
                return


# --------------------------------------------------------------------------
# Modify churn, bucket janitor
# --------------------------------------------------------------------------

SPEC_EXPLICIT = {"SubscribeAudioUserIds": list(USERS), "SubscribeVideoUserIds": list(USERS)}
SPEC_WILDCARD = {"SubscribeAudioUserIds": ["soak.*$"], "UnSubscribeVideoUserIds": ["ghost"]}


class Modifier(threading.Thread):
    """Every `every` s, a ModifyCloudRecording per task, alternating
    between two SubscribeStreamUserIds forms that admit the same users."""

    def __init__(self, d: Daemon, tasks: list[str], every: float):
        super().__init__(daemon=True)
        self.d, self.tasks, self.every = d, tasks, every
        self.halt = threading.Event()
        self.calls = 0
        self.errors: list[str] = []
        self.latencies: list[float] = []

    def stop(self) -> None:
        self.halt.set()
        self.join(120)

    def run(self) -> None:
        api = self.d.sdk()
        k = 0
        while not self.halt.wait(self.every):
            k += 1
            spec = SPEC_WILDCARD if k % 2 else SPEC_EXPLICIT
            for t in self.tasks:
                if self.halt.is_set():
                    return
                t0 = time.perf_counter()
                try:
                    api.modify(t, SubscribeStreamUserIds=spec)
                    self.latencies.append(time.perf_counter() - t0)
                except Exception as e:  # noqa: BLE001 - reported as a failure
                    self.errors.append(f"{t}: {e!r}")
                self.calls += 1


class Janitor(threading.Thread):
    """Counts every segment key that reaches the bucket, then deletes it."""

    def __init__(self, moto, bucket: str, prefix: str, every: float = 20.0):
        super().__init__(daemon=True)
        self.moto, self.bucket, self.prefix, self.every = moto, bucket, prefix, every
        self.segments: set[str] = set()
        self.segment_bytes = 0
        self.errors: list[str] = []
        self.halt = threading.Event()

    def sweep(self) -> None:
        c = self.moto.client
        batch: list[str] = []
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix + "/"):
            for o in page.get("Contents", []):
                if o["Key"].endswith(".ts"):
                    if o["Key"] not in self.segments:
                        self.segments.add(o["Key"])
                        self.segment_bytes += o["Size"]
                    batch.append(o["Key"])
        for i in range(0, len(batch), 1000):
            c.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch[i:i + 1000]],
                                                          "Quiet": True})

    def run(self) -> None:
        while not self.halt.wait(self.every):
            try:
                self.sweep()
            except Exception as e:  # noqa: BLE001 - retried next time, reported
                self.errors.append(repr(e))

    def stop(self) -> None:
        self.halt.set()
        self.join(120)
        self.sweep()

    def playlists(self) -> dict[str, bytes]:
        return self.moto.objects(self.prefix + "/")


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------

@dataclass
class SoakResult:
    minutes: float
    tasks: int
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)
    series: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict:
        return {"minutes": self.minutes, "tasks": self.tasks, "pass": self.passed,
                "checks": {c.name: {"pass": c.ok, "detail": c.detail} for c in self.checks},
                "figures": self.figures, "series": self.series}


def slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) in value per hour."""
    if len(points) < 3:
        return float("nan")
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return float("nan")
    return sum((t - mx) * (v - my) for t, v in points) / var * 3600


def mib_or_none(v: float | None) -> float | None:
    return None if v is None else round(v / 2**20, 1)


def run_soak(kiroku: str, minutes: float, tasks: int | None = None, *, segment_seconds: float = 10.0,
             groups: int = 4, warmup_seconds: float | None = None, outage_seconds: float = 60.0,
             modify_every: float = 30.0, publish_seconds: tuple[float, float] = (40.0, 120.0),
             pause_seconds: tuple[float, float] = (3.0, 15.0), seed: int = 19, work: Path | None = None,
             make_daemon: Callable[[str, dict], Daemon] | None = None, daemon_wrapper: list[str] | None = None,
             rig_nice: int = 0, log=print) -> SoakResult:
    BUCKET, Moto, Relay, cloud_storage, storage_config = storage_pieces()
    own_work = work is None
    work = Path(work or tempfile.mkdtemp(prefix="kiroku-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    kiroku_e2e.KIROKU_BIN = kiroku
    total = minutes * 60
    warmup = warmup_seconds if warmup_seconds is not None else min(120.0, total * 0.15)
    rng = random.Random(seed)
    moto = Moto()
    moto.client.create_bucket(Bucket=BUCKET)
    relay = Relay(moto.port)
    receiver = CallbackReceiver().start()
    d: Daemon | None = None
    loops: list[PublisherLoop] = []
    modifier: Modifier | None = None
    janitor: Janitor | None = None
    res = SoakResult(minutes=minutes, tasks=0)
    fig = res.figures
    try:
        cfg = base_config(work / "data", free_port(), receiver.url)
        cfg = deep_merge(cfg, db.DENSITY_CONFIG)
        cfg = deep_merge(cfg, {"recording": {"segment_seconds": segment_seconds},
                               "storage": storage_config(relay.port, spool_capacity_mb=8192,
                                                         drain_timeout_seconds=120)})
        d = (Daemon(work, cfg, name="soak", wrapper=daemon_wrapper).start() if make_daemon is None
             else make_daemon("soak", cfg))
        pid = d.proc.pid
        udp_drops0 = db.udp_rcvbuf_errors()

        # ---- size the load -------------------------------------------------
        cap = capacity(d)
        fig["capacity"] = cap if cap is not None else NA
        if cap is not None:
            fit = cap.get("shapes", {}).get("single_2av")
            at_limit = int(fit["tasks_at_admit_limit"]) if fit else None
            fig["capacity_single_2av"] = fit
            fig["capacity_admit_units"] = cap.get("admit_units")
            if tasks is None:
                if at_limit is None:
                    raise RuntimeError(f"/v1/capacity has no single_2av shape: {sorted(cap.get('shapes', {}))}")
                n, why = at_limit, (f"/v1/capacity: single_2av costs {fit['cost_units']:.3f} units, "
                                    f"{at_limit} fit in the admit limit ({cap.get('admit_units')} of "
                                    f"{cap.get('capacity_units')} units)")
            else:
                n = tasks
                why = (f"--tasks {tasks} (/v1/capacity says {at_limit} single_2av tasks at the admit limit, "
                       f"profile {cap.get('profile', {}).get('source')})")
        else:
            if tasks is None:
                raise RuntimeError("GET /v1/capacity is not available in this build: give --tasks N")
            n, why = tasks, f"--tasks {tasks} (/v1/capacity not available in this build)"
        res.tasks = n
        fig["sizing"] = why
        log(f"soak: {n} tasks x 2 users for {minutes:g} min; {why}")
        rooms = list(range(ROOM_BASE, ROOM_BASE + n))
        api = d.sdk()
        task_ids = []
        for r in rooms:
            task_ids.append(api.create(create_params(room=str(r), user=f"rec_{r}", max_idle=3600,
                                                     StorageParams=cloud_storage([PREFIX]))))

        # ---- publishers, churn, janitor -------------------------------------
        groups = max(1, min(groups, n))
        per = -(-n // groups)
        spans = [(rooms[i], rooms[min(i + per, n) - 1]) for i in range(0, n, per)]
        slots = [(f"{a}-{b}", u) for a, b in spans for u in USERS]
        (work / "publishers").mkdir(exist_ok=True)
        stagger = min(20.0, warmup / 3)
        for k, (span, user) in enumerate(slots):
            loop = PublisherLoop(kiroku, d.url, span, user, k * stagger / len(slots), publish_seconds,
                                 pause_seconds, work / "publishers", random.Random(rng.random()), rig_nice)
            loops.append(loop)
            loop.start()
        modifier = Modifier(d, task_ids, modify_every)
        modifier.start()
        janitor = Janitor(moto, BUCKET, PREFIX)
        janitor.start()
        t0 = time.monotonic()
        outage_at = max(warmup + 10, total / 2 - outage_seconds / 2)
        outage = {"cut": None, "restored": None, "peak_files": 0.0, "peak_bytes": 0.0, "drained": None,
                  "before_max": 0.0}
        rss_start = None
        samples: list[dict] = []
        while True:
            now = time.monotonic() - t0
            if now >= total:
                break
            s = scrape(d)
            rss = proc_rss_bytes(pid)
            pending = s.counter("kiroku_upload_pending_files")
            sample = {"t": round(now, 1), "rss_mib": round(rss / 2**20, 1), "pending_files": pending,
                      "pending_bytes": s.counter("kiroku_upload_pending_bytes"),
                      "streams": s.counter("kiroku_recorder_streams"), "peers": s.counter("kiroku_ingest_peers"),
                      "behind_max_s": s.max_of("kiroku_task_behind_seconds"),
                      "loadavg_1m": round(__import__("os").getloadavg()[0], 2),
                      "heap_in_use_mib": mib_or_none(s.value("kiroku_heap_in_use_bytes"))}
            samples.append(sample)
            if rss_start is None and now >= warmup:
                rss_start = (now, rss)
                fig["rss_start_at_s"] = round(now, 1)
                log(f"  warm-up over at {now:.0f} s: RSS {rss / 2**20:.1f} MiB")
            if outage["cut"] is None and outage_at - 60 <= now < outage_at:
                outage["before_max"] = max(outage["before_max"], pending)
            if outage["cut"] is None and now >= outage_at:
                relay.cut()
                outage["cut"] = now
                log(f"  S3 cut at {now:.0f} s (pending {pending:.0f} files)")
            elif outage["cut"] is not None and outage["restored"] is None:
                outage["peak_files"] = max(outage["peak_files"], pending)
                outage["peak_bytes"] = max(outage["peak_bytes"], sample["pending_bytes"])
                if now >= outage["cut"] + outage_seconds:
                    relay.restore()
                    outage["restored"] = now
                    log(f"  S3 back at {now:.0f} s (pending {pending:.0f} files)")
            elif outage["restored"] is not None and outage["drained"] is None:
                outage["peak_files"] = max(outage["peak_files"], pending)
                if pending <= outage["before_max"]:
                    outage["drained"] = now
                    log(f"  backlog drained {now - outage['restored']:.0f} s after S3 came back")
            time.sleep(min(5.0, max(0.1, total - now)))
        rss_end = (time.monotonic() - t0, proc_rss_bytes(pid))
        end_scrape = scrape(d)
        res.series = samples
        log(f"  load over at {rss_end[0]:.0f} s: RSS {rss_end[1] / 2**20:.1f} MiB; stopping publishers")

        # ---- wind down -----------------------------------------------------
        modifier.stop()
        for loop in loops:
            loop.halt.set()
        for loop in loops:
            loop.stop()
        still, last = time.monotonic(), -1.0
        while time.monotonic() - still < 2.0:
            v = scrape(d).counter("kiroku_recorder_frames_total")
            if v != last:
                last, still = v, time.monotonic()
            time.sleep(0.25)
        drained_scrape = scrape(d)
        for t in task_ids:
            api.delete(t)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            ends = [c for c in receiver.delivered() if c.event_type == 305 and c.payload.get("Status") in (0, 2)]
            if len({c.task_id for c in ends}) >= len(task_ids):
                break
            time.sleep(1)
        time.sleep(2)
        final = scrape(d)
        janitor.stop()
        fig["janitor_errors"] = janitor.errors[:5]

        # ---- RSS -------------------------------------------------------------
        # The RSS is a saw, not a line: every open segment's buffer fills for
        # a segment's length and is freed at its cut, the heap is trimmed every
        # 30 s, publishers come and go. One sample at each end lands anywhere
        # on it (the hour of 2026-12-04 started on a low point just after a
        # trim), so the goal compares the medians of a window at each end:
        # the first `window` seconds after the warm-up and the last `window`
        # seconds of load. The single samples are reported beside them.
        if rss_start is None:
            rss_start = (samples[0]["t"], samples[0]["rss_mib"] * 2**20) if samples else rss_end
        window = min(300.0, max(30.0, total * 0.1))
        first = [x["rss_mib"] for x in samples if rss_start[0] <= x["t"] < rss_start[0] + window]
        last = [x["rss_mib"] for x in samples if x["t"] >= total - window]
        start_median = statistics.median(first) if first else rss_start[1] / 2**20
        end_median = statistics.median(last) if last else rss_end[1] / 2**20
        growth = (end_median - start_median) / start_median if start_median else float("nan")
        point_growth = (rss_end[1] - rss_start[1]) / rss_start[1] if rss_start[1] else float("nan")
        half = [(x["t"], x["rss_mib"]) for x in samples if x["t"] >= total / 2]
        fig.update(rss_start_mib=round(rss_start[1] / 2**20, 1), rss_end_mib=round(rss_end[1] / 2**20, 1),
                   rss_point_growth_pct=round(point_growth * 100, 2), rss_window_s=window,
                   rss_start_median_mib=round(start_median, 1), rss_end_median_mib=round(end_median, 1),
                   rss_growth_pct=round(growth * 100, 2), rss_max_mib=max((x["rss_mib"] for x in samples), default=0),
                   rss_slope_second_half_mib_per_h=round(slope_per_hour(half), 1))
        # The allocator's live heap beside the RSS: which of the two grew.
        heap = [(x["t"], x["heap_in_use_mib"]) for x in samples
                if x["t"] >= fig.get("rss_start_at_s", 0) and x["heap_in_use_mib"] is not None]
        fig["heap_in_use_start_mib"] = heap[0][1] if heap else NA
        fig["heap_in_use_end_mib"] = mib_or_none(end_scrape.value("kiroku_heap_in_use_bytes")) or NA
        fig["heap_in_use_slope_second_half_mib_per_h"] = round(
            slope_per_hour([p for p in heap if p[0] >= total / 2]), 1) if heap else NA
        rss_metric = end_scrape.value("kiroku_process_resident_memory_bytes")
        fig["rss_metric_end_mib"] = NA if rss_metric is None else round(rss_metric / 2**20, 1)
        res.checks.append(Check("RSS growth < 5 %", growth < 0.05,
                                f"median {fig['rss_start_median_mib']} MiB over the {window:.0f} s after the "
                                f"warm-up ({rss_start[0]:.0f} s) -> {fig['rss_end_median_mib']} MiB over the last "
                                f"{window:.0f} s ({growth * 100:+.2f} %); single samples {fig['rss_start_mib']} -> "
                                f"{fig['rss_end_mib']} MiB ({point_growth * 100:+.2f} %); max "
                                f"{fig['rss_max_mib']} MiB; second-half slope "
                                f"{fig['rss_slope_second_half_mib_per_h']} MiB/h; live heap "
                                f"{fig['heap_in_use_start_mib']} -> {fig['heap_in_use_end_mib']} MiB, "
                                f"second-half slope {fig['heap_in_use_slope_second_half_mib_per_h']} MiB/h"))

        # ---- frames ---------------------------------------------------------
        runs = [r for loop in loops for r in loop.runs]
        bad_runs = [r for r in runs if r.rc != 0 or r.report is None]
        sent = sum(r.report["video_frames_sent"] + r.report["audio_frames_sent"] for r in runs if r.report)
        joins = sum(r.report["connected"] for r in runs if r.report)
        c = drained_scrape
        ingested = c.counter("kiroku_ingest_frames_total")
        recorded = c.counter("kiroku_recorder_frames_total")
        v_over = c.counter("kiroku_ingest_frame_drops_total", {"reason": "video_overflow"})
        a_over = c.counter("kiroku_ingest_frame_drops_total", {"reason": "audio_overflow"})
        other_drops = c.counter("kiroku_ingest_frame_drops_total") - v_over - a_over
        clock_over = c.counter("kiroku_recorder_clock_events_total", {"event": "overflow"})
        stray = c.counter("kiroku_recorder_stray_frames_total")
        write_failures = c.counter("kiroku_recorder_write_failures_total")
        uncounted = ingested - recorded - v_over - a_over - other_drops - stray
        sent_audio = sum(r.report["audio_frames_sent"] for r in runs if r.report)
        fig.update(frames_sent_audio=sent_audio, frames_sent_video=sent - sent_audio,
                   frames_ingested_audio=c.counter("kiroku_ingest_frames_total", {"track": "audio"}),
                   frames_ingested_video=c.counter("kiroku_ingest_frames_total", {"track": "main_video"}),
                   runs_stopped_by_signal=sum(1 for r in runs if r.signalled))
        fig.update(publisher_runs=len(runs), publisher_runs_failed=len(bad_runs), session_joins=joins,
                   frames_sent=sent, frames_ingested=ingested, frames_recorded=recorded,
                   video_keyframe_waits_or_overflow=v_over, audio_overflow=a_over, clock_overflow=clock_over,
                   stray_frames=stray, write_failures=write_failures, uncounted_join_frames=uncounted,
                   discontinuities=c.counter("kiroku_ingest_discontinuities_total"))
        lost_on_way = sent - ingested
        fig["udp_rcvbuf_drops_machine"] = db.udp_rcvbuf_errors() - udp_drops0
        sock = db.udp_socket_drops(db.ingest_port(d))
        fig["ingest_socket_drops"] = NA if sock is None else sock
        ok = (lost_on_way <= 0 and a_over == 0 and other_drops == 0 and clock_over == 0 and stray == 0
              and write_failures == 0 and 0 <= uncounted <= UNCOUNTED_PER_JOIN * joins
              and v_over <= KEYFRAME_WAIT_PER_JOIN * joins and not bad_runs)
        res.checks.append(Check(
            "frames lost = 0", ok,
            f"{db.fmt_int(sent)} sent by {len(runs)} publisher runs ({len(bad_runs)} failed), "
            f"{db.fmt_int(ingested)} ingested ({db.fmt_int(lost_on_way)} lost on the way: audio "
            f"{db.fmt_int(sent_audio - fig['frames_ingested_audio'])}, video "
            f"{db.fmt_int(sent - sent_audio - fig['frames_ingested_video'])}; "
            f"{fig['discontinuities']:.0f} unrepaired gaps; datagrams the kernel dropped on the daemon's full "
            f"UDP socket {fig['ingest_socket_drops']}, on the machine {db.fmt_int(fig['udp_rcvbuf_drops_machine'])}), "
            f"{db.fmt_int(recorded)} recorded; audio overflow {a_over:.0f}, timeline overflow {clock_over:.0f}, "
            f"stray {stray:.0f}, write failures {write_failures:.0f}; join transients over {joins} session joins: "
            f"{uncounted:.0f} uncounted before subscription ({uncounted / max(1, joins):.2f}/join, bound "
            f"{UNCOUNTED_PER_JOIN}), {v_over:.0f} video key-frame waits ({v_over / max(1, joins):.2f}/join, bound "
            f"{KEYFRAME_WAIT_PER_JOIN})" + (f"; first failed run: {bad_runs[0].log_tail[-300:]!r}" if bad_runs else "")))

        # ---- callbacks ----------------------------------------------------------
        delivered = receiver.delivered()
        by_task: dict[str, Counter] = defaultdict(Counter)
        last_type: dict[str, tuple[int, dict]] = {}
        for cb in delivered:
            by_task[cb.task_id][cb.event_type] += 1
            last_type[cb.task_id] = (cb.event_type, cb.payload)
        playlists = len(USERS) * 2
        expected = {301: 1, 303: 1, 302: 1, 304: playlists, 307: playlists}
        wrong = []
        for t in task_ids:
            got = by_task.get(t, Counter())
            diff = {e: (got.get(e, 0), want) for e, want in expected.items() if got.get(e, 0) != want}
            end = last_type.get(t)
            if end is None or end[0] != 305 or end[1].get("Status") not in (0, 2):
                diff["last"] = end
            if diff:
                wrong.append((t, diff))
        expected_total = len(task_ids) * (sum(expected.values()) + 1)
        n308 = sum(c[308] for c in by_task.values())
        given_up = final.counter("kiroku_callbacks_given_up_total")
        delivered_metric = final.counter("kiroku_callbacks_delivered_total")
        fig.update(callbacks_delivered=len(delivered), callbacks_expected=expected_total, callbacks_308=n308,
                   callbacks_given_up=given_up, callbacks_delivered_metric=delivered_metric,
                   callbacks_bad_bodies=len(receiver.bad))
        res.checks.append(Check(
            "callbacks delivered = expected", not wrong and given_up == 0 and not receiver.bad,
            f"{len(delivered)} delivered (distinct bodies; the daemon counts {delivered_metric:.0f}), "
            f"{expected_total} expected + {n308} x 308 (outage); {len(wrong)} task(s) off"
            + (f", e.g. {wrong[0]}" if wrong else "") + f"; given up {given_up:.0f}"))

        # ---- files ----------------------------------------------------------------
        segments = final.counter("kiroku_recorder_segments_total")
        uploaded = final.counter("kiroku_upload_files_total")
        pending_end = final.counter("kiroku_upload_pending_files")
        stranded_end = final.counter("kiroku_upload_stranded_files")
        in_bucket = len(janitor.segments)
        named_missing = []
        for key, text in janitor.playlists().items():
            if key.endswith(".m3u8"):
                folder = key.rsplit("/", 1)[0]
                for line in text.decode(errors="replace").splitlines():
                    if line and not line.startswith("#") and f"{folder}/{line}" not in janitor.segments:
                        named_missing.append(f"{folder}/{line}")
        fig.update(segments_written=segments, segment_keys_in_bucket=in_bucket, upload_files=uploaded,
                   upload_pending_end=pending_end, upload_stranded_end=stranded_end,
                   segment_mib_in_bucket=round(janitor.segment_bytes / 2**20, 1),
                   playlist_segments_missing=len(named_missing))
        res.checks.append(Check(
            "files uploaded = segments written",
            in_bucket == segments and uploaded >= segments and pending_end == 0 and stranded_end == 0
            and not named_missing,
            f"{segments:.0f} segments written, {in_bucket} distinct segment keys reached the bucket, "
            f"{uploaded:.0f} files uploaded (segments + playlist versions), pending {pending_end:.0f}, stranded "
            f"{stranded_end:.0f} at the end; {len(named_missing)} segment(s) named by a playlist never arrived"))

        # ---- outage -------------------------------------------------------------
        drained_s = None if outage["drained"] is None else outage["drained"] - outage["restored"]
        fig.update(outage_cut_at_s=outage["cut"], outage_restored_at_s=outage["restored"],
                   outage_backlog_peak_files=outage["peak_files"],
                   outage_backlog_peak_mib=round(outage["peak_bytes"] / 2**20, 1),
                   outage_drained_after_s=None if drained_s is None else round(drained_s, 1),
                   upload_failures=sum(v for _, v in final.samples.get("kiroku_upload_failures_total", [])))
        res.checks.append(Check(
            "backlog drained after the outage", outage["restored"] is not None and drained_s is not None,
            f"S3 down {outage_seconds:g} s from {outage['cut']} s: backlog peaked at {outage['peak_files']:.0f} "
            f"files ({fig['outage_backlog_peak_mib']} MiB); " + (
                f"drained {drained_s:.0f} s after S3 came back" if drained_s is not None
                else "not drained before the load ended")))

        # ---- issue 19 metrics, when present ---------------------------------------------
        delta = final.buckets("kiroku_recorder_segment_latency_seconds")  # cumulative over the run
        if delta is None:
            fig["segment_latency"] = NA
            res.checks.append(Check("segments stored ≤ 1 s", None,
                                    f"{NA} (kiroku_recorder_segment_latency_seconds)"))
        else:
            total_obs = delta.get(float("inf"), 0.0)
            fig["segment_latency"] = {"observations": total_obs, "within_1s": delta.get(1.0),
                                      "p99_le_s": db.bucket_percentile(delta, 99)}
            res.checks.append(Check(
                "segments stored ≤ 1 s", total_obs > 0 and delta.get(1.0) == total_obs,
                f"{delta.get(1.0, 0):.0f} of {total_obs:.0f} segments stored within 1 s of their cut over the run "
                f"(the outage included: the spool takes them), p99 <= {fig['segment_latency']['p99_le_s']} s"))
        writes = final.buckets("kiroku_recorder_store_write_seconds")  # where late segments' time went
        if writes is not None:
            fig["store_writes"] = {"observations": writes.get(float("inf"), 0.0),
                                   "over_1s": writes.get(float("inf"), 0.0) - writes.get(1.0, 0.0),
                                   "p99_le_s": db.bucket_percentile(writes, 99)}
        fig["heap_trims"] = final.value("kiroku_heap_trims_total")  # None in a build without the trim
        behinds = [x["behind_max_s"] for x in samples if x["behind_max_s"] is not None]
        fig["behind_max_s"] = max(behinds) if behinds else NA
        fig["modify_calls"] = modifier.calls
        fig["modify_errors"] = modifier.errors[:5]
        fig["modify_p99_ms"] = round(db.percentile(modifier.latencies, 99) * 1e3, 2) if modifier.latencies else None
        if modifier.errors:
            res.checks.append(Check("modify calls", False, f"{len(modifier.errors)} of {modifier.calls} failed: "
                                                           f"{modifier.errors[0]}"))
        return res
    finally:
        try:
            (work / "soak-result.json").write_text(json.dumps(res.to_json(), default=str, indent=1))
        except OSError:
            pass
        if modifier is not None and modifier.is_alive():
            modifier.stop()
        for loop in loops:
            if loop.is_alive():
                loop.stop()
        if janitor is not None and janitor.is_alive():
            janitor.halt.set()
        if d is not None and make_daemon is None and d.running:
            d.stop(timeout=120)
        receiver.stop()
        relay.cut()
        moto.stop()
        if own_work:
            shutil.rmtree(work, ignore_errors=True)


def print_result(r: SoakResult, out=print) -> None:
    f = r.figures
    out(f"\nkiroku soak: {r.tasks} single-stream 2-user tasks for {r.minutes:g} min ({f.get('sizing')})")
    for c in r.checks:
        verdict = "n/a " if c.ok is None else ("PASS" if c.ok else "FAIL")
        out(f"  {verdict}  {c.name:<34} {c.detail}")
    out(f"        segment latency: {f.get('segment_latency')}; store writes: {f.get('store_writes', NA)}; "
        f"largest task lag sampled: {f.get('behind_max_s')}; "
        f"Modify: {f.get('modify_calls')} calls, p99 {f.get('modify_p99_ms')} ms; RSS metric at the end: "
        f"{f.get('rss_metric_end_mib')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiroku", default=str(REPO / "target" / "release" / "kiroku"))
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--tasks", type=int, help="tasks to run instead of what /v1/capacity sizes")
    ap.add_argument("--segment-seconds", type=float, default=10)
    ap.add_argument("--groups", type=int, default=4, help="room groups (publisher processes per user)")
    ap.add_argument("--warmup", type=float, help="seconds before the starting RSS (default 15 %%, at most 120)")
    ap.add_argument("--outage-seconds", type=float, default=60)
    ap.add_argument("--modify-every", type=float, default=30)
    ap.add_argument("--publish-seconds", type=float, nargs=2, default=(40, 120), metavar=("MIN", "MAX"))
    ap.add_argument("--pause-seconds", type=float, nargs=2, default=(3, 15), metavar=("MIN", "MAX"))
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it")
    ap.add_argument("--rig-nice", type=int, default=10, metavar="N",
                    help="run the publishers at nice N (default 10, the daemon's recorders' own): on a real "
                         "box the publishers are elsewhere, and here they would otherwise outrank the recorders "
                         "they feed")
    ap.add_argument("--daemon-wrapper", metavar="CMD",
                    help="run the daemon under CMD (e.g. \"heaptrack -o /tmp/soak\" to see where memory goes)")
    args = ap.parse_args()
    if not Path(args.kiroku).exists():
        ap.error(f"{args.kiroku} does not exist")
    r = run_soak(args.kiroku, args.minutes, args.tasks, segment_seconds=args.segment_seconds, groups=args.groups,
                 warmup_seconds=args.warmup, outage_seconds=args.outage_seconds, modify_every=args.modify_every,
                 publish_seconds=tuple(args.publish_seconds), pause_seconds=tuple(args.pause_seconds),
                 work=Path(args.keep) if args.keep else None,
                 daemon_wrapper=shlex.split(args.daemon_wrapper) if args.daemon_wrapper else None,
                 rig_nice=args.rig_nice)
    print_result(r)
    print(json.dumps(r.to_json(), default=str))
    return 0 if r.passed else 1


if __name__ == "__main__":
    sys.exit(main())
