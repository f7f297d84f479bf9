"""Third-party WHIP publishers against the real daemon (docs/ingest.md, "WHIP clients").

- aiortc (tests/e2e/independent_publisher.py) into a daemon whose ingest
  socket is bound to 0.0.0.0 with `ingest.advertised_addresses`: kiroku used
  to answer no STUN at all in that set-up.
- GStreamer 1.22 webrtcbin (tests/e2e/whip_clients/gst_whip.py, Debian's
  /usr/bin/python3 with python3-gi) records with its own RSA-2048 DTLS
  certificate (verified by kiroku's patched dimpl, vendor/README.md).
- FFmpeg 8.1's WHIP muxer (tests/e2e/whip_clients/ffmpeg_whip.py, PyAV 18.1 in
  the repository's venv; its FFmpeg uses GnuTLS) records with its own P-224
  certificate. Given a P-521 one, which kiroku cannot verify, the handshake
  fails and kiroku says so at once (`dtls_failed` + a WARN line) instead of
  waiting for the connect timeout.

Every recording is judged with ffprobe/ffmpeg against what the client says
it published (its own wall-clock start/stop, printed as a JSON line), not
against kiroku's view. A missing tool fails the test with the Debian/PyPI
package to install (tests/run-all.sh installs them).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiroku_e2e import APP_ID, REPO, create_params, metric_baseline, wait_until
from recording import decode_ok, ffprobe, parse_playlist, single_base, task_files
from independent_publisher import Publisher, whip_url
from test_independent_publisher import tracks, user_status

HERE = Path(__file__).resolve().parent
GST_SCRIPT = HERE / "whip_clients" / "gst_whip.py"
FFMPEG_SCRIPT = HERE / "whip_clients" / "ffmpeg_whip.py"
# gst_whip.py needs Debian's python3 (python3-gi); ffmpeg_whip.py needs PyAV,
# which is in the repository's venv (tests/e2e/requirements.txt: aiortc → av).
SYSTEM_PYTHON = "/usr/bin/python3"
VENV_PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() \
    else sys.executable

# What gst_whip.py needs, by Debian package (all in tests/run-all.sh's APT_PACKAGES).
GST_PACKAGES = ("python3-gi gir1.2-glib-2.0 gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 "
                "gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
                "gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-nice openssl")
GST_ELEMENTS = {
    "webrtcbin": "gstreamer1.0-plugins-bad", "dtlssrtpdec": "gstreamer1.0-plugins-bad",
    "srtpenc": "gstreamer1.0-plugins-bad", "nicesrc": "gstreamer1.0-nice", "rtpbin": "gstreamer1.0-plugins-good",
    "rtph264pay": "gstreamer1.0-plugins-good", "rtpopuspay": "gstreamer1.0-plugins-good",
    "x264enc": "gstreamer1.0-plugins-ugly", "opusenc": "gstreamer1.0-plugins-base",
    "videotestsrc": "gstreamer1.0-plugins-base", "audiotestsrc": "gstreamer1.0-plugins-base",
    "videoconvert": "gstreamer1.0-plugins-base", "audioconvert": "gstreamer1.0-plugins-base",
    "audioresample": "gstreamer1.0-plugins-base",
}

SEGMENT_SECONDS = 4
GST_PUBLISH_SECONDS = 8.0
FFMPEG_PUBLISH_SECONDS = 8.0
AIORTC_PUBLISH_SECONDS = 4.0
# A refused client gives up after this (the scripts' --connect-timeout); kiroku
# must have ended the session long before.
REFUSED_CONNECT_TIMEOUT = 5.0
# From starting a refused client to kiroku counting dtls_failed: the client's
# start-up (GStreamer ~0.4 s, PyAV + x264 set-up ~0.3 s), the WHIP POST, ICE
# and one DTLS flight take well under 1.5 s on loopback; 4 s leaves room for
# a loaded box and is still far below kiroku's 30 s connect timeout (what the
# session used to end with).
DTLS_FAILED_WITHIN = 4.0

DTLS_WARN = "DTLS handshake with the publisher failed"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------

def need(cmd: str, package: str) -> str:
    path = shutil.which(cmd)
    assert path, f"`{cmd}` is not installed: apt-get install {package} (tests/run-all.sh does)"
    return path


_GST_CHECK = f"""
import sys
import gi
for ns, v in (("Gst", "1.0"), ("GstWebRTC", "1.0"), ("GstSdp", "1.0"), ("Nice", "0.1")):
    gi.require_version(ns, v)
