#!/usr/bin/env python3
"""Density benchmark (issue 19): how many concurrent recording tasks one box
records in real time, every frame, with the API still fast.

One run (`--tasks N`): a fresh daemon, N recording tasks, each its own room,
fed over WHIP by ONE `kiroku publish --rooms A-B --count U` process (the
same U users in every room, the picture and tone encoded once):
- single-stream (default): RecordMode 1, audio + video, U = 2 users per
  room (`--width/--height/--fps/--bitrate`, default 320x180@15, 200 kbit/s);
- `--mixed`: RecordMode 2, 4 users at 640x360@15 per room mixed into
  1280x720@15 (nine-grid, MixLayoutMode 3).
Once every session connected, every task is InProgress and every stream is
recorded, a warm-up (`--warmup`, past the timeline's 5.5 s wait for sender
reports), then `--seconds` of steady state, measured between two scrapes
of /metrics (A at the start, B at the end). The publisher is then stopped
(SIGINT: it DELETEs its sessions and prints its `--json` report) and the
recorders drain (scrape C once the recorder frame counter stands still).

Checks, each PASS / FAIL / n/a ("not available in this build": a metric or
endpoint the binary under test does not have is never read as zero):
- frames recorded: every frame ingest delivered from A to C was taken by a
  recorder (`kiroku_ingest_frames_total` vs `kiroku_recorder_frames_total`,
  A→C; recorded may exceed ingested by what was queued at A, never fall
  short), no stray frames, every stream subscribed; and ingest received
  every frame the publisher says it sent (its `--json` report against
  `kiroku_ingest_frames_total` over the whole run). What the daemon cannot
  count is shown beside: datagrams the kernel dropped because the daemon's
  one UDP socket was full (/proc/net/udp `drops`, before A / A→B / B→C),
  and `kiroku_ingest_discontinuities_total` (gaps NACK did not repair).
  A session the box ends (ICE timeout) before the end fails the run at
  once: the box does not hold the load.
- zero drops: `kiroku_ingest_frame_drops_total` and
  `kiroku_recorder_clock_events_total{event="overflow"}` A→C (mixed: also
  `kiroku_mix_events_total{event="tick_skipped"|"frame_dropped"}`). Video
  frames skipped while a *new* subscription waits for its first key frame
  are counted by the daemon as `video_overflow` too; they happen before A
  and are shown separately (startup key-frame waits).
- segments stored within 1 s of their cut:
  `kiroku_recorder_segment_latency_seconds` (A→B: every observation in the
  `le="1"` bucket).
- recorders keep real time: the largest `kiroku_task_behind_seconds`
  sampled over the window under 1 s, and frames recorded A→B at least 98 %
  of frames ingested A→B (a recorder falling behind shows there too).
- API p99 < 10 ms: a process of its own sends DescribeCloudRecording for
  random tasks at `--api-rate` per second (TC3-signed, one kept-alive
  connection, timed client-side) from the publisher's start to B:
  "throughout" (the sessions' connection storm included) and the steady
  window alone are both shown, and the daemon's own histogram
  (`kiroku_api_request_duration_seconds`) beside; the check is on the
  client's whole.
- mixed only: output frames A→B at least 98 % of N x fps x window.
Figures: daemon CPU in cores and RSS (`/proc`; the daemon's own
`kiroku_process_*` metrics side by side when the build has them), the
publisher's CPU, frames/s, `GET /v1/capacity` when the build has it, and
the CPU other work on the machine used during the window (busy cores from
/proc/stat less the daemon, the publisher and this script): on a shared
machine a figure is only as good as that one is small.
`limits.admit_by_cost = false` where the build knows the key: the run
measures the box, not its cost model (whose shapes are printed beside).

`--ramp` finds the largest N this box sustains: `--steps` (default 25, 50,
100, 150, 200, 300, 400, 600, 800, 1000; mixed 2, 4, 6, 8, 12, 16, 24,
32) until the first failure, then bisection between the last pass and the
first failure down to `--resolution` tasks, each step `--ramp-seconds` of
steady state on a fresh daemon (`--ramp-ignore-api`: judge the steps on the
recording checks alone, said in the output). `--publisher PATH` makes the
load with another binary's `kiroku publish`.

Usage (release figures; the lead's `cargo build --release -p kiroku`):
    .venv/bin/python bench/density_bench.py --kiroku target/release/kiroku --tasks 100
    .venv/bin/python bench/density_bench.py --ramp
    .venv/bin/python bench/density_bench.py --mixed --tasks 4
Prints a table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import requests  # noqa: E402

import kiroku_e2e  # noqa: E402
from kiroku_e2e import (ADMIN_HEADERS, APP_ID, Daemon, base_config, create_params, deep_merge,  # noqa: E402
                        free_port)

CLK_TCK = os.sysconf("SC_CLK_TCK")
NA = "not available in this build"
ROOM_BASE = 100001

# The WHIP offer limits and task limits a density load needs (docs/configuration.md).
DENSITY_CONFIG = {
    "ingest": {
        "offers_per_minute_per_address": 1000000,
        "offers_per_minute_per_app": 1000000,
        "offers_per_minute_per_room": 1000000,
        "max_pending_sessions": 4096,
    },
    "limits": {"max_tasks": 1000, "api_rate_per_second": 100000},
}


# --------------------------------------------------------------------------
# /metrics, /proc
# --------------------------------------------------------------------------

_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
_META = re.compile(r'^#\s+(?:HELP|TYPE)\s+([a-zA-Z_:][a-zA-Z0-9_:]*)')


class Scrape:
    """One /metrics text, parsed once. `value()` answers None for a family
    the exposition does not have at all (not in this build, or a labelled
    vec with no child yet: see `counter()`)."""

    def __init__(self, text: str, at: float):
        self.at = at
        self.samples: dict[str, list[tuple[dict, float]]] = {}
        self.families: set[str] = set()
        for line in text.splitlines():
            m = _META.match(line)
            if m:
                self.families.add(m.group(1))
                continue
            m = _SAMPLE.match(line.strip())
            if m:
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                self.samples.setdefault(m.group(1), []).append((labels, float(m.group(3))))

    def has(self, name: str) -> bool:
        if name in self.samples or name in self.families:
            return True
        return any(name.endswith(s) and name[: -len(s)] in self.families for s in ("_bucket", "_sum", "_count"))

    def value(self, name: str, labels: dict | None = None) -> float | None:
        """Sum of the samples of `name` with these labels; None when the family is absent."""
        if not self.has(name):
            return None
        want = {k: str(v) for k, v in (labels or {}).items()}
        return sum(v for got, v in self.samples.get(name, []) if all(got.get(k) == x for k, x in want.items()))

    def counter(self, name: str, labels: dict | None = None) -> float:
        """A documented counter of this build; a labelled vec prints nothing
        until its first child exists (rust-prometheus), so absent reads 0
        here. Only for counters the daemon has had since before issue 19."""
        v = self.value(name, labels)
        return 0.0 if v is None else v

    def max_of(self, name: str) -> float | None:
        if not self.has(name):
            return None
        vals = [v for _, v in self.samples.get(name, [])]
        return max(vals) if vals else 0.0

    def buckets(self, name: str, labels: dict | None = None) -> dict[float, float] | None:
        """A histogram's cumulative buckets summed over the label sets that
        include `labels` (all by default): le → count."""
        if not self.has(name + "_bucket"):
            return None
        want = {k: str(v) for k, v in (labels or {}).items()}
        out: dict[float, float] = {}
        for got, v in self.samples.get(name + "_bucket", []):
            if any(got.get(k) != x for k, x in want.items()):
                continue
            le = float("inf") if got.get("le") == "+Inf" else float(got["le"])
            out[le] = out.get(le, 0.0) + v
        return out


def scrape(d: Daemon) -> Scrape:
    return Scrape(d.metrics_text(), time.monotonic())


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def udp_rcvbuf_errors() -> int:
    """The kernel's count of UDP datagrams dropped for a full receive buffer
    (machine-wide, /proc/net/snmp): a receiver that falls behind loses
    media, STUN consent checks and all."""
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def udp_socket_drops(port: int) -> int | None:
    """Datagrams the kernel dropped on the UDP socket bound to `port`
    (/proc/net/udp `drops`: the daemon's one ingest socket), None if absent."""
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            f = ln.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port:
                return int(f[-1])
    return None


def ingest_port(d: Daemon) -> int:
    return int(d.config["ingest"]["udp_listen"].rsplit(":", 1)[1])


def box_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (/proc/stat, all but idle and iowait)."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(f[:8]) - f[3] - f[4]) / CLK_TCK


class CpuMeter:
    """CPU seconds of a process between two marks."""

    def __init__(self, pid: int):
        self.pid = pid
        self.t0 = time.monotonic()
        self.c0 = proc_cpu_seconds(pid)

    def cores(self) -> float:
        return (proc_cpu_seconds(self.pid) - self.c0) / max(1e-9, time.monotonic() - self.t0)


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def bucket_percentile(delta: dict[float, float], p: float) -> float | None:
    """The upper bound of the bucket holding the p-th percentile of a histogram delta."""
    total = delta.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for le in sorted(delta):
        if delta[le] >= p / 100 * total:
            return le
    return float("inf")


def hist_delta(a: Scrape, b: Scrape, name: str, labels: dict | None = None) -> dict[float, float] | None:
    ba, bb = a.buckets(name, labels), b.buckets(name, labels)
    if ba is None or bb is None:
        return None
    return {le: bb[le] - ba.get(le, 0.0) for le in bb}


# --------------------------------------------------------------------------
# The API prober
# --------------------------------------------------------------------------

PHASES = ("ramp", "steady")


def _probe_loop(port: int, host: str, tasks: list[str], rate: float, app: int, phase, halt, out) -> None:
    """The prober's own process (see ApiProber): nothing else of the
    benchmark (scrapes, parsing) runs on its interpreter to delay it."""
    import kiroku_e2e as k  # the spawned interpreter imports afresh
    samples: list[tuple[int, float]] = []  # (phase index, seconds)
    errors: list[str] = []
    late = 0
    conn: http.client.HTTPConnection | None = None
    period = 1.0 / rate
    due = time.monotonic()
    while not halt.is_set():
        now = time.monotonic()
        if now < due:
            halt.wait(due - now)
            continue
        due += period
        if now - due > 1.0:
            late += int((now - due) / period)
            due = now + period
        body = json.dumps({"SdkAppId": app, "TaskId": random.choice(tasks)}).encode()
        headers = k.signed_headers(host, "DescribeCloudRecording", body)
        ph = phase.value
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.connect()
            t0 = time.perf_counter()
            conn.request("POST", "/", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            dt = time.perf_counter() - t0
            reply = json.loads(data)["Response"]
            if resp.status != 200 or "Error" in reply:
                errors.append(f"{resp.status} {reply.get('Error')}")
            else:
                samples.append((ph, dt))
        except Exception as e:  # noqa: BLE001 - any failure is an error sample; reconnect
            errors.append(repr(e))
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    out.send((samples, errors, late))
    out.close()


class ApiProber:
    """DescribeCloudRecording on random tasks at a steady rate, each request
    TC3-signed (before the clock starts) on one kept-alive connection,
    latency measured around the HTTP exchange, in a process of its own (a
    thread here would wait for the GIL while the main thread parses
    /metrics, and count that as API latency). `phase` tags the samples."""

    def __init__(self, d: Daemon, tasks: list[str], rate: float, app: int = APP_ID):
        import multiprocessing as mp
        ctx = mp.get_context("spawn")
        self._phase = ctx.Value("i", 0)
        self._halt = ctx.Event()
        self._recv, send = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_probe_loop, daemon=True,
                                 args=(d.port, d.host, list(tasks), rate, app, self._phase, self._halt, send))
        self.samples: list[tuple[str, float]] = []  # (phase, seconds), once stopped
        self.errors: list[str] = []
        self.late = 0  # ticks skipped because the client itself fell a second behind

    def start(self) -> None:
        self._proc.start()

    @property
    def phase(self) -> str:
        return PHASES[self._phase.value]

    @phase.setter
    def phase(self, value: str) -> None:
        self._phase.value = PHASES.index(value)

    def stop(self) -> None:
        if not self._proc.is_alive() and not self._recv.poll():
            return
        self._halt.set()
        if self._recv.poll(30):
            samples, self.errors, self.late = self._recv.recv()
            self.samples = [(PHASES[p], dt) for p, dt in samples]
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()

    def stats(self, phases: tuple[str, ...] | None = None) -> dict:
        xs = [dt for ph, dt in self.samples if phases is None or ph in phases]
        return {"requests": len(xs), "p50_ms": percentile(xs, 50) * 1e3, "p99_ms": percentile(xs, 99) * 1e3,
                "max_ms": max(xs) * 1e3 if xs else float("nan")}


# --------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------

@dataclass
class Shape:
    """What one room holds and how its task records it."""
    name: str
    users: int
    width: int
    height: int
    fps: int
    bitrate: int
    mixed: bool

    def create_params(self, room: int) -> dict:
        p = create_params(room=str(room), user=f"rec_{room}", mode=2 if self.mixed else 1, max_idle=600)
        if self.mixed:
            p["MixTranscodeParams"] = {
                "VideoParams": {"Width": 1280, "Height": 720, "Fps": 15, "BitRate": 1_500_000, "Gop": 2},
                "AudioParams": {"SampleRate": 1, "Channel": 2, "BitRate": 64000},
            }
            p["MixLayoutParams"] = {"MixLayoutMode": 3}
        else:
            p["RecordParams"]["StreamType"] = 0
        return p


SINGLE = Shape("single_2av", 2, 320, 180, 15, 200_000, False)
MIXED = Shape("mixed_4x360p_720p15", 4, 640, 360, 15, 600_000, True)


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not available in this build
    detail: str


@dataclass
class Result:
    tasks: int
    shape: str
    seconds: float
    checks: list[Check] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_json(self) -> dict:
        return {"tasks": self.tasks, "shape": self.shape, "seconds": self.seconds, "pass": self.passed,
                "checks": {c.name: {"pass": c.ok, "detail": c.detail} for c in self.checks},
                "figures": self.figures}


def accepts_config(kiroku: str, cfg: dict, work: Path) -> bool:
    """Whether this binary's `kiroku check-config` accepts `cfg` (unknown
    keys are refused: a key newer than the build is absent from it)."""
    path = work / "probe.toml"
    path.write_text(kiroku_e2e.to_toml(cfg))
    r = subprocess.run([kiroku, "check-config", str(path)], capture_output=True, text=True, timeout=30)
    return r.returncode == 0


def density_config(kiroku: str, work: Path, segment_seconds: float, max_tasks: int,
                   admit_by_cost: bool | None = False) -> dict:
    """The suite's base config with the density limits. `admit_by_cost`
    (`limits.admit_by_cost`, issue 19): False measures the box rather than
    its cost model (Creates beyond the model's admit limit are not
    refused); None leaves the default. Set only where the binary knows it."""
    cfg = base_config(work / "data", free_port())
    cfg = deep_merge(cfg, DENSITY_CONFIG)
    cfg["limits"]["max_tasks"] = max(max_tasks, cfg["limits"]["max_tasks"])
    cfg = deep_merge(cfg, {"recording": {"segment_seconds": segment_seconds}})
    if admit_by_cost is not None:
        with_key = deep_merge(cfg, {"limits": {"admit_by_cost": admit_by_cost}})
        work.mkdir(parents=True, exist_ok=True)
        if accepts_config(kiroku, with_key, work):
            cfg = with_key
    return cfg


def capacity(d: Daemon) -> dict | None:
    """GET /v1/capacity, or None when this build has no such endpoint."""
    r = requests.get(d.url + "/v1/capacity", headers=ADMIN_HEADERS, timeout=5)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.json()


def create_tasks(d: Daemon, shape: Shape, rooms: list[int], threads: int = 4) -> list[str]:
    """Creates one task per room through the Tencent SDK (a few clients in parallel)."""
    out: list[str | None] = [None] * len(rooms)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        api = d.sdk()
        try:
            for i in range(k, len(rooms), threads):
                out[i] = api.create(shape.create_params(rooms[i]))
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return [t for t in out if t]


def wait_ready(d: Daemon, pub: subprocess.Popen, pub_log: Path, n: int, shape: Shape, timeout: float,
               log) -> float:
    """Until every session connected, every task is InProgress and (single-
    stream) every user's stream is recorded. Returns seconds waited."""
    t0 = time.monotonic()
    sessions = n * shape.users
    udp0 = udp_rcvbuf_errors()
    progress: float | None = time.monotonic() + 10
    while True:
        if pub.poll() is not None:
            raise RuntimeError(f"the publisher exited with {pub.returncode} before every session connected: "
                               f"{pub_log.read_text(errors='replace')[-2000:]}")
        s = scrape(d)
        connected = s.counter("kiroku_whip_sessions_connected_total")
        in_progress = s.counter("kiroku_tasks", {"state": "in_progress"})
        streams = s.counter("kiroku_recorder_streams")
        state = (f"connected {connected:.0f}/{sessions}, InProgress {in_progress:.0f}/{n}, streams recorded "
                 f"{streams:.0f}" + ("" if shape.mixed else f"/{2 * sessions}"))
        if progress is not None and time.monotonic() >= progress:
            log(f"  waiting ({time.monotonic() - t0:.0f} s): {state}; daemon CPU so far "
                f"{proc_cpu_seconds(d.proc.pid):.1f} s")
            progress = time.monotonic() + 10
        ended = {lb.get("reason"): v for lb, v in s.samples.get("kiroku_whip_sessions_ended_total", [])}
        if sum(ended.values()) > 0:
            raise RuntimeError(f"sessions ended by the box before the window ({ended}; {state}): it cannot hold "
                               f"this load (datagrams dropped on the daemon's full UDP socket so far: "
                               f"{udp_socket_drops(ingest_port(d))}, on the machine {udp_rcvbuf_errors() - udp0}; "
                               f"daemon CPU so far "
                               f"{proc_cpu_seconds(d.proc.pid):.1f} s)")
        # Single-stream, AvMerge 0: each user's audio and video are a stream each.
        want_streams = 2 * sessions if not shape.mixed else 0
        if connected >= sessions and in_progress >= n and streams >= want_streams:
            log(f"  ready after {time.monotonic() - t0:.1f} s: {state}")
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"not ready after {timeout:.0f} s: {state}")
        time.sleep(0.5)


