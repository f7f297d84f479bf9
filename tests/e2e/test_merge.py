"""`kiroku merge` (spec §8) on a real single-stream recording.

One recording is made for the whole module (a daemon, one RecordMode 1
task, three publishers at once) and every test merges its own copy of the
task's folder, since the tool writes its outputs into the folder it reads.
The publishers are independent of kiroku (aiortc over WHIP,
tests/e2e/independent_publisher.py), all 640x360:

- amy publishes 6 s, leaves for 18 s (more than the 15 s that separates
  sections), publishes 6 s, leaves for 4 s (less: the same section),
  publishes 4 s → two sections, about 6 s and 14 s long;
- ben publishes audio only → an .m4a;
- cat publishes main (solid red, with audio) and aux (solid green, video
  only) → aux is told from main by colour.

amy publishes at 12 fps, not the 15 fps the tool encodes at by default,
so that ffprobe tells a remux from a re-encode.

What each test expects is derived from the recording's own segment names
(UTC17 start) and playlist durations, not from the publishing schedule:
process start-up and leave detection move the real boundaries by a second
or so. What was recorded is also judged against what each publisher says
it published (its wall clock, measured against ffprobe)."""

from __future__ import annotations

import calendar
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kiroku_e2e import APP_ID, KIROKU_BIN, CallbackReceiver, create_params
from recording import encode_id, ffprobe, first_pts, parse_playlist, segments_seconds, task_files

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
from independent_publisher import Publisher, whip_url  # noqa: E402

ROOM = 5301
SECTION_GAP_S = 15.0
AMY_FPS = 12
DEFAULT_FPS = 15
SIZE = (640, 360)
# What the publishers send (RGB). amy: kiroku publish's old default blue
# (its luma, about 90, tells her picture from the merge's black fill).
AMY_COLOR = (0x20, 0x60, 0xc0)
CAT_MAIN_COLOR = (0xc0, 0x20, 0x20)
CAT_AUX_COLOR = (0x20, 0xa0, 0x40)

SEGMENT_RE = re.compile(
    r"(?:ha(?P<ha>[1-3])_)?(?P<app>\d+)_(?P<room>[^_]+)__UserId_s_(?P<user>.+?)__UserId_e_"
    r"(?P<media>main|aux)_(?P<kind>audio|video)_(?P<utc>\d{17})\.ts")


# --------------------------------------------------------------------------
# The recording's structure, as the merge tool has to read it
# --------------------------------------------------------------------------

def utc17_ms(utc: str) -> int:
    """`YYYYMMDDhhmmssSSS` (UTC) → Unix ms."""
    return calendar.timegm(time.strptime(utc[:14], "%Y%m%d%H%M%S")) * 1000 + int(utc[14:])


@dataclass(frozen=True)
class Segment:
    name: str
    user: str  # encoded, as in the file name
    media: str  # main | aux
    kind: str  # audio | video
    start_ms: int
    duration_ms: int

    @property
    def end_ms(self) -> int:
        return self.start_ms + self.duration_ms


@dataclass
class Section:
    segments: list[Segment] = field(default_factory=list)

    @property
    def start_ms(self) -> int:
        return min(s.start_ms for s in self.segments)

    @property
    def end_ms(self) -> int:
        return max(s.end_ms for s in self.segments)

    @property
    def seconds(self) -> float:
        return (self.end_ms - self.start_ms) / 1000

    def first(self, media: str, kind: str) -> Segment | None:
        return min((s for s in self.segments if (s.media, s.kind) == (media, kind)),
                   key=lambda s: s.start_ms, default=None)


def read_segments(folder: Path) -> list[Segment]:
    """Every segment in `folder`, timed by its name (start) and the EXTINF of
    the playlist that lists it (duration)."""
    durations = {}
    for pl_path in folder.glob("*.m3u8"):
        for dur, name, _ in parse_playlist(pl_path).segments:
            durations[name] = dur
    out = []
    for p in sorted(folder.glob("*.ts")):
        m = SEGMENT_RE.fullmatch(p.name)
        assert m, f"unexpected segment name {p.name}"
        assert p.name in durations, f"{p.name} is in no playlist"
        out.append(Segment(p.name, m["user"], m["media"], m["kind"], utc17_ms(m["utc"]),
                           round(durations[p.name] * 1000)))
    return out