from gi.repository import Gst, GstWebRTC, GstSdp, Nice
Gst.init(None)
missing = [n for n in {sorted(GST_ELEMENTS)!r} if Gst.ElementFactory.find(n) is None]
print(Gst.version_string())
if missing:
    sys.exit("missing GStreamer elements: " + " ".join(missing))
"""


@pytest.fixture(scope="module")
def gst_python() -> str:
    """Debian's python3 with gi and every element gst_whip.py uses; fails (no skip) if anything lacks."""
    need("openssl", "openssl")
    need("ffprobe", "ffmpeg")
    assert Path(SYSTEM_PYTHON).exists(), f"{SYSTEM_PYTHON} is missing: apt-get install python3 {GST_PACKAGES}"
    out = subprocess.run([SYSTEM_PYTHON, "-c", _GST_CHECK], capture_output=True, text=True, timeout=60)
    missing = re.findall(r"missing GStreamer elements: (.*)", out.stderr)
    pkgs = sorted({GST_ELEMENTS[e] for e in missing[0].split()}) if missing else GST_PACKAGES.split()
    assert out.returncode == 0, (f"GStreamer for gst_whip.py is not usable with {SYSTEM_PYTHON}: "
                                 f"{out.stderr.strip()[-800:]}\napt-get install {' '.join(pkgs)}")
    print(f"GStreamer: {out.stdout.strip()}")
    return SYSTEM_PYTHON


