#!/usr/bin/env python3
"""Publish a test pattern and a tone to a WHIP endpoint with FFmpeg's WHIP
muxer (FFmpeg 8, as bundled in PyAV's wheels: tested with `pip install 'av==18.1.*'`),
libx264 (baseline, no B-frames) and libopus.

    ffmpeg_whip.py --url http://127.0.0.1:8080/whip/1400000001/1234/alice --duration 8

FFmpeg's WHIP muxer does its WHIP POST, ICE and DTLS handshakes while the
header is written; a failure there (e.g. `ice_timeout`, a DTLS failure)
raises. Then it packetizes and sends the encoded frames for --duration
seconds, in real time.

Exit status: 0 when the handshake succeeded, every frame was sent and (for a
kiroku WHIP URL, unless --no-verify-rooms) kiroku's `GET /v1/rooms` shows
frames for the published tracks; 1 with a reason on stderr (a line starting
with FAIL:) otherwise.

Unless the handshake watchdog ends the process (then only the FAIL: line),
the last line on stdout is one JSON object (for tests): `ok`, `reason`,
`connected_at` (Unix s when the WHIP/ICE/DTLS handshake finished),
`media_start` / `media_end` (Unix s of the first frame handed to the
encoders and of the last packet muxed, i.e. sent), `published_seconds`
(media_end - media_start), `stopped_at` (Unix s just before closing the
output, which sends the WHIP DELETE), `video_frames` / `audio_frames`
(frames encoded: video_frames / fps and audio_frames * 0.02 are the media
time sent), `packets` (muxed per kind), `fps`.

Run it with the repository's venv (`.venv/bin/python`, which has PyAV from
tests/e2e/requirements.txt), not Debian's python3.

--cert/--key hand FFmpeg a DTLS certificate (PEM) instead of the one it
generates; --gen-cert CURVE makes one with the `openssl` CLI (e.g. prime256v1).
FFmpeg's GnuTLS backend (the one PyAV's wheels use) generates an ECDSA key
with gnutls_sec_param_to_pk_bits(ECDSA, MEDIUM) = 224 bits, i.e. a P-224
certificate. Stock dimpl (str0m's DTLS) refuses it ("unsupported EC curve");
kiroku's patched dimpl verifies it (vendor/README.md). --gen-cert secp521r1
makes one kiroku cannot verify (the refused-handshake test).

Needs: PyAV whose wheel bundles FFmpeg >= 8 with the WHIP muxer (tested: av 18.1.0,
libavformat 62.12), the openssl CLI for --gen-cert.
"""

from __future__ import annotations

import argparse
import atexit
import faulthandler
import fractions
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import av

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kiroku_status  # noqa: E402


def log(*a):
    print(f"[ffmpeg_whip {time.monotonic():.3f}]", *a, file=sys.stderr, flush=True)


def gen_cert(curve: str, folder: str) -> tuple[str, str]:
    key = os.path.join(folder, "whip-key.pem")
    cert = os.path.join(folder, "whip-cert.pem")
    subprocess.run(["openssl", "ecparam", "-name", curve, "-genkey", "-noout", "-out", key], check=True)
    subprocess.run(["openssl", "req", "-new", "-x509", "-key", key, "-out", cert, "-days", "30",
                    "-subj", "/CN=ffmpeg-whip", "-sha256"], check=True)
    return cert, key


def start_watchdog(seconds: float, message: str) -> int:
    """A child process that writes `message` to stderr after `seconds`."""
    pid = os.fork()
    if pid == 0:
        try:
            time.sleep(seconds)
            os.write(2, message.encode())
        finally:
            os._exit(0)
    return pid


def stop_watchdog(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)