def video_media(segments: list[Segment], user: str, a: int) -> str | None:
    """Which video -a picks for a user: 0 main, 1 main if any else aux, 2 aux."""
    have = {s.media for s in segments if s.user == user and s.kind == "video"}
    want = {0: "main", 1: "main" if "main" in have else "aux", 2: "aux"}[a]
    return want if want in have else None


def sections(segments: list[Segment], user: str, a: int = 0) -> list[Section]:
    """A user's sections: a new one starts where a segment starts more than
    15 s after everything before it ended. Only the merged streams count."""
    media = video_media(segments, user, a)
    mine = sorted((s for s in segments if s.user == user and (s.kind == "audio" or s.media == media)),
                  key=lambda s: s.start_ms)
    out: list[Section] = []
    for s in mine:
        if not out or s.start_ms - out[-1].end_ms > SECTION_GAP_S * 1000:
            out.append(Section())
        out[-1].segments.append(s)
    return out


def output_name(user: str, start_ms: int, video: bool) -> str:
    return f"{user}_{start_ms}_av.mp4" if video else f"{user}_{start_ms}.m4a"


# --------------------------------------------------------------------------
# Running the tool and looking at what it wrote
# --------------------------------------------------------------------------

@dataclass
class MergeRun:
    folder: Path
    rc: int
    stdout: str
    stderr: str
    before: set[str]

    @property
    def report(self) -> dict:
        assert self.rc == 0, f"kiroku merge exited with {self.rc}\n{self.stderr}"
        return json.loads(self.stdout.strip().splitlines()[-1])

    @property
    def outputs(self) -> dict[str, dict]:
        return {o["file"]: o for o in self.report["outputs"]}

    @property
    def new_files(self) -> set[str]:
        return {p.name for p in self.folder.iterdir()} - self.before


