"""The web console (/console, docs/console.md) in a real browser: Debian's
Chromium with fake media devices, driven by Playwright (tests/e2e/node/
console.mjs), against a real kiroku. The page signs in (a wrong token is
refused first), publishes the fake camera over WHIP, shows the user's tracks
live, starts a mixed recording from its form (a Create the API refuses shows
Tencent's Code and Message), plays the recording in progress with hls.js,
switches its layout (Modify), stops it (Delete), plays the finished MP4 and
signs out. A second publisher (`kiroku publish`, solid red) joins after the
camera, so that the layouts are told apart by colour: nine-grid puts the
camera left and red right; floating fills the canvas with the camera and
puts red small at the bottom left. What the page reports is then checked
independently: ffprobe and the decoded pictures of the files in data_dir,
the callbacks the receiver got, the screenshots' pixels.

KIROKU_CONSOLE_SCREENSHOTS=docs/console also copies the screenshots that
docs/console.md shows there (the test itself writes only to tmp)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import requests

from kiroku_e2e import ADMIN_TOKEN, APP_ID, KIROKU_BIN, REPO
from recording import ffprobe, task_files

NODE_DIR = Path(__file__).resolve().parent / "node"
ASSETS = REPO / "daemon" / "src" / "console" / "assets"
CHROMIUM = shutil.which("chromium")
KIROKU_BIN_HINT = "the kiroku binary is older than the console assets in the tree: rebuild it (cargo build -p kiroku)"
# The screenshots docs/console.md shows.
DOC_SHOTS = ("signin-error", "rooms", "publish", "record-form", "create-error", "tasks-live", "modify", "tasks")
# The fake camera paints a green picture ((0, 128, 0) with a bright green
# pacman: Chromium's FakeVideoCaptureDevice); the second user is solid red.
W, H = 320, 240


def png_stats(path: Path, box: tuple[float, float, float, float] = (0, 0, 1, 1)) -> dict:
    """Decodes a PNG with ffmpeg: its size, the mean RGB and the number of
    distinct colours over a box given in fractions of the picture."""
    info = ffprobe(path)
    w, h = info["streams"][0]["width"], info["streams"][0]["height"]
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, timeout=60, check=True).stdout
    assert len(raw) == w * h * 3, (path, len(raw), w, h)
    px = np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3)
    x0, y0 = int(box[0] * w), int(box[1] * h)
    x1, y1 = max(x0 + 1, int(box[2] * w)), max(y0 + 1, int(box[3] * h))
    region = px[y0:y1, x0:x1].reshape(-1, 3)
    packed = (region[:, 0].astype(np.uint32) << 16) | (region[:, 1].astype(np.uint32) << 8) | region[:, 2]
    return {"size": (w, h), "mean": region.mean(axis=0).tolist(), "colours": int(np.unique(packed).size)}


def node_driver(cfg: dict, tmp_path: Path) -> dict:
    node = shutil.which("node")
    assert node, "node is not installed (tests/run-all.sh installs it)"
    assert (NODE_DIR / "node_modules" / "playwright-core").is_dir(), \
        "tests/e2e/node has no playwright-core: run `npm ci --prefix tests/e2e/node` (tests/run-all.sh does)"
    cfg_file = tmp_path / "console.json"
    cfg_file.write_text(json.dumps(cfg))
    p = subprocess.run([node, str(NODE_DIR / "console.mjs"), str(cfg_file)], capture_output=True, text=True,
                       timeout=150, check=False)
    result_file = Path(cfg["out"]) / "result.json"
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    if p.returncode != 0 or not result.get("ok"):
        page_log = "\n".join(result.get("console", [])[-60:])
        raise AssertionError(f"the console driver failed (rc {p.returncode}):\n{p.stdout[-6000:]}\n{p.stderr[-4000:]}\n"
                             f"page log:\n{page_log}\nscreenshots in {cfg['out']}")
    return result


def green(mean) -> bool:
    r, g, b = mean
    return g > 90 and g > 2 * r + 10 and g > 2 * b + 10


def red(mean) -> bool:
    r, g, b = mean
    return r > 120 and r > 2 * g + 10 and r > 2 * b + 10


def mp4_layouts(path: Path) -> list[str]:
    """The layout each second of a 320×240 mixed recording shows, from its
    pictures decoded by ffmpeg: "grid" (camera left, red right), "float"
    (the camera's big picture, red small at the bottom left), "camera" (the
    camera alone) or "other"."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf", "fps=1", "-f", "rawvideo",
                          "-pix_fmt", "rgb24", "-"], capture_output=True, timeout=120, check=True).stdout
    frames = np.frombuffer(raw, dtype=np.uint8).reshape(-1, H, W, 3)

    def mean(f, x0, y0, x1, y1):
        return f[int(y0 * H):int(y1 * H), int(x0 * W):int(x1 * W)].reshape(-1, 3).mean(axis=0).tolist()
    out = []
    for f in frames:
        left, right = mean(f, 0.06, 0.1, 0.42, 0.9), mean(f, 0.56, 0.1, 0.94, 0.6)
        small = mean(f, 0.03, 0.78, 0.23, 0.95)
        out.append("grid" if green(left) and red(right) else "float" if green(right) and red(small)
                   else "camera" if green(left) and green(right) and green(small) else "other")
    return out


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (tests/run-all.sh installs it)")
def test_the_console_records_and_plays_in_a_real_browser(kiroku, receiver, tmp_path):
    started = time.monotonic()
    d = kiroku("console", callback_url=receiver.url, recording={"segment_seconds": 2})

    # The binary serves the page as it is in the tree (it compiles it in).
    for name in ("index.html", "app.js", "app.css", "hls.min.js", "hls.js-LICENSE.txt"):
        served = requests.get(f"{d.url}/console/{name}", timeout=5)
        assert served.status_code == 200, (name, served.status_code)
        assert served.content == (ASSETS / name).read_bytes(), \
            f"{KIROKU_BIN_HINT}: /console/{name} differs from daemon/src/console/assets/{name}"
    assert "default-src 'self'" in served.headers["content-security-policy"]

    out = tmp_path / "console"
    room, user = "7801", "cam"
    r = node_driver({"url": d.url, "token": ADMIN_TOKEN, "app": APP_ID, "room": room, "user": user,
                     "out": str(out), "chromium": CHROMIUM, "second": {"bin": KIROKU_BIN, "user": "red"}}, tmp_path)
    print(json.dumps({k: v for k, v in r.items() if k not in ("console",)}, indent=1)[:6000])

    # The page ran without script errors and within its Content-Security-Policy.
    log = r["console"]
    assert not [m for m in log if m.startswith("pageerror") or "Content Security Policy" in m], log

    # Sign-in: the wrong token's refusal is the box's own message.
    assert "401" in r["signin_error"] and "admin_token" in r["signin_error"], r["signin_error"]
    assert r["signed_out"] == 401, "signing out ends the cookie session"

    # The rooms view: the browser's camera and microphone, live figures.
    rooms = r["rooms"]
    assert rooms["users"] == [user, "red"], "users in join order"
    assert rooms["codec"] == "h264" and rooms["audio_codec"] == "opus", rooms
    assert rooms["resolution"] == "640×360", rooms
    assert 5 <= rooms["fps"] <= 31, rooms
    assert 20_000 < rooms["bitrate"] < 5_000_000 and 5_000 < rooms["audio_bitrate"] < 300_000, rooms
    assert rooms["frames_after"] > rooms["frames_before"], "the view refreshes without a reload"

    # A refused Create shows Tencent's code and message.
    assert r["create_error"]["code"] == "InvalidParameter.OutOfRange", r["create_error"]
    assert "MaxIdleTime" in r["create_error"]["message"], r["create_error"]

    # The form's request and the live preview of the layouts (docs/mixing.md).
    body = r["create_body"]
    assert body["RecordParams"]["RecordMode"] == 2 and body["RecordParams"]["OutputFormat"] == 1, body
    assert body["MixTranscodeParams"]["VideoParams"] == {"Width": 320, "Height": 240, "Fps": 15, "BitRate": 300000,
                                                         "Gop": 2}, body
    assert body["MixLayoutParams"]["MixLayoutMode"] == 3 and "StorageParams" not in body, body
    pv = r["preview"]
    assert [(t["user"], t["x"], t["y"], t["w"], t["h"]) for t in pv["grid"]] == [
        (user, 0, 0, 160, 240), ("red", 160, 0, 160, 240)], "the room's users, in join order"
    # Nine-grid of 5: 3 × 3 cells, edges at exact thirds rounded to even.
    assert [(t["x"], t["y"], t["w"], t["h"]) for t in pv["grid5"]] == [
        (0, 0, 106, 80), (106, 0, 108, 80), (214, 0, 106, 80), (0, 80, 106, 80), (106, 80, 108, 80)], pv["grid5"]
    assert pv["float5"][0] == {"user": user, "x": 0, "y": 0, "w": 320, "h": 240, "big": True, "empty": False}
    assert all(t["y"] + t["h"] <= 240 - 2 and t["w"] == 76 for t in pv["float5"][1:]), pv["float5"]
    assert (pv["screen5"][0]["w"], pv["screen5"][0]["h"], pv["screen5"][0]["user"]) == (256, 240, user), pv["screen5"]
    assert [(t["x"], t["w"], t["h"]) for t in pv["screen5"][1:]] == [(256, 64, 60)] * 4, pv["screen5"]

    # The recording in progress played live with hls.js: the grid, then,
    # after Modify, the floating layout.
    live = r["live"]
    assert live["hls_loaded"] == "1.7.4" and live["state"].startswith("live"), live
    assert live["to"] - live["from"] >= 1.5, live
    assert (live["mean"]["width"], live["mean"]["height"]) == (W, H), live
    assert live["mean"]["max_luma"] - live["mean"]["min_luma"] > 30, "the pacman is in the picture"
    assert live["grid"], live
    assert r["modify"]["result"].startswith("Modified ") and not r["modify"]["error_visible"], r["modify"]
    assert r["modify"]["float"] and r["modify"]["seen_after_s"] < 30, r["modify"]

    # The finished MP4 in <video>: the grid first, floating at the end.
    mp4 = r["mp4"]
    assert mp4["to"] - mp4["from"] >= 1.0 and mp4["duration"] > 3, mp4
    assert mp4["layouts"] == {"grid_then_float": True, "float_last": True}, mp4["timeline"]

    # Independently: the files in data_dir ...
    task = r["task_id"]
    folder = task_files(d, task)
    names = sorted(p.name for p in folder.iterdir())
    assert f"{APP_ID}_{room}.m3u8" in names and f"{APP_ID}_{room}.mp4" in names, names
    assert mp4["src"] == f"/v1/files/{task}/{APP_ID}_{room}.mp4", mp4["src"]
    info = ffprobe(folder / f"{APP_ID}_{room}.mp4")
    streams = {s["codec_type"]: s for s in info["streams"]}
    assert streams["video"]["codec_name"] == "h264" and (streams["video"]["width"], streams["video"]["height"]) == (W, H)
    assert streams["audio"]["codec_name"] == "aac", info["streams"]
    assert abs(float(Fraction(streams["video"]["avg_frame_rate"])) - 15) < 1, streams["video"]
    assert float(info["format"]["duration"]) > 3, info["format"]
    assert abs(float(info["format"]["duration"]) - mp4["duration"]) < 0.5, (info["format"], mp4)
    playlist = ffprobe(folder / f"{APP_ID}_{room}.m3u8")
    assert float(playlist["format"]["duration"]) > 3, playlist["format"]
    layouts = mp4_layouts(folder / f"{APP_ID}_{room}.mp4")
    assert layouts.count("grid") >= 2 and layouts.count("float") >= 2, layouts
    assert max(i for i, x in enumerate(layouts) if x == "grid") < layouts.index("float"), layouts
    assert layouts[-1] == "float", layouts

    # ... the callbacks, which the page listed as delivered, in order ...
    got = [c.event_type for c in receiver.delivered(task)]
    assert got[0] == 301 and 302 in got and 305 in got, got
    listed = r["callbacks_listed"]
    assert [c["event"] for c in listed] == got[:len(listed)] and all(c["state"] == "delivered" for c in listed), \
        (listed, got)

    # ... and the screenshots' pixels.
    shots = r["screenshots"]
    assert set(DOC_SHOTS) | {"live-player", "live-player-float", "mp4-player", "status"} <= set(shots), shots
    for name, path in shots.items():
        s = png_stats(Path(path))
        assert s["colours"] > 8, (name, s)
        assert s["size"][0] >= 100 and s["size"][1] >= 40, (name, s)
    # The <video> (3:2) letterboxes the 4:3 picture between x = 0.056 and 0.944.
    grid_png = Path(shots["live-player"])
    assert green(png_stats(grid_png, (0.12, 0.1, 0.42, 0.7))["mean"]), "the camera's tile, left"
    assert red(png_stats(grid_png, (0.58, 0.1, 0.88, 0.7))["mean"]), "red's tile, right"
    float_png = Path(shots["live-player-float"])
    for box in ((0.12, 0.1, 0.42, 0.6), (0.58, 0.1, 0.88, 0.7)):
        assert green(png_stats(float_png, box)["mean"]), ("the camera fills the canvas", box)
    assert green(png_stats(Path(shots["mp4-player"]), (0.12, 0.1, 0.42, 0.7))["mean"]), "the MP4 at 1 s"
    rooms_png = png_stats(Path(shots["rooms"]))
    assert rooms_png["mean"][0] > 150, ("the page is light", rooms_png)

    target = os.environ.get("KIROKU_CONSOLE_SCREENSHOTS")
    if target:
        dest = (REPO / target) if not os.path.isabs(target) else Path(target)
        dest.mkdir(parents=True, exist_ok=True)
        for name in DOC_SHOTS:
            shutil.copyfile(shots[name], dest / f"{name}.png")

    elapsed = time.monotonic() - started
    assert r["elapsed_s"] < 80 and elapsed < 100, (r["elapsed_s"], elapsed)

