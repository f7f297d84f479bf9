"""Helpers for the recording tests: the spec's file names, playlists, ffprobe."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from kiroku_e2e import APP_ID, KIROKU_BIN

UTC17 = r"\d{17}"


def encode_id(s: str) -> str:
    """Spec §3a: standard base64, then / → - and = → ."""
    return base64.b64encode(s.encode()).decode().replace("/", "-").replace("=", ".")


def single_base(room: str | int, user: str, media: str, kind: str, app: int = APP_ID,
                string_room: bool = False, ha: int = 0) -> str:
    room_part = encode_id(str(room)) if string_room else str(room)
    prefix = f"ha{ha}_" if ha else ""
    return f"{prefix}{app}_{room_part}__UserId_s_{encode_id(user)}__UserId_e_{media}_{kind}"


@dataclass
class Playlist:
    text: str
    start_rec_time: int | None = None
    video_size: tuple[int, int] | None = None
    target: int = 0
    segments: list[tuple[float, str, bool]] = field(default_factory=list)  # (duration, name, discontinuity)
    ended: bool = False

    @property
    def total(self) -> float:
        return sum(d for d, _, _ in self.segments)


def parse_playlist(path: Path) -> Playlist:
    text = path.read_text()
    lines = text.splitlines()
    assert lines[:5] == ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-ALLOW-CACHE:NO", "#EXT-X-MEDIA-SEQUENCE:0",
                         lines[4]], text
    p = Playlist(text)
    pending_disc, pending_dur = False, None
    for line in lines[4:]:
        if line.startswith("#EXT-X-TARGETDURATION:"):
            p.target = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-TRTC-START-REC-TIME:"):
            p.start_rec_time = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-TRTC-VIDEO-METADATA:"):
            m = re.fullmatch(r"#EXT-X-TRTC-VIDEO-METADATA:WIDTH:(\d+) HEIGHT:(\d+)", line)
            assert m, line
            p.video_size = (int(m[1]), int(m[2]))
        elif line == "#EXT-X-DISCONTINUITY":
            pending_disc = True
        elif line.startswith("#EXTINF:"):
            pending_dur = float(line.split(":", 1)[1].rstrip(","))
        elif line == "#EXT-X-ENDLIST":
            p.ended = True
        elif line and not line.startswith("#"):
            assert pending_dur is not None, text
            p.segments.append((pending_dur, line, pending_disc))
            pending_disc, pending_dur = False, None
        else:
            raise AssertionError(f"unexpected playlist line {line!r}\n{text}")
    assert p.start_rec_time is not None, text
    # RFC 8216 §4.3.3.1: every EXTINF rounded to the nearest integer ≤ TARGETDURATION.
    assert all(round(d) <= p.target for d, _, _ in p.segments), text
    return p


def ffprobe(path: Path | str, *extra: str) -> dict:
    # A `.ts` is read as MPEG-TS, as HLS players do: a segment of a few TS
    # packets is too short for ffprobe's format probe (see decode_clean).
    fmt = ["-f", "mpegts"] if str(path).endswith(".ts") else []
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_streams", "-show_format", *extra, *fmt, str(path)],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"ffprobe {path}: {out.stderr}"
    return json.loads(out.stdout)


def segments_seconds(folder: Path, names: list[str]) -> list[float]:
    """Each segment's duration as ffprobe measures it (its format duration),
    not as its playlist's #EXTINF says."""
    return [float(ffprobe(folder / n)["format"]["duration"]) for n in names]


def decoded_video_frames(path: Path) -> int:
    """Video frames ffprobe decodes from a playlist or file (-count_frames)."""
    info = ffprobe(path, "-count_frames", "-select_streams", "v:0")
    return int(info["streams"][0]["nb_read_frames"])


def first_pts(path: Path, stream: str) -> float:
    """Presentation time (s) of the first packet of stream `v:0` / `a:0`."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries", "packet=pts_time",
         "-read_intervals", "%+#1", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.split()[0].rstrip(","))


def decode_ok(path: Path) -> None:
    """The whole playlist decodes (ffmpeg to null) without errors."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-xerror", "-i", str(path), "-f", "null", "-"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{path}: {out.stderr[-2000:]}"