@pytest.fixture(scope="module")
def pyav_python() -> str:
    """The venv's python with PyAV whose FFmpeg has the WHIP muxer (FFmpeg >= 8.1)."""
    need("openssl", "openssl")
    need("ffprobe", "ffmpeg")
    out = subprocess.run([VENV_PYTHON, "-c", "import av, json; print(json.dumps([av.__version__, "
                          "list(av.library_versions['libavformat']), 'whip' in av.formats_available]))"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"PyAV is not importable by {VENV_PYTHON}: {out.stderr[-800:]} " \
                                "(pip install -r tests/e2e/requirements.txt; PyAV >= 18.1)"
    version, lavf, has_whip = json.loads(out.stdout)
    assert has_whip, f"PyAV {version} (libavformat {lavf}) has no WHIP muxer: pip install 'av>=18.1'"
    print(f"PyAV {version}, libavformat {lavf}")
    return VENV_PYTHON


class Client:
    """A WHIP client script run as a subprocess; its report is the JSON last line of stdout."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.started = time.time()
        self.proc = subprocess.Popen(argv, cwd=HERE, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.stdout = self.stderr = ""
        self.rc: int | None = None

    def finish(self, timeout: float) -> "Client":
        try:
            self.stdout, self.stderr = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, self.stderr = self.proc.communicate(10)
            raise AssertionError(f"{self.argv[1]} still running after {timeout} s\n{self.output()}")
        self.rc = self.proc.returncode
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(10)

    @property
    def report(self) -> dict | None:
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return None

    def output(self) -> str:
        return f"exit {self.rc}; stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-6000:]}"


def gst_client(python: str, url: str, *args: str, duration: float = GST_PUBLISH_SECONDS) -> Client:
    return Client([python, str(GST_SCRIPT), "--url", url, "--duration", str(duration), *args])


def ffmpeg_client(python: str, url: str, *args: str, duration: float = FFMPEG_PUBLISH_SECONDS) -> Client:
    return Client([python, str(FFMPEG_SCRIPT), "--url", url, "--duration", str(duration), "--loglevel", "info",
                   *args])


# --------------------------------------------------------------------------
# Daemon and recordings
# --------------------------------------------------------------------------

def free_wildcard_udp_port() -> int:
    """A UDP port free on every address (kiroku will bind 0.0.0.0 to it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


@pytest.fixture
def clientd(kiroku, make_receiver):
    receiver = make_receiver()
    d = kiroku("whipc", callback_url=receiver.url,
               recording={"segment_seconds": SEGMENT_SECONDS, "compositor": "cpu"})
    return d, receiver


def start_task(d, room: int) -> str:
    return d.sdk().create(create_params(room=str(room), RecordParams={"RecordMode": 1, "MaxIdleTime": 60,
                                                                      "AvMerge": 0}))


def end_task(d, receiver, task_id: str) -> Path:
    d.sdk().delete(task_id)
    receiver.wait_event(task_id, 305, 30)  # every file closed
    return task_files(d, task_id)


def packet_times(playlist: Path) -> list[float]:
    """Presentation times (s) of a playlist's packets, in file order
    (packets without a PTS, e.g. the second half of a split access unit, left out)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "packet=pts_time", "-of", "csv=p=0",
                          str(playlist)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [float(x) for x in (v.strip().rstrip(",") for v in out.stdout.split()) if x not in ("", "N/A")]


def timing_problems(playlist: Path, kind: str) -> list[str]:
    """A publisher's track is one continuous run of frames, so in its
    playlist every packet's PTS is later than the one before (no two frames
    share a PTS) and no step is longer than 0.5 s (none of the clients
    pauses; their frames are 1/15 s and 20 ms apart)."""
    t = packet_times(playlist)
    steps = [round(b - a, 4) for a, b in zip(t, t[1:])]
    back = [(i, x) for i, x in enumerate(steps) if x <= 0]
    gaps = [(i, x) for i, x in enumerate(steps) if x > 0.5]
    out = []
    if back:
        out.append(f"{kind}: {len(back)} of {len(t)} packets are not later than the one before "
                   f"(packet index, step s): {back[:8]}{' ...' if len(back) > 8 else ''}")
    if gaps:
        out.append(f"{kind}: gaps (packet index, s): {gaps[:8]}")
    return out


def check_single_stream(folder: Path, room: int, user: str) -> tuple[dict, list[str]]:
    """The user's RecordMode 1 (AvMerge 0) playlists: ended, every segment
    H.264 (video) or AAC-LC 48 kHz (audio), the file set exactly the
    playlists and their segments. Returns per kind (video, audio) the
    segments' ffprobe durations and their sum, and the problems found by
    decoding each whole playlist (ffmpeg -xerror), so that a caller can
    report them together with the durations."""
    want_files: set[str] = set()
    got, problems = {}, []
    for kind, codec in (("video", "h264"), ("audio", "aac")):
        playlist = folder / f"{single_base(room, user, 'main', kind)}.m3u8"
        assert playlist.exists(), (playlist.name, sorted(p.name for p in folder.iterdir()))
        pl = parse_playlist(playlist)
        assert pl.ended and pl.segments, pl.text
        names = [s for _, s, _ in pl.segments]
        want_files |= {playlist.name, *names}
        durations = []
        for seg in names:
            # -f mpegts: a last segment of one or two AAC frames is a TS of
            # 5-8 packets, which ffprobe's format probe may take for MPEG-PS.
            info = ffprobe(folder / seg, "-f", "mpegts")
            streams = info["streams"]
            assert [s["codec_name"] for s in streams] == [codec], (seg, streams)
            if kind == "audio":
                assert streams[0]["sample_rate"] == "48000" and streams[0]["profile"] == "LC", (seg, streams[0])
            durations.append(float(info["format"]["duration"]))
        try:
            decode_ok(playlist)
        except AssertionError as e:
            problems.append(f"{kind} does not decode cleanly: {str(e)[-600:]}")
        problems += timing_problems(playlist, kind)
        got[kind] = ([round(x, 3) for x in durations], round(sum(durations), 3))
    assert {p.name for p in folder.iterdir()} == want_files, sorted({p.name for p in folder.iterdir()} ^ want_files)
    return got, problems


def check_refused(d, client: Client, user: str, baseline: float) -> dict:
    """kiroku counts the session as dtls_failed within DTLS_FAILED_WITHIN s of
    the client's start, logs the WARN line for this user, never lets the user
    into the room; the client then fails (exit status != 0)."""
    labels = {"reason": "dtls_failed"}
    try:
        # metric_baseline reads an absent family as 0 (rust-prometheus prints
        # nothing for a vec without children); the strict read comes below.
        wait_until(lambda: metric_baseline(d.metrics_text(), "kiroku_whip_sessions_ended_total", labels)
                   >= baseline + 1,
                   DTLS_FAILED_WITHIN, 0.05, "kiroku_whip_sessions_ended_total{reason=dtls_failed} to count it")
        counted_after = time.time() - client.started
    except AssertionError:
        client.kill()
        raise
    client.finish(REFUSED_CONNECT_TIMEOUT + 30)
    assert client.rc not in (0, None), f"the client succeeded against a refused handshake\n{client.output()}"
    assert d.metric("kiroku_whip_sessions_ended_total", labels) == baseline + 1
    warns = [ANSI.sub("", line) for line in d.log_text().splitlines() if DTLS_WARN in line]
    assert len(warns) == 1 and re.search(rf"\bWARN\b.*{DTLS_WARN}.*user_id={user}\b", warns[0]), warns
    assert user_status(d, ROOM_OF[user], user) is None, "a refused publisher is in the room"
    cause = re.search(r"error=(.*)$", warns[0])
    return {"counted_after_s": round(counted_after, 3), "client_rc": client.rc,
            "kiroku_error": cause[1] if cause else warns[0],
            "client_fail": next((line for line in client.stderr.splitlines() if line.startswith("FAIL")), None)}


ROOM_OF = {
    "wild_lo": 7401,
    "wild_host": 7406,
    "gst_rsa": 7403,
    "ffmpeg_p224": 7405,
    "ffmpeg_p521": 7407,
}


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------

def host_ipv4() -> str:
    """The box's first non-loopback IPv4 address (aioice offers host
    candidates on those, never on loopback)."""
    import ifaddr  # an aioice dependency

    ips = [a.ip for ad in ifaddr.get_adapters() for a in ad.ips
           if isinstance(a.ip, str) and not a.ip.startswith("127.")]
    assert ips, "this box has no non-loopback IPv4 address: aiortc cannot publish from it"
    return ips[0]


def publish_to_wildcard(kiroku, make_receiver, advertised: str, user: str) -> None:
    """kiroku with udp_listen 0.0.0.0:<port> and advertised_addresses
    [advertised]; aiortc publishes for AIORTC_PUBLISH_SECONDS into a
    RecordMode 1 task; GET /v1/rooms shows its frames and the recording's
    H.264 and AAC playlists decode and hold (nearly) what was published."""
    receiver = make_receiver()
    port = free_wildcard_udp_port()
    d = kiroku("wild", callback_url=receiver.url,
               ingest={"udp_listen": f"0.0.0.0:{port}", "advertised_addresses": [advertised]},
               recording={"segment_seconds": SEGMENT_SECONDS, "compositor": "cpu"})
    room = ROOM_OF[user]
    task_id = start_task(d, room)
    pub = Publisher(whip_url(d.url, APP_ID, room, user), fps=15)
    try:
        pub.start(timeout=10)
        cands = [line for line in pub.answer_sdp.splitlines() if line.startswith("a=candidate:")]
        assert cands and all(f" {advertised} {port} " in c for c in cands), cands
        wait_until(lambda: (u := user_status(d, room, user)) and tracks(u).get("main_video", {}).get("frames", 0) > 15
                   and tracks(u).get("audio", {}).get("frames", 0) > 50, 10, 0.1, "the publisher's media at kiroku")
        time.sleep(max(0.0, AIORTC_PUBLISH_SECONDS - (time.time() - pub.started_at)))
        t = tracks(user_status(d, room, user))
    finally:
        pub.stop()
    assert pub.delete_status == 200 and pub.states[:2] == ["connecting", "connected"], (pub.delete_status, pub.states)
    assert t["main_video"]["codec"] == "h264" and t["audio"]["codec"] == "opus", t
    got, problems = check_single_stream(end_task(d, receiver, task_id), room, user)
    assert not problems, problems
    print(f"wildcard, advertising {advertised}: published {pub.published_seconds:.3f} s, "
          f"frames at kiroku {({k: v['frames'] for k, v in t.items()})}, recorded (segments, sum) {got}")
    # Not judged to the frame here (test_independent_publisher does that for
    # aiortc): the recording holds what was published, less start-up.
    for kind, (_, total) in got.items():
        assert pub.published_seconds - 1.0 <= total <= pub.published_seconds + 0.15, \
            (kind, got, pub.published_seconds)


def test_wildcard_listen_advertising_the_hosts_address_connects(kiroku, make_receiver):
    """udp_listen 0.0.0.0, advertised the box's own IPv4 address: kiroku
    answers the STUN checks that arrive on the wildcard socket (it used to
    answer none) and the recording decodes."""
    publish_to_wildcard(kiroku, make_receiver, host_ipv4(), "wild_host")


# Recorded duration vs the client's own publishing time, per playlist (sum of
# the segments' ffprobe durations):
# - longer by at most one frame of the stream (1/15 s of video; 20 ms of Opus
#   in whole 1024-sample AAC frames, ~21 ms, for audio) plus ffprobe's
#   rounding of each segment's end: RECORDED_OVER = 0.15 s;
# - shorter by start-up and the end: RECORDED_UNDER = 0.6 s. Start: media
#   reaches kiroku once DTLS is up (the clients' "connected" instant), the
#   room publishes the user, the recorder subscribes; audio starts with its
#   next packet, video with the next key frame, which kiroku asks for (PLI)
#   and GStreamer's x264enc makes at once. End: what is in flight at the
#   DELETE. Each is a few frames on loopback (measured: 0.0-0.1 s); 0.6 s
#   allows a loaded 2-core box.
# FFmpeg's WHIP muxer cannot act on a PLI (it has no encoder), so when the
# recorder subscribes after FFmpeg's first IDR (a race: the first frames
# follow the connection within milliseconds) its video starts at the next
# IDR: up to one GOP (FFMPEG_GOP_SECONDS, ffmpeg_whip.py's g = 2 x fps)
# later. Its audio has no such excuse.
RECORDED_OVER = 0.15
RECORDED_UNDER = 0.6
FFMPEG_GOP_SECONDS = 2.0


def duration_problems(got: dict, published: float, under: dict | None = None,
                      over: dict | None = None) -> list[str]:
    """Each kind's recorded total within [published - RECORDED_UNDER (or
    `under[kind]`), published + RECORDED_OVER (+ `over[kind]`)]."""
    out = []
    for kind, (durations, total) in got.items():
        low = published - (under or {}).get(kind, RECORDED_UNDER)
        high = published + RECORDED_OVER + (over or {}).get(kind, 0.0)
        if not low <= total <= high:
            out.append(f"{kind}: recorded {total} s {durations}, published {published:.3f} s "
                       f"(allowed {low:.3f}..{high:.3f})")
    return out


def clock_events(d) -> dict:
    """kiroku's recorder timeline events (docs/recording.md): re-anchors on
    the publisher's sender reports etc., for the figures."""
    from kiroku_e2e import metric_samples
    return {labels.get("event"): v for labels, v in
            metric_samples(d.metrics_text(), "kiroku_recorder_clock_events_total") if v}


