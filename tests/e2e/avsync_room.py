"""The A/V sync scenario of tests/e2e/test_av_sync.py and bench/av_sync_bench.py.

Two independent publishers (aiortc, `pattern="sync"`: a flash of the user's
colour and a beep of the user's tone at the same media instants) join one
room and start their media at the same wall instant (`start_at`). Two tasks
record the room at once: single-stream with AvMerge (each user's audio and
video in one HLS stream) and mixed (nine-grid, the two users side by side).
`kiroku merge` then turns the single-stream folder into one MP4 per user.

`measure` finds every flash and beep in every output (avsync.py) and gives:
- within a user: beep − flash (ms), per output kind and user;
- between users: user B's flash − user A's flash (ms) on the wall clock (the
  playlists' #EXT-X-TRTC-START-REC-TIME, the MP4s' start_ms, the mixed
  picture itself), less what the publishers' own origins differ by;
- placement: flash − sent and beep − sent (ms), the wall time a mark has in
  a file against the wall time the publisher made it (diagnostic: which side
  a within-user offset comes from);
- the rate of each file's timeline against the publisher's (the beeps
  found against the marks sent), and each file's duration against the wall
  time it covers;
- the sender side (diagnostic): how far each RTCP sender report the
  publishers sent is from the truth (aiortc stamps a report with the time
  its last packet left, which a starved event loop makes late), since a
  receiver maps RTP time to wall time by them.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np

import avsync
import kiroku_e2e
from avsync import Stats
from independent_publisher import Publisher, SyncClip, whip_url
from kiroku_e2e import APP_ID, create_params, wait_until
from recording import encode_id, parse_playlist, single_base, task_files

# name → (flash colour, tone Hz). Bright colours far apart in chroma (the
# mixed tiles are told apart by it); tones 800 Hz apart (a multiple of the
# 200 Hz between the beep detector's spectral nulls).
USERS = {
    "sync_yellow": ((240, 240, 40), 600.0),
    "sync_cyan": ((40, 240, 240), 1400.0),
}
PW, PH = 320, 240
MIX_W, MIX_H = 640, 360
# Nine-grid with two users: W/2 × H each, side by side in join order; the
# middle of each tile (which user is where is told by the flash colour).
TILES: dict[str, avsync.Rect] = {"left": (0.1, 0.2, 0.4, 0.8), "right": (0.6, 0.2, 0.9, 0.8)}
KINDS = ("single HLS (AvMerge)", "merge MP4", "mixed HLS")

RECORDING_CONFIG = {"segment_seconds": 4, "compositor": "cpu", "mix_latency_ms": 1500}


@dataclass
class Sent:
    """What one publisher sent: its media origin, its marks (Unix s) and its
    wall-clock publishing span."""
    user: str
    origin: float
    marks: np.ndarray
    started_at: float
    stopped_at: float
    frames: int
    audio_frames: int
    keyframe_requests: int
    # kind → (media s, ms) of each RTCP sender report: its wall time less
    # when its media instant was due (Publisher.sender_report_errors).
    sender_reports: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)

    @property
    def published(self) -> float:
        return self.stopped_at - self.started_at


@dataclass
class Output:
    """One recorded file: which users it holds, and how its presentation
    time maps to Unix time (unix = t + `to_unix`)."""
    kind: str
    path: Path
    users: list[str]
    to_unix: float
    duration: float  # s: the playlist's EXTINF sum, the MP4's or mixed file's duration
    wall: float  # s: the wall time the file should cover


@dataclass
class SyncRecording:
    sent: dict[str, Sent]
    outputs: list[Output]
    single_task: str
    mixed_task: str
    merge_report: dict

    def save(self, path: Path) -> None:
        """Writes what `measure` needs as JSON (to measure a kept run again: `load`)."""
        d = asdict(self)
        for s in d["sent"].values():
            s["marks"] = [float(x) for x in s["marks"]]
        for o in d["outputs"]:
            o["path"] = str(o["path"])
        path.write_text(json.dumps(d, indent=1))

    @classmethod
    def load(cls, path: Path) -> "SyncRecording":
        d = json.loads(path.read_text())
        sent = {u: Sent(**{**s, "marks": np.asarray(s["marks"])}) for u, s in d["sent"].items()}
        outputs = [Output(**{**o, "path": Path(o["path"])}) for o in d["outputs"]]
        return cls(sent, outputs, d["single_task"], d["mixed_task"], d["merge_report"])


# --------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------

def _start_together(d, room: int, fps: int, clip: SyncClip, lead: float) -> dict[str, Publisher]:
    """Connects one publisher per user in parallel; their media starts at the
    same wall instant, `lead` s from now."""
    start_at = time.time() + lead
    pubs = {name: Publisher(whip_url(d.url, APP_ID, room, name), color=rgb, tone_hz=tone, width=PW, height=PH,
                            fps=fps, pattern="sync", sync=clip, start_at=start_at, keyframe_interval=2.0)
            for name, (rgb, tone) in USERS.items()}
    errors: list[BaseException] = []

    def connect(p: Publisher) -> None:
        try:
            p.start(timeout=15)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=connect, args=(p,)) for p in pubs.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    if errors or time.time() >= start_at:
        for p in pubs.values():
            p.stop()
        if errors:
            raise errors[0]
        raise AssertionError(f"the publishers took over {lead} s to connect; raise the lead")
    return pubs


def _stop_together(pubs: dict[str, Publisher]) -> None:
    threads = [threading.Thread(target=p.stop) for p in pubs.values()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)


def _publish_until(pubs: dict[str, Publisher], end: float, stall: tuple[float, float] | None, progress) -> None:
    """Waits until `end` (Unix s), stalling the publishers as `stall` says
    and calling `progress(done s, total s)` every 10 s."""
    now = time.time()
    total, shown = end - now, now
    stalls: list[tuple[float, Publisher]] = []
    if stall:
        length, every = stall
        stalls = sorted(((now + every * (k + (i + 1) / 2), p) for i, p in enumerate(pubs.values())
                         for k in range(int(total / every))), key=lambda x: x[0])
    while (left := end - time.time()) > 0:
        if stalls and stalls[0][0] <= time.time():
            stalls.pop(0)[1].stall(length)
            continue
        time.sleep(max(0.0, min(left, 10, stalls[0][0] - time.time() if stalls else left)))
        if progress and time.time() - shown >= 10:
            shown = time.time()
            progress(total - max(0.0, end - shown), total)


def _create_tasks(api, room: int, mix_fps: int) -> tuple[str, str]:
    single = api.create(create_params(room=str(room), RecordParams={
        "RecordMode": 1, "MaxIdleTime": 60, "StreamType": 0, "AvMerge": 1}))
    mixed = create_params(room=str(room), mode=2, max_idle=60)
    mixed["MixTranscodeParams"] = {
        "VideoParams": {"Width": MIX_W, "Height": MIX_H, "Fps": mix_fps, "BitRate": 800_000, "Gop": 2},
        "AudioParams": {"SampleRate": 1, "Channel": 2, "BitRate": 64000},
    }
    mixed["MixLayoutParams"] = {"MixLayoutMode": 3}
    return single, api.create(mixed)


def record_room(d, receiver, room: int, seconds: float, *, fps: int = 30, mix_fps: int = 15,
                clip: SyncClip = SyncClip(), lead: float = 3.0, stall: tuple[float, float] | None = None,
                progress=None) -> SyncRecording:
    """Runs the scenario on daemon `d` (callbacks to `receiver`): both tasks,
    both publishers for `seconds` of media, then Delete, callback 305, and
    `kiroku merge` of the single-stream folder. `stall` = (seconds, every
    seconds): each publisher's event loop is blocked that long that often
    (a starved sender), the two users' stalls half a period apart."""
    api = d.sdk()
    single_task, mixed_task = _create_tasks(api, room, mix_fps)
    pubs = _start_together(d, room, fps, clip, lead)
    try:
        origin = next(iter(pubs.values())).start_at
        wait_until(lambda: time.time() > origin + 1 and all(
            api.describe(t)["Status"] == "InProgress" for t in (single_task, mixed_task)),
            lead + 15, 0.2, "both tasks recording")
        _publish_until(pubs, origin + seconds, stall, progress)
    finally:
        _stop_together(pubs)
    for name, p in pubs.items():
        assert p.delete_status == 200 and "failed" not in p.states, (name, p.delete_status, p.states)
    api.delete(single_task)
    api.delete(mixed_task)
    deleted_at = time.time()
    receiver.wait_event(single_task, 305, 60)
    receiver.wait_event(mixed_task, 305, 60)

    sent = {name: Sent(name, p.media_origin, p.media_origin + np.asarray(p.sync_marks()), p.started_at,
                       p.stopped_at, p.frames_sent, p.audio_frames_sent, p.keyframe_requests,
                       {k: tuple(x.tolist() for x in p.sender_report_errors(k)) for k in ("audio", "video")})
            for name, p in pubs.items()}
    assert len({round(s.origin, 6) for s in sent.values()}) == 1, "the publishers did not share start_at"
    folder = task_files(d, single_task)
    outputs = [_single_output(folder, room, name, sent[name]) for name in USERS]
    report = _merge(folder)
    outputs += [_merge_output(folder, o, sent) for o in report["outputs"]]
    outputs.append(_mixed_output(task_files(d, mixed_task), room, min(s.started_at for s in sent.values()),
                                 deleted_at))
    return SyncRecording(sent, outputs, single_task, mixed_task, report)