def stop_process(p: subprocess.Popen, timeout: float = 60) -> tuple[str, str]:
    if p.poll() is None:
        p.send_signal(signal.SIGINT)
    try:
        return p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        return p.communicate(timeout=10)


def fmt_int(x: float) -> str:
    return f"{x:,.0f}".replace(",", " ")


def run_once(kiroku: str, n: int, shape: Shape, seconds: float, *, warmup: float = 8.0, api_rate: float = 20.0,
             segment_seconds: float = 10.0, work: Path | None = None, ready_timeout: float | None = None,
             publisher: str | None = None, make_daemon: Callable[[str, dict], Daemon] | None = None,
             daemon_env: dict[str, str] | None = None, log=print) -> Result:
    """One density run of `n` tasks; see the module docstring. `make_daemon`
    (name, config) → a started Daemon lets a test use its fixture;
    `daemon_env` is added to the daemon's environment only (an allocator
    setting A/B'd on the daemon must not change the publishers)."""
    own_work = work is None
    work = work or Path(tempfile.mkdtemp(prefix="kiroku-density-"))
    kiroku_e2e.KIROKU_BIN = kiroku
    (work / f"n{n}").mkdir(parents=True, exist_ok=True)
    cfg = density_config(kiroku, work / f"n{n}", segment_seconds, n + 10)
    fig_admit = cfg["limits"].get("admit_by_cost", NA)
    if make_daemon is None:
        d = Daemon(work / f"n{n}", cfg, name=f"density{n}", env=daemon_env).start()
    else:
        d = make_daemon(f"density{n}", cfg)
    result = Result(tasks=n, shape=shape.name, seconds=seconds)
    fig = result.figures
    fig.update(binary=kiroku, publisher_binary=publisher or kiroku, cpus=os.cpu_count(), users_per_task=shape.users, sessions=n * shape.users,
               video=f"{shape.width}x{shape.height}@{shape.fps}", segment_seconds=segment_seconds,
               admit_by_cost=fig_admit)
    pub: subprocess.Popen | None = None
    prober: ApiProber | None = None
    try:
        t_start = time.monotonic()
        rooms = list(range(ROOM_BASE, ROOM_BASE + n))
        tasks = create_tasks(d, shape, rooms)
        fig["create_seconds"] = round(time.monotonic() - t_start, 2)
        cap0 = capacity(d)
        fig["capacity_idle"] = cap0
        prober = ApiProber(d, tasks, api_rate)
        prober.start()
        a0 = scrape(d)  # the start of "throughout" for the daemon's own API histogram
        udp_drops0 = udp_rcvbuf_errors()
        pub_log = work / f"n{n}" / "publisher.log"
        pub = subprocess.Popen(
            [publisher or kiroku, "publish", "--url", d.url, "--rooms", f"{rooms[0]}-{rooms[-1]}", "--count", str(shape.users),
             "--user", "u", "--duration", "86400", "--json", "--width", str(shape.width), "--height",
             str(shape.height), "--fps", str(shape.fps), "--bitrate", str(shape.bitrate)],
            stdout=subprocess.PIPE, stderr=pub_log.open("w"), text=True)
        pub_cpu_total = CpuMeter(pub.pid)
        fig["ready_seconds"] = round(wait_ready(d, pub, pub_log, n, shape,
                                                 ready_timeout or 60 + 0.5 * n * shape.users, log), 1)
        time.sleep(warmup)

        # ---- steady window: A → B ------------------------------------------
        a = scrape(d)
        sock_a = udp_socket_drops(ingest_port(d))
        daemon_cpu, pub_cpu, me_cpu = CpuMeter(d.proc.pid), CpuMeter(pub.pid), CpuMeter(os.getpid())
        box0 = box_busy_seconds()
        prober.phase = "steady"
        behind_max: float | None = None
        rss_max = 0
        end = time.monotonic() + seconds
        while True:
            s = scrape(d)
            b_max = s.max_of("kiroku_task_behind_seconds")
            if b_max is not None:
                behind_max = max(behind_max or 0.0, b_max)
            rss_max = max(rss_max, proc_rss_bytes(d.proc.pid))
            if pub.poll() is not None:
                raise RuntimeError(f"the publisher exited with {pub.returncode} during the window")
            gone = sum(v for lb, v in s.samples.get("kiroku_whip_sessions_ended_total", []))
            if gone:
                raise RuntimeError(f"{gone:.0f} sessions ended by the box during the window "
                                   f"({s.samples.get('kiroku_whip_sessions_ended_total')}): it cannot hold this "
                                   f"load (datagrams dropped on the daemon's full UDP socket so far: "
                                   f"{udp_socket_drops(ingest_port(d))}, on the machine "
                                   f"{udp_rcvbuf_errors() - udp_drops0})")
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(2.0, left))
        b = scrape(d)
        sock_b = udp_socket_drops(ingest_port(d))
        wall = b.at - a.at
        # The box's 1-minute load average at B: other work on a shared machine shows here.
        fig["loadavg_1m"] = round(os.getloadavg()[0], 2)
        fig["daemon_cpu_cores"] = round(daemon_cpu.cores(), 3)
        fig["publisher_cpu_cores"] = round(pub_cpu.cores(), 3)
        # What else ran on the machine meanwhile (a shared box): busy cores
        # less the daemon, the publisher and this script.
        box = (box_busy_seconds() - box0) / (time.monotonic() - daemon_cpu.t0)
        fig["other_load_cores"] = round(max(0.0, box - fig["daemon_cpu_cores"] - fig["publisher_cpu_cores"]
                                            - me_cpu.cores()), 2)
        fig["daemon_rss_mib"] = round(proc_rss_bytes(d.proc.pid) / 2**20, 1)
        fig["daemon_rss_max_mib"] = round(rss_max / 2**20, 1)
        rss_metric = b.value("kiroku_process_resident_memory_bytes")
        fig["daemon_rss_metric_mib"] = NA if rss_metric is None else round(rss_metric / 2**20, 1)
        cpu_a, cpu_b = a.value("kiroku_process_cpu_seconds_total"), b.value("kiroku_process_cpu_seconds_total")
        fig["daemon_cpu_metric_cores"] = NA if cpu_a is None or cpu_b is None else round((cpu_b - cpu_a) / wall, 3)
        fig["capacity_loaded"] = capacity(d)
        prober.stop()
        api_all = prober.stats()
        api_steady = prober.stats(("steady",))
        api_errors, api_late = list(prober.errors), prober.late
        prober = None

        # ---- stop the publisher, drain: C ----------------------------------
        fig["publisher_cpu_seconds_run"] = round(proc_cpu_seconds(pub.pid) - pub_cpu_total.c0, 2)
        out, err = stop_process(pub)
        pub_rc = pub.returncode
        try:
            report = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"the publisher printed no report (exit {pub_rc}): "
                               f"{pub_log.read_text(errors='replace')[-2000:]}")
        fig["publisher_report"] = report
        drained_at = time.monotonic()
        last_rec, still_since = -1.0, time.monotonic()
        while True:
            c = scrape(d)
            rec = c.counter("kiroku_recorder_frames_total")
            if rec != last_rec:
                last_rec, still_since = rec, time.monotonic()
            elif time.monotonic() - still_since >= 1.5 and c.counter("kiroku_recorder_streams") == 0:
                break
            if time.monotonic() - drained_at > 60:
                break
            time.sleep(0.25)
        fig["drain_seconds"] = round(still_since - drained_at, 2)
        fig["udp_rcvbuf_drops_machine"] = udp_rcvbuf_errors() - udp_drops0
        sock = udp_socket_drops(ingest_port(d))
        fig["ingest_socket_drops"] = NA if sock is None else sock
        # Where: before A (sessions connecting, warm-up), A→B (steady), B→C (the stop).
        fig["ingest_socket_drops_by_phase"] = NA if None in (sock, sock_a, sock_b) else {
            "before_A": sock_a, "A_B": sock_b - sock_a, "B_C": sock - sock_b}
        ended = {lb.get("reason"): v for lb, v in c.samples.get("kiroku_whip_sessions_ended_total", [])}
        fig["sessions_ended_before_the_stop"] = {k: v for k, v in ended.items() if k != "deleted"}

        # ---- frames --------------------------------------------------------
        ing = lambda s: s.counter("kiroku_ingest_frames_total")  # noqa: E731
        recd = lambda s: s.counter("kiroku_recorder_frames_total")  # noqa: E731
        drops = lambda s: s.counter("kiroku_ingest_frame_drops_total")  # noqa: E731
        overflow = lambda s: s.counter("kiroku_recorder_clock_events_total", {"event": "overflow"})  # noqa: E731
        stray = lambda s: s.counter("kiroku_recorder_stray_frames_total")  # noqa: E731
        w_ing, w_rec = ing(c) - ing(a), recd(c) - recd(a)
        ab_ing, ab_rec = ing(b) - ing(a), recd(b) - recd(a)
        sent = int(report["video_frames_sent"]) + int(report["audio_frames_sent"])
        fig.update(frames_sent_audio=int(report["audio_frames_sent"]),
                   frames_sent_video=int(report["video_frames_sent"]),
                   frames_ingested_audio=c.counter("kiroku_ingest_frames_total", {"track": "audio"}),
                   frames_ingested_video=c.counter("kiroku_ingest_frames_total", {"track": "main_video"}))
        fig.update(frames_sent=sent, frames_ingested_run=ing(c), frames_recorded_run=recd(c),
                   frames_ingested_window=w_ing, frames_recorded_window=w_rec,
                   ingest_fps=round(ab_ing / wall, 1), recorded_fps=round(ab_rec / wall, 1),
                   nominal_fps=round(n * shape.users * (shape.fps + 50), 1),
                   startup_keyframe_waits=drops(a), stray_frames_window=stray(c) - stray(a),
                   discontinuities_run=c.counter("kiroku_ingest_discontinuities_total"),
                   discontinuities_window=c.counter("kiroku_ingest_discontinuities_total")
                   - a.counter("kiroku_ingest_discontinuities_total"))
        not_recorded = w_ing - w_rec
        net_lost = sent - ing(c)
        ok = not_recorded <= 0 and stray(c) - stray(a) == 0 and net_lost <= 0 and pub_rc == 0
        result.checks.append(Check(
            "frames recorded", ok,
            f"A→C: {fmt_int(w_ing)} ingested, {fmt_int(w_rec)} recorded ({fmt_int(max(0, not_recorded))} not "
            f"recorded), {fmt_int(stray(c) - stray(a))} stray; run: {fmt_int(sent)} sent by the publisher, "
            f"{fmt_int(ing(c))} ingested ({fmt_int(net_lost)} lost on the way; datagrams the kernel dropped on "
            f"the daemon's full UDP socket {fig['ingest_socket_drops_by_phase']}, on the machine "
            f"{fmt_int(fig['udp_rcvbuf_drops_machine'])}; sessions ended by the box "
            f"{fig['sessions_ended_before_the_stop'] or 0}; unrepaired gaps A→C {fig['discontinuities_window']:.0f}; "
            f"datagrams the publisher's own sockets refused {fig.get('publisher_report', {}).get('send_errors', 'n/a')}; "
            f"unroutable at the daemon {c.counter('kiroku_ingest_unroutable_packets_total'):.0f}, malformed "
            f"{c.counter('kiroku_ingest_malformed_packets_total'):.0f}), "
            f"publisher exit {pub_rc}"))

        # ---- drops -------------------------------------------------------------
        w_drops, w_over = drops(c) - drops(a), overflow(c) - overflow(a)
        parts = [f"ingest drops {w_drops:.0f}", f"clock overflow {w_over:.0f}"]
        bad = w_drops + w_over
        if shape.mixed:
            skipped = c.counter("kiroku_mix_events_total", {"event": "tick_skipped"}) - \
                a.counter("kiroku_mix_events_total", {"event": "tick_skipped"})
            dropped = c.counter("kiroku_mix_events_total", {"event": "frame_dropped"}) - \
                a.counter("kiroku_mix_events_total", {"event": "frame_dropped"})
            parts += [f"mix ticks skipped {skipped:.0f}", f"mix frames dropped {dropped:.0f}"]
            bad += skipped + dropped
        result.checks.append(Check("zero drops", bad == 0,
                                   "A→C: " + ", ".join(parts) + f"; before A: {drops(a):.0f} video frames skipped "
                                   "while new subscriptions waited for a key frame"))

        # ---- segments ---------------------------------------------------------
        seg_name = "kiroku_recorder_segment_latency_seconds"
        delta = hist_delta(a, b, seg_name)
        segs = b.counter("kiroku_recorder_segments_total") - a.counter("kiroku_recorder_segments_total")
        fig["segments_window"] = segs
        if delta is None:
            result.checks.append(Check("segments stored ≤ 1 s", None, f"{NA} ({seg_name}); {segs:.0f} segments A→B"))
        else:
            total = delta.get(float("inf"), 0.0)
            within = delta.get(1.0)
            if within is None:
                result.checks.append(Check("segments stored ≤ 1 s", None,
                                           f"{seg_name} has no le=\"1\" bucket: {sorted(delta)}"))
            else:
                p99 = bucket_percentile(delta, 99)
                fig["segment_latency_p99_le_s"] = p99
                result.checks.append(Check(
                    "segments stored ≤ 1 s", total > 0 and within == total,
                    f"A→B: {within:.0f} of {total:.0f} within 1 s, p99 ≤ {p99} s ({segs:.0f} segments counted)"))

        # ---- real time --------------------------------------------------------
        ratio = ab_rec / ab_ing if ab_ing else 0.0
        rt_ok = ratio >= 0.98 and (behind_max is None or behind_max < 1.0)
        behind = f"{NA} (kiroku_task_behind_seconds)" if behind_max is None else f"{behind_max:.3f} s"
        result.checks.append(Check(
            "recorders keep real time", rt_ok,
            f"A→B recorded/ingested {ratio:.4f}; largest task behind {behind}; drain after the publisher "
            f"stopped {fig['drain_seconds']:.1f} s"))
        fig["behind_max_s"] = behind_max if behind_max is not None else NA
        if shape.mixed:
            out_frames = b.counter("kiroku_mix_frames_total") - a.counter("kiroku_mix_frames_total")
            want = n * 15 * wall
            result.checks.append(Check("mixed output frames", out_frames >= 0.98 * want,
                                       f"A→B {fmt_int(out_frames)} of {fmt_int(want)} expected ({n} x 15 fps x "
                                       f"{wall:.1f} s)"))

        # ---- API ----------------------------------------------------------------
        fig["api_throughout"] = api_all
        fig["api_steady"] = api_steady
        fig["api_errors"] = len(api_errors)
        server = hist_delta(a0, b, "kiroku_api_request_duration_seconds", {"action": "DescribeCloudRecording"})
        server_p99 = bucket_percentile(server, 99) if server else None
        fig["api_server_p99_le_ms"] = NA if server_p99 is None else server_p99 * 1e3
        result.checks.append(Check(
            "API p99 < 10 ms",
            api_all["requests"] > 0 and api_all["p99_ms"] < 10 and not api_errors,
            f"Describe at {api_rate:g}/s throughout: p50 {api_all['p50_ms']:.2f} p99 {api_all['p99_ms']:.2f} "
            f"max {api_all['max_ms']:.1f} ms ({api_all['requests']} requests, {len(api_errors)} errors"
            f"{', client late ' + str(api_late) if api_late else ''}); steady window p99 "
            f"{api_steady['p99_ms']:.2f} ms; the daemon's own histogram: p99 <= {fig['api_server_p99_le_ms']} ms"
            + (f"; first error: {api_errors[0]}" if api_errors else "")))
        fig["wall_seconds"] = round(time.monotonic() - t_start, 1)
        return result
    finally:
        if prober is not None:
            prober.stop()
        if pub is not None and pub.poll() is None:
            stop_process(pub, 30)
        if make_daemon is None:
            if d.running:
                d.stop(timeout=60)
            if own_work:
                shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------