def test_gstreamer_webrtcbin_with_its_own_rsa_certificate_records(clientd, gst_python):
    """GStreamer 1.22 webrtcbin with its own RSA-2048 DTLS certificate and a
    loopback host candidate (libnice gathers none by itself) publishes H.264 +
    Opus for 8 s as GStreamer's WebRTC elements do (x264enc tune=zerolatency,
    rtph264pay config-interval=-1): the user's video (H.264) and audio (AAC)
    playlists decode without an error and last as long as webrtcbin was
    connected, to RECORDED_UNDER/OVER.

    Diagnosed against kiroku as of this test's writing (see the report in the
    failure message): (1) rtph264pay config-interval=-1 with x264's sliced
    threads puts SPS/PPS before each IDR slice, kiroku writes such access
    units as they come, and FFmpeg then splits every IDR picture in two
    ("corrupt decoded frame"); (2) GStreamer 1.22's sender reports carry an
    RTP time that runs at about twice the clock rate (rtpsession extrapolates
    from a running time of "none"), kiroku re-anchors each track on them
    seconds into the past, and then writes video frames with repeated PTS and
    drops audio (0.3-3 s of 8 s lost, "reanchor" in the timeline events)."""
    d, receiver = clientd
    user = "gst_rsa"
    room = ROOM_OF[user]
    task_id = start_task(d, room)
    client = gst_client(gst_python, whip_url(d.url, APP_ID, room, user), "--local-address", "127.0.0.1") \
        .finish(GST_PUBLISH_SECONDS + 40)
    rep = client.report
    assert client.rc == 0 and rep and rep["ok"], client.output()
    got, problems = check_single_stream(end_task(d, receiver, task_id), room, user)
    published = rep["published_seconds"]
    figures = (f"gstreamer ({rep['gstreamer']}): connected for {published:.3f} s, RTP sent {rep['sent']}, "
               f"recorded (segments, sum) {got}, kiroku timeline events {clock_events(d)}")
    print(figures)
    # webrtcbin's live sources start before the handshake and it may queue
    # what they make meanwhile and send it once connected, so a recording
    # can rightly hold more than the time connected (measured: audio 8.5 s
    # of 8.0 s connected on a loaded 2-core CI box; 8.36 s or 8.02 s of
    # 8.006 s here, run to run). The bound: what the sources made in all.
    # GStreamer's packets-sent counts one 20 ms Opus frame per audio packet
    # (gst_whip.py's opusenc frame-size=20), including any sent before the
    # keys existed and dropped, so it is an upper bound; both test sources
    # start together, so it bounds video too.
    made = rep["sent"].get("audio", 0) * 0.020
    backlog = max(0.0, made - published)
    problems += duration_problems(got, published, over={"audio": backlog, "video": backlog})
    assert not problems, f"{figures}\n" + "\n".join(problems)


