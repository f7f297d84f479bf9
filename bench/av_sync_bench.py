#!/usr/bin/env python3
"""A/V sync measured from outside (issue 19, item 7), over a long recording.

The scenario of tests/e2e/test_av_sync.py (tests/e2e/avsync_room.py), for
`--minutes` (default 10): two independent aiortc publishers start together in
one room, each flashing its own colour and beeping its own tone at the same
media instants (about 1 s apart, irregular); the room is recorded
single-stream with AvMerge and mixed (nine-grid) at once; `kiroku merge`
makes one MP4 per user. Every flash and beep is found in the files with
FFmpeg's decoders (tests/e2e/avsync.py).

Prints p50 (signed) / p99 / max (magnitude) and the drift (ms/min) of:
- beep − flash within each user, per output kind (goal: p99 ≤ 40 ms);
- user B's flash − user A's flash, less what their sends differ by;
- each mark's wall time in the file − when it was sent (video and audio
  apart: which side an offset comes from);
- each RTCP sender report the publishers sent: its wall time − when its
  RTP time's media instant was due (the sender side's own error);
and, per file, the marks found, the timeline's rate against the publisher's
(ppm), and its duration against the wall time it covers (goal: within 0.5 %).
Exits 1 if a goal is missed.

Usage (a release build is what an appliance runs; a debug build works):
    .venv/bin/python bench/av_sync_bench.py --kiroku target/release/kiroku [--minutes 10]
`--keep DIR` keeps the daemon's files and writes DIR/run.json;
`--measure DIR/run.json` measures a kept run again without recording;
`--stall-ms 150 --stall-every 5` blocks each publisher's event loop that long
that often (a starved sender, whose sender reports come late).
The publishers run in this process: on a busy machine their reports come
late too (the sender-report rows show it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))

import kiroku_e2e  # noqa: E402
from avsync_room import RECORDING_CONFIG, SyncRecording, measure, record_room  # noqa: E402
from kiroku_e2e import CallbackReceiver, Daemon, base_config, deep_merge, free_port  # noqa: E402

GOAL_MS = 40.0
DURATION_GOAL = 0.005


def record(args, work: Path) -> SyncRecording:
    kiroku_e2e.KIROKU_BIN = str(Path(args.kiroku).resolve())
    receiver = CallbackReceiver().start()
    cfg = deep_merge(base_config(work / "data", free_port(), receiver.url),
                     {"recording": RECORDING_CONFIG, "log": {"level": "warn"}})
    d = Daemon(work, cfg, name="avsync").start()
    try:
        def progress(done: float, total: float) -> None:
            print(f"  {done:6.0f} / {total:.0f} s", file=sys.stderr, flush=True)

        stall = (args.stall_ms / 1000, args.stall_every) if args.stall_ms else None
        return record_room(d, receiver, args.room, args.minutes * 60, fps=args.fps, mix_fps=args.mix_fps,
                           stall=stall, progress=progress)
    finally:
        rc = d.stop(timeout=30)
        receiver.stop()
        if rc != 0:
            print(f"warning: kiroku exited with {rc}\n{d.log_tail()}", file=sys.stderr)


def goals_missed(report) -> list[str]:
    missed = [f"{k}, {u}: A/V p99 {s.p99:.1f} ms > {GOAL_MS} ms" for k, u, s in report.within if not s.p99 <= GOAL_MS]
    missed += [f"{k}, {u}: {d:.3f} s for {w:.3f} s of wall time ({(d - w) / w * 100:+.3f} %)"
               for k, u, d, w in report.durations if not abs(d - w) <= DURATION_GOAL * w]
    missed += [f"{k}, {u}: {s} marks sent, {f} flashes and {b} beeps found"
               for k, u, s, f, b in report.coverage if not s == f == b]
    return missed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kiroku", default="target/release/kiroku", help="the kiroku binary")
    ap.add_argument("--minutes", type=float, default=10.0, help="media published (default 10)")
    ap.add_argument("--fps", type=int, default=30, help="the publishers' frame rate")
    ap.add_argument("--mix-fps", type=int, default=15,
                    help="the mixed output's VideoParams.Fps (default 15, the API's default)")
    ap.add_argument("--room", type=int, default=7501)
    ap.add_argument("--stall-ms", type=float, default=0,
                    help="block each publisher's event loop this long every --stall-every s (a starved sender)")
    ap.add_argument("--stall-every", type=float, default=10.0)
    ap.add_argument("--keep", type=Path, help="keep the run in this folder (else a temporary one)")
    ap.add_argument("--measure", type=Path, help="measure a kept run.json again instead of recording")
    args = ap.parse_args()

    t0 = time.monotonic()
    if args.measure:
        rec = SyncRecording.load(args.measure)
    elif args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        rec = record(args, args.keep)
        rec.save(args.keep / "run.json")
    else:
        with tempfile.TemporaryDirectory(prefix="avsync-") as tmp:
            rec = record(args, Path(tmp))
            report = measure(rec)
    if args.measure or args.keep:
        report = measure(rec)
    published = max(s.published for s in rec.sent.values())
    how = f"{args.fps} fps, mixed at {args.mix_fps} fps" if not args.measure else f"measured again: {args.measure}"
    if args.stall_ms and not args.measure:
        how += f", sender stalls of {args.stall_ms:.0f} ms every {args.stall_every:.0f} s"
    print(f"A/V sync bench: {published:.1f} s published by {len(rec.sent)} users, {how}; "
          f"{time.monotonic() - t0:.0f} s in all\n")
    print(report.table())
    missed = goals_missed(report)
    print("\n" + ("goals met (A/V p99 <= 40 ms within a user, durations within 0.5 %, every mark found)"
                  if not missed else "GOALS MISSED:\n  " + "\n  ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