def frame_pattern(n: int, w: int, h: int) -> tuple[bytes, bytes, bytes]:
    """A moving gray bar on a dark background, and neutral chroma."""
    y = bytearray([40]) * (w * h)
    x0 = (n * 8) % w
    bar = bytes([220]) * min(32, w - x0)
    for row in range(h):
        off = row * w + x0
        y[off:off + len(bar)] = bar
    c = bytes([128]) * ((w // 2) * (h // 2))
    return bytes(y), c, c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="WHIP endpoint URL")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of media to publish")
    ap.add_argument("--token", help="Bearer token (FFmpeg's `authorization` option)")
    ap.add_argument("--handshake-timeout-ms", type=int, default=10000,
                    help="FFmpeg's handshake_timeout: ICE + DTLS")
    ap.add_argument("--connect-timeout", type=float, default=20.0,
                    help="give up (exit 1) when the WHIP/ICE/DTLS handshake has not finished by then: "
                         "FFmpeg's GnuTLS DTLS handshake blocks up to 60 s whatever handshake_timeout says")
    ap.add_argument("--dtls-active", action="store_true",
                    help="whip_flags=dtls_active: FFmpeg offers setup:active (it is the DTLS client)")
    ap.add_argument("--cert", help="DTLS certificate PEM (FFmpeg's cert_file)")
    ap.add_argument("--key", help="DTLS private key PEM (FFmpeg's key_file)")
    ap.add_argument("--gen-cert", metavar="CURVE",
                    help="generate a certificate on this OpenSSL curve (prime256v1, secp384r1, secp224r1)")
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--fps", type=int, default=15)
    ap.add_argument("--no-audio", action="store_true")
    ap.add_argument("--no-video", action="store_true")
    ap.add_argument("--no-verify-rooms", action="store_true",
                    help="do not check kiroku's GET /v1/rooms for the published frames")
    ap.add_argument("--loglevel", default="verbose", help="FFmpeg log level (quiet, info, verbose, debug, trace)")
    args = ap.parse_args()

    if "whip" not in av.formats_available:
        print(f"FAIL: this PyAV/FFmpeg ({av.__version__}, libavformat "
              f"{av.library_versions['libavformat']}) has no WHIP muxer", file=sys.stderr)
        return 1
    # FFmpeg's own stderr logger: PyAV's Python-logging bridge stays silent
    # while the blocking WHIP handshake holds the GIL.
    av.logging.restore_default_callback()
    av.logging.set_libav_level(getattr(av.logging, args.loglevel.upper(), av.logging.VERBOSE))

    tmp = tempfile.mkdtemp(prefix="ffmpeg-whip-")
    atexit.register(shutil.rmtree, tmp, True)
    opts = {"handshake_timeout": str(args.handshake_timeout_ms), "strict": "experimental"}
    if args.token:
        opts["authorization"] = args.token
    if args.dtls_active:
        opts["whip_flags"] = "dtls_active"
    cert, key = args.cert, args.key
    if args.gen_cert:
        cert, key = gen_cert(args.gen_cert, tmp)
    if cert or key:
        if not (cert and key):
            ap.error("--cert and --key go together")
        opts["cert_file"], opts["key_file"] = cert, key

    log(f"PyAV {av.__version__}, libavformat {av.library_versions['libavformat']}; options {opts}")
    try:
        out = av.open(args.url, mode="w", format="whip", container_options=opts)
    except av.FFmpegError as e:
        print(f"FAIL: opening the WHIP output: {e}", file=sys.stderr)
        return 1

    vs = aus = None
    if not args.no_video:
        vs = out.add_stream("libx264", rate=args.fps)
        vs.width, vs.height, vs.pix_fmt = args.width, args.height, "yuv420p"
        vs.codec_context.options = {"profile": "baseline", "preset": "ultrafast", "tune": "zerolatency",
                                    "bf": "0", "g": str(args.fps * 2)}
        vs.codec_context.max_b_frames = 0
    if not args.no_audio:
        aus = out.add_stream("libopus", rate=48000, layout="stereo")

    t0 = time.monotonic()
    sent = {"video": 0, "audio": 0}
    timing: dict = {"connected_at": None, "media_start": None, "media_end": None, "stopped_at": None}
    vn = an = 0

    def report(ok: bool, why: str) -> None:
        published = (timing["media_end"] - timing["media_start"]) \
            if timing["media_end"] is not None and timing["media_start"] is not None else None
        print(json.dumps({"client": "ffmpeg", "ok": ok, "reason": why, **timing, "published_seconds": published,
                          "video_frames": vn, "audio_frames": an, "packets": sent, "fps": args.fps,
                          "pyav": av.__version__, "libavformat": list(av.library_versions["libavformat"])}),
              flush=True)

    try:
        # The header carries the WHIP exchange: POST, ICE, DTLS, SRTP keys.
        # PyAV holds the GIL meanwhile (and FFmpeg's GnuTLS DTLS handshake
        # blocks up to 60 s whatever handshake_timeout says), so no Python
        # thread or signal handler runs: a forked watchdog prints the reason
        # and faulthandler's C timer ends the process with status 1.
        watchdog = start_watchdog(
            args.connect_timeout,
            f"FAIL: the WHIP/ICE/DTLS handshake did not finish in {args.connect_timeout}s "
            "(kiroku ends such a session as dtls_failed and logs 'DTLS handshake with the publisher failed' "
            "... 'unsupported EC curve' when FFmpeg's GnuTLS made its usual P-224 DTLS certificate: "
            "try --gen-cert prime256v1)\n")
        faulthandler.dump_traceback_later(args.connect_timeout + 0.3, exit=True)
        try:
            out.start_encoding()
        finally:
            faulthandler.cancel_dump_traceback_later()
            stop_watchdog(watchdog)
        log(f"WHIP handshake done in {time.monotonic() - t0:.2f}s")
        timing["connected_at"] = time.time()
        start = time.monotonic()
        timing["media_start"] = time.time()
        vn = an = 0
        samples = 960
        while True:
            now = time.monotonic() - start
            if now >= args.duration:
                break
            due_v = vs is not None and vn / args.fps <= now
            due_a = aus is not None and an * samples / 48000 <= now
            if due_v:
                f = av.VideoFrame(args.width, args.height, "yuv420p")
                for plane, data in zip(f.planes, frame_pattern(vn, args.width, args.height)):
                    plane.update(data)
                f.pts = vn
                f.time_base = fractions.Fraction(1, args.fps)
                for p in vs.encode(f):
                    if os.environ.get("FFMPEG_WHIP_DEBUG_PTS") and vn < 3:
                        log(f"video packet pts={p.pts} dts={p.dts} tb={p.time_base} stream tb={vs.time_base}")
                    out.mux(p)
                    sent["video"] += 1
                vn += 1
            if due_a:
                pcm = bytearray()
                for i in range(samples):
                    v = int(8000 * math.sin(2 * math.pi * 440 * (an * samples + i) / 48000))
                    b = v.to_bytes(2, "little", signed=True)
                    pcm += b + b
                af = av.AudioFrame(format="s16", layout="stereo", samples=samples)
                af.planes[0].update(bytes(pcm))
                af.sample_rate = 48000
                af.pts = an * samples
                af.time_base = fractions.Fraction(1, 48000)
                for p in aus.encode(af):
                    out.mux(p)
                    sent["audio"] += 1
                an += 1
            if not due_v and not due_a:
                time.sleep(0.002)
        for s, k in ((vs, "video"), (aus, "audio")):
            if s is not None:
                for p in s.encode(None):
                    out.mux(p)
                    sent[k] += 1
        timing["media_end"] = time.time()
    except (av.FFmpegError, OSError) as e:
        why = f"after {time.monotonic() - t0:.1f}s, packets muxed {sent}: {e}"
        print(f"FAIL: {why}", file=sys.stderr)
        try:
            out.close()
        except Exception:  # noqa: BLE001 - closing a failed output
            pass
        report(False, why)
        return 1

    verdict, server = 0, ""
    if not args.no_verify_rooms and kiroku_status.parse_whip_url(args.url):
        try:
            tracks = kiroku_status.user_tracks(args.url) or {}
        except OSError as e:
            tracks, server = {}, f"; /v1/rooms failed: {e}"
        if tracks:
            server = "; kiroku shows " + ", ".join(f"{k}: {t['frames']} frames" for k, t in sorted(tracks.items()))
        video_kind = "aux_video" if kiroku_status.parse_whip_url(args.url)["aux"] else "main_video"
        want = ([video_kind] if vs is not None else []) + (["audio"] if aus is not None and video_kind == "main_video" else [])
        missing = [k for k in want if not tracks.get(k, {}).get("frames")]
        if missing:
            verdict = 1
            server += f"; no frames at kiroku for {missing}"
    timing["stopped_at"] = time.time()
    out.close()  # sends the WHIP DELETE
    msg = f"published {sent} packets in {args.duration}s{server}"
    print(("OK: " if verdict == 0 else "FAIL: ") + msg, file=sys.stdout if verdict == 0 else sys.stderr)
    report(verdict == 0, msg)
    return verdict


if __name__ == "__main__":
    sys.exit(main())