def test_ffmpeg_whip_with_its_own_p224_certificate_records(clientd, pyav_python):
    """FFmpeg 8.1's WHIP muxer (PyAV 18.1) with the P-224 certificate it makes itself publishes
    H.264 + Opus for 8 s: the user's video (H.264) and audio (AAC) playlists
    decode without an error; audio lasts as long as FFmpeg sent media, video
    too, less at most one GOP at the start (see FFMPEG_GOP_SECONDS)."""
    d, receiver = clientd
    user = "ffmpeg_p224"
    room = ROOM_OF[user]
    task_id = start_task(d, room)
    client = ffmpeg_client(pyav_python, whip_url(d.url, APP_ID, room, user)).finish(FFMPEG_PUBLISH_SECONDS + 40)
    rep = client.report
    assert client.rc == 0 and rep and rep["ok"], client.output()
    got, problems = check_single_stream(end_task(d, receiver, task_id), room, user)
    published = rep["published_seconds"]
    waiting = metric_baseline(d.metrics_text(), "kiroku_ingest_frame_drops_total", {"reason": "video_overflow"})
    figures = (f"ffmpeg (PyAV {rep['pyav']}, libavformat {rep['libavformat']}): sent media for {published:.3f} s "
               f"({rep['video_frames']} video frames at {rep['fps']} fps, {rep['audio_frames']} Opus frames), "
               f"handshake {rep['connected_at'] - client.started:.3f} s after start, recorded (segments, sum) {got}, "
               f"kiroku timeline events {clock_events(d)}, video frames kiroku dropped for the recorder (waiting for "
               f"a key frame) {waiting:.0f}")
    print(figures)
    problems += duration_problems(got, published, {"video": FFMPEG_GOP_SECONDS + RECORDED_UNDER})
    assert not problems, f"{figures}\n" + "\n".join(problems)


def test_ffmpeg_whip_with_a_p521_certificate_is_refused_clearly(clientd, pyav_python):
    """A peer certificate kiroku's DTLS cannot verify (ECDSA on P-521: it
    verifies RSA, P-224, P-256 and P-384) ends the session at once as
    dtls_failed with a WARN line naming the user and the cause, and the
    client fails (its handshake watchdog) instead of waiting 30 s."""
    d, _ = clientd
    user = "ffmpeg_p521"
    baseline = d.metric_baseline("kiroku_whip_sessions_ended_total", {"reason": "dtls_failed"})
    client = ffmpeg_client(pyav_python, whip_url(d.url, APP_ID, ROOM_OF[user], user), "--gen-cert", "secp521r1",
                           "--connect-timeout", str(REFUSED_CONNECT_TIMEOUT))
    got = check_refused(d, client, user, baseline)
    print(f"ffmpeg P-521 certificate refused: {got}")