def run_merge(folder: Path, *args: str, json_report: bool = True, timeout: float = 300) -> MergeRun:
    before = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    cmd = [KIROKU_BIN, "merge", "-f", str(folder), *args] + (["--json"] if json_report else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return MergeRun(folder, r.returncode, r.stdout, r.stderr, before)


def merged(run: MergeRun) -> MergeRun:
    """Checks what every successful run must show: the report names exactly the
    files written, one stdout line per file, a well-formed entry per file."""
    outputs = run.outputs
    assert set(outputs) == run.new_files, (sorted(outputs), sorted(run.new_files))
    lines = run.stdout.strip().splitlines()[:-1]
    for name, o in outputs.items():
        assert set(o) >= {"file", "user_id", "start_ms", "duration_ms", "video", "method"}, o
        assert o["method"] in ("remux", "re-encode"), o
        assert name.endswith("_av.mp4") if o["video"] else name.endswith(".m4a"), o
        assert name.startswith(f"{encode_id(o['user_id'])}_{o['start_ms']}"), o
        line = next((ln.split() for ln in lines if ln.split()[:1] == [name]), None)
        assert line, f"no stdout line for {name}: {lines}"
        assert abs(float(line[1]) - o["duration_ms"] / 1000) < 0.05 and line[2] == o["method"], (line, o)
    assert isinstance(run.report["warnings"], list)
    return run


def streams(path: Path) -> dict[str, dict]:
    return {s["codec_type"]: s for s in ffprobe(path)["streams"]}


def duration_s(path: Path) -> float:
    return float(ffprobe(path)["format"]["duration"])


def fps(path: Path) -> float:
    """The video's frame rate from its frame spacing: avg_frame_rate counts
    the pause inside a section (a remux keeps it as a hole) as no frames."""
    r = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time",
                        "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    pts = sorted(float(x.strip(",")) for x in r.stdout.split() if x.strip(",") not in ("", "N/A"))
    steps = sorted(b - a for a, b in zip(pts, pts[1:]))
    assert steps, f"{path.name}: fewer than two video frames"
    return 1 / steps[len(steps) // 2]


def decodes(path: Path) -> None:
    # `-enc_time_base:v -1` keeps the file's own timestamps: otherwise ffmpeg
    # re-times video to a frame rate it guesses, and a recording's small RTP
    # jitter (7499/7501-tick frames) then reads as "non monotonically
    # increasing dts" complaints of the null muxer, not decoding errors.
    r = subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-enc_time_base:v", "-1",
                        "-f", "null", "-"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and not r.stderr.strip(), f"{path.name}: {r.stderr[-2000:]}"


def av_start_offset(path: Path) -> float:
    """Audio start minus video start (s), as a player sees them."""
    s = streams(path)
    return float(s["audio"].get("start_time", 0)) - float(s["video"].get("start_time", 0))


def frame_stats(path: Path, at: float | None = None, seconds: float | None = None) -> dict[str, float]:
    """signalstats averaged over the frames of `path` (from `at`, for `seconds`)."""
    cmd = ["ffmpeg", "-v", "error"]
    if at is not None:
        cmd += ["-ss", f"{at:.3f}"]
    cmd += ["-i", str(path)]
    if seconds is not None:
        cmd += ["-t", f"{seconds:.3f}"]
    cmd += ["-map", "0:v:0", "-vf", "signalstats,metadata=print:file=-", "-f", "null", "-"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    sums: dict[str, list[float]] = {}
    for k, v in re.findall(r"lavfi\.signalstats\.(YAVG|UAVG|VAVG)=([0-9.]+)", r.stdout):
        sums.setdefault(k, []).append(float(v))
    assert sums, f"no frames decoded from {path.name} at {at}"
    return {k: sum(v) / len(v) for k, v in sums.items()}


def max_volume_db(path: Path, at: float, seconds: float) -> float:
    r = subprocess.run(["ffmpeg", "-v", "info", "-nostats", "-ss", f"{at:.3f}", "-i", str(path), "-t",
                        f"{seconds:.3f}", "-map", "0:a:0", "-af", "volumedetect", "-f", "null", "-"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    m = re.search(r"max_volume: (-?[0-9.]+|-inf) dB", r.stderr)
    assert m, r.stderr[-2000:]
    return float("-inf") if m[1] == "-inf" else float(m[1])


def yuv601(rgb: tuple[int, int, int]) -> dict[str, float]:
    """An RGB colour in BT.601 limited-range YUV (signalstats' YAVG/UAVG/VAVG)."""
    r, g, b = rgb
    return {"YAVG": 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255,
            "UAVG": 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255,
            "VAVG": 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255}


def concat_playlist(folder: Path, segs: list[Segment], out: Path) -> Path:
    """An ffmpeg concat list of some source segments (to look at the source
    picture of one stream)."""
    out.write_text("".join(f"file '{folder / s.name}'\n" for s in sorted(segs, key=lambda s: s.start_ms)))
    return out


def source_stats(rec: "Recording", user: str, media: str, tmp: Path) -> dict[str, float]:
    segs = [s for s in rec.segments if s.user == user and s.media == media and s.kind == "video"]
    lst = concat_playlist(rec.folder, segs, tmp / f"{user}_{media}.txt")
    r = subprocess.run(["ffmpeg", "-v", "error", "-f", "concat", "-safe", "0", "-i", str(lst), "-c", "copy",
                        str(tmp / f"{user}_{media}.ts"), "-y"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return frame_stats(tmp / f"{user}_{media}.ts")


# --------------------------------------------------------------------------
# The recording
# --------------------------------------------------------------------------

@dataclass
class Recording:
    folder: Path
    task_id: str
    segments: list[Segment]
    # name → the user's publications (stopped Publishers), in order; cat's
    # are main (audio + video) then aux (video).
    publications: dict[str, list[Publisher]]
    users: dict[str, str]  # name → encoded id

    def sections(self, name: str, a: int = 0) -> list[Section]:
        return sections(self.segments, self.users[name], a)

    def copy(self, tmp_path_factory, name: str) -> Path:
        dst = tmp_path_factory.mktemp(name) / "rec"
        shutil.copytree(self.folder, dst)
        return dst


@pytest.fixture(scope="module")
def recording(kiroku_module) -> Recording:
    receiver = CallbackReceiver().start()
    started: list[Publisher] = []

    def start(user: str, **kw) -> Publisher:
        kw = {"width": SIZE[0], "height": SIZE[1], "fps": DEFAULT_FPS, "keyframe_interval": 2.0, **kw}
        pub = Publisher(whip_url(d.url, APP_ID, ROOM, user), **kw)
        started.append(pub)
        return pub.start(timeout=10)

    def stop(pub: Publisher, seconds: float) -> None:
        """Stops `pub` `seconds` after its first frame (DELETE)."""
        time.sleep(max(0.0, pub.started_at + seconds - time.time()))
        pub.stop()
        assert pub.delete_status == 200 and "failed" not in pub.states, (pub, pub.delete_status)

    try:
        d = kiroku_module("merge", callback_url=receiver.url, recording={"segment_seconds": 2})
        api = d.sdk()
        task_id = api.create(create_params(room=str(ROOM), max_idle=60))
        ben = start("ben", video=False, tone_hz=550)
        cat = start("cat", color=CAT_MAIN_COLOR, tone_hz=660)
        cat_aux = start("cat", aux=True, audio=False, color=CAT_AUX_COLOR)
        # amy: a key frame every second (12 frames).
        amy_kw = {"fps": AMY_FPS, "keyframe_interval": 1.0, "color": AMY_COLOR, "tone_hz": 440}
        amy = [start("amy", **amy_kw)]
        stop(amy[-1], 6)
        for p in (ben, cat, cat_aux):  # 8 s each, over before amy's pause ends
            stop(p, 8)
        time.sleep(max(0.0, amy[-1].stopped_at + 18 - time.time()))
        amy.append(start("amy", **amy_kw))
        stop(amy[-1], 6)
        time.sleep(4)
        amy.append(start("amy", **amy_kw))
        stop(amy[-1], 4)
        api.delete(task_id)
        stop_cb = receiver.wait_event(task_id, 305, 60)
        assert stop_cb.payload == {"Status": 0}, stop_cb.payload
    finally:
        for p in started:
            p.stop()
        receiver.stop()
    receiver.assert_no_bad_bodies()
    folder = task_files(d, task_id)
    return Recording(folder, task_id, read_segments(folder), {"amy": amy, "ben": [ben], "cat": [cat, cat_aux]},
                     {u: encode_id(u) for u in ("amy", "ben", "cat")})


@pytest.fixture(scope="module")
def m0(recording, tmp_path_factory) -> MergeRun:
    return merged(run_merge(recording.copy(tmp_path_factory, "m0")))


@pytest.fixture(scope="module")
def m1_fill(recording, tmp_path_factory) -> MergeRun:
    return merged(run_merge(recording.copy(tmp_path_factory, "m1"), "-m", "1"))


@pytest.fixture(scope="module")
def m1_skip(recording, tmp_path_factory) -> MergeRun:
    return merged(run_merge(recording.copy(tmp_path_factory, "m1s"), "-m", "1", "-s"))


def expected_per_section(rec: Recording, a: int = 0) -> dict[str, tuple[str, Section]]:
    """-m 0: output name → (user name, section)."""
    out = {}
    for name, enc in rec.users.items():
        video = video_media(rec.segments, enc, a) is not None
        for sec in rec.sections(name, a):
            out[output_name(enc, sec.start_ms, video)] = (name, sec)
    return out


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------

def test_the_recording_has_the_sections_the_merge_tests_rely_on(recording):
    rec = recording
    by_stream = {(s.user, s.media, s.kind) for s in rec.segments}
    amy, ben, cat = (rec.users[u] for u in ("amy", "ben", "cat"))
    assert by_stream == {(amy, "main", "audio"), (amy, "main", "video"), (ben, "main", "audio"),
                         (cat, "main", "audio"), (cat, "main", "video"), (cat, "aux", "video")}, by_stream
    assert {p.name for p in rec.folder.glob("*.m3u8")} == {
        f"{APP_ID}_{ROOM}__UserId_s_{u}__UserId_e_{m}_{k}.m3u8" for u, m, k in by_stream}
    secs = rec.sections("amy")
    assert len(secs) == 2, [(s.start_ms, s.end_ms) for s in secs]
    # 6 s; then 6 + 4 (plus a publisher's start-up) + 4.
    assert abs(secs[0].seconds - 6) < 1.5, secs[0].seconds
    assert abs(secs[1].seconds - 14.5) < 2, secs[1].seconds
    assert 17 < (secs[1].start_ms - secs[0].end_ms) / 1000 < 23
    # The 4 s pause is inside section 2: a hole of about 4-6 s between segments.
    video = sorted((s for s in secs[1].segments if s.kind == "video"), key=lambda s: s.start_ms)
    holes = [(b.start_ms - a.end_ms) / 1000 for a, b in zip(video, video[1:])]
    assert max(holes) > 3.5 and max(holes) < SECTION_GAP_S, holes
    for name in ("ben", "cat"):
        (sec,) = rec.sections(name)
        assert abs(sec.seconds - 8) < 1.5, (name, sec.seconds)
    assert len(rec.sections("cat", a=2)) == 1


def test_each_publication_is_recorded_whole(recording):
    """Each publication's recorded streams (their segments' durations, by
    ffprobe) last as long as the publisher says it published (its wall
    clock from its first frame to its stop)."""
    rec = recording
    amy, ben, cat = (rec.publications[u] for u in ("amy", "ben", "cat"))
    cases = [(pub, "amy", "main", kind) for pub in amy for kind in ("audio", "video")]
    cases += [(ben[0], "ben", "main", "audio"), (cat[0], "cat", "main", "audio"), (cat[0], "cat", "main", "video"),
              (cat[1], "cat", "aux", "video")]
    figures = []
    for pub, user, media, kind in cases:
        # A publication's segments are those starting while it published
        # (their names' UTC17); amy's publications are 4 s apart or more,
        # so a second's margin before the first frame cannot take another's,
        # nor half a second after its stop (the last frames, in flight at
        # the stop, may open a last segment of a few milliseconds just after
        # the publisher's own clock says it stopped).
        segs = sorted((s for s in rec.segments if s.user == rec.users[user] and (s.media, s.kind) == (media, kind)
                       and pub.started_at - 1.0 <= s.start_ms / 1000 <= pub.stopped_at + 0.5),
                      key=lambda s: s.start_ms)
        recorded = sum(segments_seconds(rec.folder, [s.name for s in segs]))
        figures.append((user, media, kind, len(segs), round(pub.published_seconds, 3), round(recorded, 3)))
    print("(user, media, kind, segments, published s, recorded s by ffprobe):", figures)
    assert sum(n for _, _, _, n, _, _ in figures) == len(rec.segments), "every segment in one publication"
    for user, media, kind, n, published, recorded in figures:
        # Longer: never by more than the last frame's own duration (1/12 s
        # of video; 20 ms of Opus in whole 21.3 ms AAC frames) plus
        # ffprobe's rounding: 0.1 s. Shorter: start-up (the recorder asks
        # for a key frame, aiortc sends one with its next frame) and what is
        # in flight at the DELETE; 0.5 s leaves room for a loaded machine.
        assert n and published - 0.5 <= recorded <= published + 0.1, (user, media, kind, figures)


def test_section_mode_writes_one_file_per_section_named_by_its_first_segment(recording, m0):
    rec = recording
    expected = expected_per_section(rec)
    assert set(m0.outputs) == set(expected), (sorted(m0.outputs), sorted(expected))
    assert sorted(n for n in expected if n.startswith(rec.users["amy"])) == sorted(
        output_name(rec.users["amy"], s.start_ms, True) for s in rec.sections("amy"))
    assert output_name(rec.users["ben"], rec.sections("ben")[0].start_ms, False) in expected
    for name, (user, sec) in expected.items():
        o = m0.outputs[name]
        assert o["user_id"] == user and o["start_ms"] == sec.start_ms, o
        assert o["method"] == "remux", o
        path = m0.folder / name
        got = duration_s(path)
        assert abs(got - sec.seconds) <= 1.5, f"{name}: {got:.2f} s, section {sec.seconds:.2f} s"
        assert abs(o["duration_ms"] / 1000 - got) < 0.5, (o, got)
        s = streams(path)
        if o["video"]:
            assert sorted(s) == ["audio", "video"], s
            assert (s["video"]["codec_name"], s["audio"]["codec_name"]) == ("h264", "aac")
            # A remux keeps the publisher's picture.
            assert (s["video"]["width"], s["video"]["height"]) == SIZE, s["video"]
            want_fps = AMY_FPS if user == "amy" else DEFAULT_FPS
            assert abs(fps(path) - want_fps) < 0.5, name
        else:
            assert list(s) == ["audio"] and s["audio"]["codec_name"] == "aac", s
        decodes(path)
    amy = sorted((o for o in m0.outputs.values() if o["user_id"] == "amy"), key=lambda o: o["start_ms"])
    assert [o["duration_ms"] / 1000 for o in amy] == pytest.approx([6, 14.5], abs=2), amy


def test_section_mode_keeps_each_sections_av_offset(recording, m0):
    for name, (user, sec) in expected_per_section(recording).items():
        if not m0.outputs[name]["video"]:
            continue
        a, v = sec.first("main", "audio"), sec.first("main", "video")
        source = (first_pts(recording.folder / a.name, "a:0") - first_pts(recording.folder / v.name, "v:0"))
        got = av_start_offset(m0.folder / name)
        assert abs(got - source) < 0.04, f"{name}: A/V offset {got:.3f} s, source {source:.3f} s"


def test_merge_mode_fills_the_gap_with_black_and_silence(recording, m1_fill):
    rec = recording
    amy_enc = rec.users["amy"]
    secs = rec.sections("amy")
    name = output_name(amy_enc, secs[0].start_ms, True)
    expected = {name, output_name(rec.users["ben"], rec.sections("ben")[0].start_ms, False),
                output_name(rec.users["cat"], rec.sections("cat")[0].start_ms, True)}
    assert set(m1_fill.outputs) == expected, sorted(m1_fill.outputs)
    o = m1_fill.outputs[name]
    assert o["method"] == "re-encode" and o["video"] and o["start_ms"] == secs[0].start_ms, o
    path = m1_fill.folder / name
    wall = (secs[-1].end_ms - secs[0].start_ms) / 1000
    got = duration_s(path)
    assert abs(got - wall) <= 2, f"{got:.2f} s, wall time {wall:.2f} s"
    s = streams(path)
    assert (s["video"]["codec_name"], s["audio"]["codec_name"]) == ("h264", "aac"), s
    assert abs(fps(path) - DEFAULT_FPS) < 0.5
    decodes(path)
    # Times in the file: 0 is the first section's start.
    origin = float(ffprobe(path)["format"].get("start_time", 0))
    gap_start = (secs[0].end_ms - secs[0].start_ms) / 1000
    gap_end = (secs[1].start_ms - secs[0].start_ms) / 1000
    mid = (gap_start + gap_end) / 2
    assert gap_end - gap_start > 10, (gap_start, gap_end)
    assert frame_stats(path, origin + mid, 0.5)["YAVG"] < 20, "black in the gap"
    assert max_volume_db(path, origin + mid - 2.5, 5) < -50, "silence in the gap"
    # ... and the tone around it, so that the silence is the gap's.
    assert max_volume_db(path, origin + 1, 3) > -30
    assert max_volume_db(path, origin + gap_end + 1, 3) > -30
    assert frame_stats(path, origin + 1, 0.5)["YAVG"] > 30


def test_merge_mode_with_s_drops_the_gap_and_remuxes(recording, m1_skip):
    rec = recording
    secs = rec.sections("amy")
    name = output_name(rec.users["amy"], secs[0].start_ms, True)
    assert name in m1_skip.outputs and len(m1_skip.outputs) == 3, sorted(m1_skip.outputs)
    o = m1_skip.outputs[name]
    assert o["method"] == "remux", o
    total = sum(s.seconds for s in secs)
    got = duration_s(m1_skip.folder / name)
    assert abs(got - total) <= 2, f"{got:.2f} s, sections {total:.2f} s"
    s = streams(m1_skip.folder / name)
    assert abs(fps(m1_skip.folder / name) - AMY_FPS) < 0.5 and (s["video"]["width"], s["video"]["height"]) == SIZE
    decodes(m1_skip.folder / name)


def test_a_picks_main_or_aux_video(recording, m0, tmp_path_factory, tmp_path):
    rec = recording
    cat = rec.users["cat"]
    main, aux = source_stats(rec, cat, "main", tmp_path), source_stats(rec, cat, "aux", tmp_path)
    # Each recorded stream shows the colour its publisher sent: BT.601
    # limited-range YUV of the RGB (what PyAV's conversion makes of it),
    # within 6 levels: a flat colour's 4:2:0 round trip is within 3
    # (test_independent_publisher), the publisher's moving white square is
    # 0.4 % of the picture (under one level) and H.264 adds a little on a
    # flat area.
    for got, rgb, what in ((main, CAT_MAIN_COLOR, "cat's main"), (aux, CAT_AUX_COLOR, "cat's aux")):
        want = yuv601(rgb)
        print(f"{what}: sent {rgb} = YUV {want}, recorded {got}")
        assert all(abs(got[k] - want[k]) <= 6 for k in want), (what, got, want)
    # Red main, green aux: their average chroma tells them apart.
    assert abs(main["VAVG"] - aux["VAVG"]) > 10, (main, aux)

    def picked(path: Path) -> str:
        got = frame_stats(path)
        return "main" if abs(got["VAVG"] - main["VAVG"]) < abs(got["VAVG"] - aux["VAVG"]) else "aux"

    (sec,) = rec.sections("cat", a=0)
    assert picked(m0.folder / output_name(cat, sec.start_ms, True)) == "main"
    a2 = merged(run_merge(rec.copy(tmp_path_factory, "a2"), "-a", "2"))
    (sec,) = rec.sections("cat", a=2)
    name = output_name(cat, sec.start_ms, True)
    assert name in a2.outputs, sorted(a2.outputs)
    s = streams(a2.folder / name)
    assert (s["video"]["codec_name"], s["audio"]["codec_name"]) == ("h264", "aac"), s
    assert picked(a2.folder / name) == "aux"
    # -a 2 for users without aux: audio only.
    ben_sec, = rec.sections("ben", a=2)
    assert output_name(rec.users["ben"], ben_sec.start_ms, False) in a2.outputs
    # -a 1: main where there is main ...
    a1 = merged(run_merge(rec.copy(tmp_path_factory, "a1"), "-a", "1"))
    (sec,) = rec.sections("cat", a=1)
    assert picked(a1.folder / output_name(cat, sec.start_ms, True)) == "main"
    # ... and aux for a user who has no main video.
    no_main = rec.copy(tmp_path_factory, "a1aux")
    for p in no_main.glob(f"*__UserId_s_{cat}__UserId_e_main_video*"):
        p.unlink()
    a1x = merged(run_merge(no_main, "-a", "1"))
    (sec,) = sections(read_segments(no_main), cat, a=1)
    assert picked(no_main / output_name(cat, sec.start_ms, True)) == "aux"


def test_p_and_r_re_encode_at_the_asked_rate_and_size(recording, tmp_path_factory):
    run = merged(run_merge(recording.copy(tmp_path_factory, "pr"), "-p", "10", "-r", "320", "240"))
    assert set(run.outputs) == set(expected_per_section(recording)), sorted(run.outputs)
    for name, o in run.outputs.items():
        if not o["video"]:
            continue
        assert o["method"] == "re-encode", o
        v = streams(run.folder / name)["video"]
        assert (v["width"], v["height"]) == (320, 240), (name, v["width"], v["height"])
        assert abs(fps(run.folder / name) - 10) < 0.3, name
        decodes(run.folder / name)


def test_p_is_clamped_to_5_fps(recording, tmp_path_factory):
    run = merged(run_merge(recording.copy(tmp_path_factory, "p1"), "-p", "1"))
    name = output_name(recording.users["amy"], recording.sections("amy")[0].start_ms, True)
    assert run.outputs[name]["method"] == "re-encode" and abs(fps(run.folder / name) - 5) < 0.3


def test_ha_prefixed_files_are_merged_with_the_rest(recording, m0, tmp_path_factory):
    """A failover mid-recording: amy's second section is in ha1_ files (its own
    playlists), her first in the original ones. The outputs are the same."""
    rec = recording
    folder = rec.copy(tmp_path_factory, "ha")
    moved = {s.name for s in rec.sections("amy")[1].segments}
    for pl_path in list(folder.glob(f"*__UserId_s_{rec.users['amy']}__*.m3u8")):
        pl = parse_playlist(pl_path)
        keep = [(d, n) for d, n, _ in pl.segments if n not in moved]
        gone = [(d, n) for d, n, _ in pl.segments if n in moved]
        write_playlist(pl_path, pl, keep)
        write_playlist(folder / f"ha1_{pl_path.name}", pl, [(d, f"ha1_{n}") for d, n in gone])
        for _, n in gone:
            (folder / n).rename(folder / f"ha1_{n}")
    run = merged(run_merge(folder))
    assert set(run.outputs) == set(m0.outputs), (sorted(run.outputs), sorted(m0.outputs))
    for name, o in run.outputs.items():
        assert abs(o["duration_ms"] - m0.outputs[name]["duration_ms"]) < 100, (o, m0.outputs[name])


def write_playlist(path: Path, like, segments: list[tuple[float, str]]) -> None:
    start = utc17_ms(SEGMENT_RE.fullmatch(segments[0][1])["utc"])
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-ALLOW-CACHE:NO", "#EXT-X-MEDIA-SEQUENCE:0",
             f"#EXT-X-TARGETDURATION:{like.target}", f"#EXT-X-TRTC-START-REC-TIME:{start}"]
    if like.video_size:
        lines.append(f"#EXT-X-TRTC-VIDEO-METADATA:WIDTH:{like.video_size[0]} HEIGHT:{like.video_size[1]}")
    for d, n in segments:
        lines += [f"#EXTINF:{d:.3f}", n]
    path.write_text("\n".join(lines + ["#EXT-X-ENDLIST"]) + "\n")


def test_segments_without_playlists_are_timed_from_their_own_timestamps(recording, m0, tmp_path_factory):
    """Files laid out by the spec elsewhere may come without their playlists:
    durations then come from the segments' timestamps, and the outputs are
    the same files with about the same durations."""
    folder = recording.copy(tmp_path_factory, "noplaylists")
    for pl in folder.glob("*.m3u8"):
        pl.unlink()
    run = merged(run_merge(folder))
    assert set(run.outputs) == set(m0.outputs), (sorted(run.outputs), sorted(m0.outputs))
    for name, o in run.outputs.items():
        assert abs(o["duration_ms"] - m0.outputs[name]["duration_ms"]) < 300, (o, m0.outputs[name])


def test_a_missing_or_empty_folder_is_an_error(tmp_path):
    assert subprocess.run([KIROKU_BIN, "merge", "--help"], capture_output=True).returncode == 0
    missing = run_merge(tmp_path / "nope")
    assert missing.rc == 2, (missing.rc, missing.stderr)
    empty = tmp_path / "empty"
    empty.mkdir()
    run = run_merge(empty)
    assert run.rc == 2 and "nothing to merge" in run.stderr, (run.rc, run.stderr)
    assert list(empty.iterdir()) == []


def test_bad_options_are_usage_errors(recording, tmp_path_factory):
    # clap answers 2 for an unknown subcommand too.
    assert subprocess.run([KIROKU_BIN, "merge", "--help"], capture_output=True).returncode == 0
    folder = recording.copy(tmp_path_factory, "usage")
    for args in (["-m", "2"], ["-a", "3"], ["-r", "320"], ["-p", "fast"], ["--bogus"]):
        run = run_merge(folder, *args)
        assert run.rc == 2, (args, run.rc, run.stderr)
        assert run.new_files == set(), (args, run.new_files)


def test_a_truncated_segment_is_skipped_with_a_warning(recording, tmp_path_factory):
    rec = recording
    folder = rec.copy(tmp_path_factory, "trunc")
    # A segment in the middle of amy's first section: the section's start
    # (and so the output's name) does not depend on it.
    video = sorted((s for s in rec.sections("amy")[0].segments if s.kind == "video"), key=lambda s: s.start_ms)
    victim = folder / video[len(video) // 2].name
    size = victim.stat().st_size
    # Half, ending inside a 188-byte TS packet.
    with open(victim, "r+b") as f:
        f.truncate(size // 2 // 188 * 188 + 100)
    run = merged(run_merge(folder))
    assert victim.name in run.stderr, run.stderr
    assert any(victim.name in w for w in run.report["warnings"]), run.report["warnings"]
    assert set(run.outputs) == set(expected_per_section(rec)), sorted(run.outputs)
    for name in run.outputs:
        decodes(folder / name)


def test_an_existing_output_is_kept_unless_overwrite(recording, tmp_path_factory):
    rec = recording
    folder = rec.copy(tmp_path_factory, "exists")
    name = output_name(rec.users["ben"], rec.sections("ben")[0].start_ms, False)
    (folder / name).write_bytes(b"keep me")
    run = run_merge(folder)
    assert run.rc == 2 and name in run.stderr, (run.rc, run.stderr)
    assert (folder / name).read_bytes() == b"keep me"
    again = run_merge(folder, "--overwrite")
    assert again.rc == 0, again.stderr
    assert name in again.outputs, sorted(again.outputs)
    s = streams(folder / name)
    assert list(s) == ["audio"] and s["audio"]["codec_name"] == "aac", s


def test_without_json_stdout_lists_one_line_per_file(recording, tmp_path_factory):
    folder = recording.copy(tmp_path_factory, "plain")
    run = run_merge(folder, json_report=False)
    assert run.rc == 0, run.stderr
    lines = run.stdout.strip().splitlines()
    assert sorted(ln.split()[0] for ln in lines) == sorted(run.new_files), (lines, run.new_files)
    for ln in lines:
        f = ln.split()
        assert float(f[1]) > 0 and f[2] in ("remux", "re-encode"), ln