def _start_time(path: Path) -> float:
    with av.open(str(path)) as c:
        return c.start_time / av.time_base


def _single_output(folder: Path, room: int, user: str, sent: Sent) -> Output:
    playlist = folder / f"{single_base(room, user, 'main', 'av')}.m3u8"
    pl = parse_playlist(playlist)
    assert pl.ended, pl.text
    return Output(KINDS[0], playlist, [user], pl.start_rec_time / 1000 - _start_time(playlist), pl.total,
                  sent.published)


def _merge(folder: Path) -> dict:
    r = subprocess.run([kiroku_e2e.KIROKU_BIN, "merge", "-f", str(folder), "--json"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, f"kiroku merge exited with {r.returncode}\n{r.stderr}"
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert not report["failed"], report
    return report


def _merge_output(folder: Path, o: dict, sent: dict[str, Sent]) -> Output:
    user = next(u for u in USERS if encode_id(u) == encode_id(o["user_id"]))
    assert o["video"], o
    path = folder / o["file"]
    # The MP4's time 0 is its first segment's UTC (docs/merge.md).
    return Output(KINDS[1], path, [user], o["start_ms"] / 1000 - _start_time(path), o["duration_ms"] / 1000,
                  sent[user].published)


def _mixed_output(folder: Path, room: int, first_media: float, deleted_at: float) -> Output:
    playlist = folder / f"{APP_ID}_{room}.m3u8"
    pl = parse_playlist(playlist)
    assert pl.ended and pl.video_size == (MIX_W, MIX_H), pl.text
    # The mixed output runs from the first media to the Delete (docs/mixing.md).
    return Output(KINDS[2], playlist, list(USERS), pl.start_rec_time / 1000 - _start_time(playlist), pl.total,
                  deleted_at - first_media)


# --------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------

@dataclass
class Marks:
    """One user's flashes and beeps found in one output, in Unix s."""
    kind: str
    user: str
    flashes: np.ndarray
    beeps: np.ndarray


def find_marks(out: Output) -> list[Marks]:
    """Every user's flashes and beeps in one output file."""
    mixed = len(out.users) > 1
    video = avsync.decode_video(out.path, TILES if mixed else avsync.WHOLE)
    audio = avsync.decode_audio(out.path)
    found = []
    for region in video.luma:
        flashes = avsync.flash_onsets(video.times, video.luma[region])
        if mixed:
            user = avsync.whose_flash(avsync.flash_chroma(video, region), {u: USERS[u][0] for u in out.users})
        else:
            user = out.users[0]
        beeps = avsync.beep_onsets(audio, USERS[user][1])
        found.append(Marks(out.kind, user, flashes + out.to_unix, beeps + out.to_unix))
    if mixed:
        assert sorted(m.user for m in found) == sorted(out.users), ("tiles not told apart", found)
    return found


@dataclass
class Report:
    """Every figure of one run (see the module docstring)."""
    within: list[tuple[str, str, Stats]] = field(default_factory=list)  # (kind, user, beep − flash)
    between: list[tuple[str, Stats]] = field(default_factory=list)  # (kind, B − A flash, less origins)
    placement: list[tuple[str, str, Stats, Stats]] = field(default_factory=list)  # (kind, user, video, audio)
    coverage: list[tuple[str, str, int, int, int]] = field(default_factory=list)  # (kind, user, sent, flashes, beeps)
    rates: list[tuple[str, str, float]] = field(default_factory=list)  # (kind, user, rate error)
    # (user, video, audio): the sender reports' wall time − when their media instant was due
    reports: list[tuple[str, Stats, Stats]] = field(default_factory=list)
    durations: list[tuple[str, str, float, float]] = field(default_factory=list)  # (kind, who, file s, wall s)

    def table(self) -> str:
        h = avsync.STATS_HEADER
        lines = [f"A/V offset within a user (beep - flash, ms):\n  {'output':22} {'user':12} {h}"]
        lines += [f"  {k:22} {u:12} {s.row()}" for k, u, s in self.within]
        lines.append(f"between users ({' - '.join(reversed(list(USERS)))} flash, ms, less the sent difference):\n"
                     f"  {'output':35} {h}")
        lines += [f"  {k:35} {s.row()}" for k, s in self.between]
        lines.append(f"placement (mark's wall time in the file - when it was sent, ms):\n"
                     f"  {'output':22} {'user':12} {'video ' + h:50} audio {h}")
        lines += [f"  {k:22} {u:12} {'':6}{v.row():44} {'':6}{a.row()}" for k, u, v, a in self.placement]
        lines.append("marks (sent / flashes found / beeps found), and the file's rate against the publisher's "
                     "(beeps found against marks sent):")
        rates = {(k, u): r for k, u, r in self.rates}
        lines += [f"  {k:22} {u:12} {s:5d} {f:5d} {b:5d}   rate {rates[(k, u)] * 1e6:+9.1f} ppm"
                  for k, u, s, f, b in self.coverage]
        lines.append(f"the publishers' RTCP sender reports (wall time - when their RTP time's media instant "
                     f"was due, ms):\n  {'user':35} {'video ' + h:50} audio {h}")
        lines += [f"  {u:35} {'':6}{v.row():44} {'':6}{a.row()}" for u, v, a in self.reports]
        lines.append("duration (file vs wall clock):")
        lines += [f"  {k:22} {w:12} {d:10.3f} s {wall:10.3f} s  {d - wall:+7.3f} s  {(d - wall) / wall * 100:+7.3f} %"
                  for k, w, d, wall in self.durations]
        return "\n".join(lines)


def _rel(t: np.ndarray) -> np.ndarray:
    """Times from the first (drift is fitted against them)."""
    return t - t[0] if len(t) else t


def _measure_user(rep: Report, m: Marks, sent: Sent) -> None:
    """One user's figures in one output."""
    t, off = avsync.av_offsets(m.flashes, m.beeps)
    rep.within.append((m.kind, m.user, Stats.of(_rel(t), off)))
    ft, fo = avsync.pair(sent.marks, m.flashes)
    bt, bo = avsync.pair(sent.marks, m.beeps)
    rep.placement.append((m.kind, m.user, Stats.of(ft - sent.origin, fo * 1000),
                          Stats.of(bt - sent.origin, bo * 1000)))
    rep.coverage.append((m.kind, m.user, len(sent.marks), len(m.flashes), len(m.beeps)))
    # Beeps, not flashes: a flash is only ever seen at a frame time.
    found, marks = avsync.align_to_marks(m.beeps, sent.marks)
    rep.rates.append((m.kind, m.user, avsync.rate_error(found, marks)))


def measure(rec: SyncRecording) -> Report:
    """Finds the marks in every output and computes every figure (module docstring)."""
    rep = Report()
    by_kind: dict[str, dict[str, Marks]] = {}
    for out in rec.outputs:
        for m in find_marks(out):
            by_kind.setdefault(m.kind, {})[m.user] = m
            _measure_user(rep, m, rec.sent[m.user])
        rep.durations.append((out.kind, out.users[0] if len(out.users) == 1 else "room", out.duration, out.wall))
    for user, sent in rec.sent.items():
        rows = {k: Stats.of(np.asarray(t), np.asarray(e)) for k, (t, e) in sent.sender_reports.items()}
        if rows:
            rep.reports.append((user, rows["video"], rows["audio"]))
    a, b = list(USERS)
    for kind, users in by_kind.items():
        expected = rec.sent[b].origin - rec.sent[a].origin
        t, off = avsync.pair(users[a].flashes, users[b].flashes)
        rep.between.append((kind, Stats.of(_rel(t), (off - expected) * 1000)))
    return rep