def print_result(r: Result, out=print) -> None:
    f = r.figures
    out(f"\nkiroku density: {r.tasks} tasks x {f['users_per_task']} A/V users ({r.shape}, publishers "
        f"{f['video']}), {r.seconds:g} s steady, {f['cpus']} CPUs, {f['binary']}"
        + (f" (publisher {f['publisher_binary']})" if f['publisher_binary'] != f['binary'] else ""))
    for c in r.checks:
        verdict = "n/a " if c.ok is None else ("PASS" if c.ok else "FAIL")
        out(f"  {verdict}  {c.name:<26} {c.detail}")
    out(f"        daemon: CPU {f['daemon_cpu_cores']:.2f} cores ({f['daemon_cpu_cores'] / max(1, f['sessions']) * 100:.3f} "
        f"% of a core per stream; kiroku_process_cpu_seconds_total: {f['daemon_cpu_metric_cores']}), RSS "
        f"{f['daemon_rss_mib']} MiB (max {f['daemon_rss_max_mib']}; kiroku_process_resident_memory_bytes: "
        f"{f['daemon_rss_metric_mib']})")
    out(f"        publisher: CPU {f['publisher_cpu_cores']:.2f} cores for {f['sessions']} sessions; frames/s "
        f"ingested {f['ingest_fps']}, recorded {f['recorded_fps']} (nominal {f['nominal_fps']}); set-up: create "
        f"{f['create_seconds']} s, connect {f['ready_seconds']} s; run {f['wall_seconds']} s")
    out(f"        other work on the machine during the window: {f['other_load_cores']} cores (load average "
        f"{f['loadavg_1m']})")
    cap = f.get("capacity_loaded")
    out("        /v1/capacity: " + (NA if cap is None else json.dumps(
        {k: cap.get(k) for k in ("capacity_units", "admit_units", "used_units", "free_units", "shapes")})))