def publish(d, room, user: str, *args: str, duration: float = 8.0) -> subprocess.Popen:
    return subprocess.Popen(
        [KIROKU_BIN, "publish", "--url", d.url, "--room", str(room), "--user", user, "--duration", str(duration),
         "--json", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def publish_report(p: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def task_files(d, task_id: str, prefix: tuple[str, ...] = ()) -> Path:
    return Path(d.config["data_dir"]).joinpath("storage", *prefix, task_id)


def playlist_start(path: Path) -> float:
    """The first presentation time (s) of a playlist, as ffprobe reads it."""
    return float(ffprobe(path)["format"]["start_time"])


def flash_times(playlist: Path) -> list[float]:
    """Presentation times (s) of sync-mark flashes: a white frame after a non-white one."""
    out = subprocess.run(
        ["ffmpeg", "-v", "error", "-copyts", "-i", str(playlist), "-vf",
         "signalstats,metadata=print:key=lavfi.signalstats.YAVG:file=-", "-f", "null", "-"],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    times, pts, was_white = [], None, False
    for line in out.stdout.splitlines():
        m = re.search(r"pts_time:([0-9.]+)", line)
        if m:
            pts = float(m[1])
            continue
        m = re.search(r"YAVG=([0-9.]+)", line)
        if m and pts is not None:
            white = float(m[1]) > 200
            if white and not was_white:
                times.append(pts)
            was_white = white
    return times


def beep_times(playlist: Path) -> list[float]:
    """Presentation times (s) of sync-mark beeps: where the level jumps above the tone's."""
    # PCM sample 0 is the audio stream's first sample (not the file's start).
    start = float(next(s for s in ffprobe(playlist)["streams"] if s["codec_type"] == "audio")["start_time"])
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(playlist), "-map", "0:a:0", "-ac", "1", "-ar", "48000",
                          "-f", "s16le", "-"], capture_output=True, timeout=300)
    assert out.returncode == 0, out.stderr
    import array
    pcm = array.array("h")
    pcm.frombytes(out.stdout[: len(out.stdout) // 2 * 2])
    threshold = int(0.55 * 32767)  # the tone peaks at 0.25, the beep at 0.85
    times, last_loud = [], -10**9
    for i, x in enumerate(pcm):
        if x > threshold or x < -threshold:
            if i - last_loud > 48000 // 2:
                times.append(start + i / 48000)
            last_loud = i
    return times


def to_unix_ms(pl: Playlist, playlist_first_pts: float, pts: float) -> float:
    """A presentation time → server Unix ms, via #EXT-X-TRTC-START-REC-TIME."""
    return pl.start_rec_time + (pts - playlist_first_pts) * 1000.0


def play_in_chromium(chromium: str, folder: Path, playlist: str, tmp: Path, wait_ms: int = 9000) -> dict:
    """Plays `folder/playlist` in headless Chromium's <video> (its built-in
    HLS player) from an HTTP server, and returns what the page reported."""
    import http.server
    import threading
    from functools import partial

    page = Path(__file__).parent / "pages" / "play.html"
    result: dict = {}
    done = threading.Event()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):
            if path.split("?")[0] == "/play.html":
                return str(page)
            return super().translate_path(path)

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            result.update(json.loads(body))
            self.send_response(204)
            self.end_headers()
            done.set()

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_port
    url = (f"http://127.0.0.1:{port}/play.html?src=/{playlist}&report=http://127.0.0.1:{port}/report"
           f"&wait={wait_ms}")
    proc = subprocess.Popen(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--autoplay-policy=no-user-gesture-required", "--no-first-run", "--disable-background-networking",
         f"--user-data-dir={tmp}", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        done.wait(wait_ms / 1000 + 30)
    finally:
        import os
        import signal
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        server.shutdown()
    return result