def summary_line(r: Result, ok: bool) -> str:
    f = r.figures
    verdicts = "".join("-" if c.ok is None else ("P" if c.ok else "F") for c in r.checks)
    return (f"{r.tasks:>6} {'PASS' if ok else 'FAIL':>5} {verdicts:>8} {f.get('daemon_cpu_cores', 0):>8.2f} "
            f"{f.get('daemon_rss_mib', 0):>8.0f} {f.get('publisher_cpu_cores', 0):>8.2f} "
            f"{f.get('api_throughout', {}).get('p99_ms', float('nan')):>8.2f} {f.get('recorded_fps', 0):>10.0f} "
            f"{f.get('other_load_cores', 0):>8.2f}")


# --------------------------------------------------------------------------
# Ramp
# --------------------------------------------------------------------------

def ramp(args, shape: Shape) -> dict:
    steps = args.steps or ([2, 4, 6, 8, 12, 16, 24, 32] if shape.mixed
                           else [25, 50, 100, 150, 200, 300, 400, 600, 800, 1000])
    results: dict[int, Result] = {}

    def verdict(r: Result) -> bool:
        if args.ramp_ignore_api:
            return all(c.ok is not False for c in r.checks if c.name != "API p99 < 10 ms")
        return r.passed

    def step(n: int) -> bool:
        try:
            r = run_once(args.kiroku, n, shape, args.ramp_seconds, warmup=args.warmup, api_rate=args.api_rate,
                         segment_seconds=args.segment_seconds, work=Path(args.keep) if args.keep else None,
                         publisher=args.publisher, daemon_env=args.daemon_env_parsed)
        except RuntimeError as e:  # not ready in time, publisher failed: this size is not sustained
            print(f"\n{n} tasks: FAIL ({e})")
            r = Result(tasks=n, shape=shape.name, seconds=args.ramp_seconds,
                       checks=[Check("set-up", False, str(e))])
        else:
            print_result(r)
        results[n] = r
        return verdict(r)

    last_pass, first_fail = 0, None
    for n in steps:
        if step(n):
            last_pass = n
        else:
            first_fail = n
            break
    if first_fail is not None:
        while first_fail - last_pass > args.resolution:
            mid = (last_pass + first_fail) // 2
            if step(mid):
                last_pass = mid
            else:
                first_fail = mid
    what = " (the API check left out: --ramp-ignore-api)" if args.ramp_ignore_api else ""
    print(f"\nramp ({shape.name}, {args.ramp_seconds:g} s per step): largest sustained N = {last_pass}{what}"
          + ("" if first_fail is not None else f" (every step passed; the last was {steps[-1]})"))
    names = next((", ".join(c.name for c in r.checks) for r in results.values() if r.figures), "")
    print(f"checks, in order (P pass, F fail, - not available in this build): {names}")
    print(f"{'tasks':>6} {'':>5} {'checks':>8} {'cores':>8} {'RSS MiB':>8} {'pub cpu':>8} {'API p99':>8} "
          f"{'rec fps':>10} {'others':>8}")
    for n in sorted(results):
        if results[n].figures:
            print(summary_line(results[n], verdict(results[n])))
        else:
            print(f"{n:>6}  FAIL  {results[n].checks[0].detail[:80]}")
    return {"ramp": True, "shape": shape.name, "largest_sustained": last_pass, "first_failure": first_fail,
            "api_check_ignored": bool(args.ramp_ignore_api),
            "steps": {n: r.to_json() for n, r in sorted(results.items())}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiroku", default=str(REPO / "target" / "release" / "kiroku"))
    ap.add_argument("--tasks", type=int, default=100, help="N for one run (default 100; mixed: 4)")
    ap.add_argument("--seconds", type=float, default=60, help="steady-state seconds of one run")
    ap.add_argument("--ramp", action="store_true", help="find the largest N this box sustains")
    ap.add_argument("--ramp-seconds", type=float, default=20, help="steady seconds per ramp step")
    ap.add_argument("--steps", type=int, nargs="+", help="ramp sizes before the bisection")
    ap.add_argument("--resolution", type=int, help="stop bisecting at this many tasks (default 10; mixed 1)")
    ap.add_argument("--ramp-ignore-api", action="store_true",
                    help="judge ramp steps on the recording checks only (a shared machine whose other work makes "
                         "client-side API timings meaningless); said in the output")
    ap.add_argument("--daemon-env", action="append", default=[], metavar="KEY=VALUE",
                    help="set in the daemon's environment only (repeatable), e.g. an allocator tunable")
    ap.add_argument("--mixed", action="store_true", help="mixed tasks 4x360p -> 720p15 instead")
    ap.add_argument("--warmup", type=float, default=8.0)
    ap.add_argument("--api-rate", type=float, default=20.0, help="Describe requests per second")
    ap.add_argument("--segment-seconds", type=float, default=10.0)
    ap.add_argument("--width", type=int)
    ap.add_argument("--height", type=int)
    ap.add_argument("--fps", type=int)
    ap.add_argument("--bitrate", type=int)
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (daemon logs, data, publisher log)")
    ap.add_argument("--publisher", metavar="PATH",
                    help="the kiroku binary whose `publish` makes the load (default: --kiroku; it needs --rooms)")
    args = ap.parse_args()
    if not Path(args.kiroku).exists():
        ap.error(f"{args.kiroku} does not exist")
    shape = MIXED if args.mixed else SINGLE
    shape = Shape(shape.name, shape.users, args.width or shape.width, args.height or shape.height,
                  args.fps or shape.fps, args.bitrate or shape.bitrate, shape.mixed)
    if args.resolution is None:
        args.resolution = 1 if shape.mixed else 10
    args.daemon_env_parsed = {}
    for setting in args.daemon_env:
        key, sep, value = setting.partition("=")
        if not sep or not key:
            ap.error(f"--daemon-env wants KEY=VALUE, got {setting!r}")
        args.daemon_env_parsed[key] = value
    if args.ramp:
        out = ramp(args, shape)
        print(json.dumps(out, default=str))
        return 0
    n = args.tasks if not (args.mixed and args.tasks == 100) else 4
    try:
        r = run_once(args.kiroku, n, shape, args.seconds, warmup=args.warmup, api_rate=args.api_rate,
                     segment_seconds=args.segment_seconds, work=Path(args.keep) if args.keep else None,
                     publisher=args.publisher, daemon_env=args.daemon_env_parsed)
    except RuntimeError as e:
        print(f"\n{n} tasks: FAIL ({e})")
        print(json.dumps({"tasks": n, "shape": shape.name, "pass": False, "error": str(e)}))
        return 1
    print_result(r)
    print(json.dumps(r.to_json(), default=str))
    return 0 if r.passed else 1


if __name__ == "__main__":
    sys.exit(main())
