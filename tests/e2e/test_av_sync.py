"""A/V sync measured from outside (issue 19, item 7), on every kind of output.

Two independent publishers (aiortc, tests/e2e/independent_publisher.py in
sync mode, 30 fps like a browser) start their media at the same wall
instant; each flashes its own colour and beeps its own tone at the same
media instants, about once a second with an irregular jitter. The room is
recorded at once single-stream with AvMerge and mixed (nine-grid, 30 fps:
see MIX_FPS), and `kiroku merge` makes one MP4 per user from the
single-stream folder (tests/e2e/avsync_room.py). tests/e2e/avsync.py finds
every flash and beep in the files with FFmpeg's decoders (PyAV), as a player
sees them.

Checked, per output kind (single-stream HLS, merge MP4, mixed HLS):
- every mark sent is found once (flash and beep), and the file's timeline
  runs at the publisher's rate;
- within a user, beep − flash: p99 of the magnitude ≤ 40 ms (the issue's
  goal; LiveKit's own tests accept 300 ms at p80);
- between the two users, flash − flash less the difference of their sent
  times: p99 ≤ 40 ms in the single-stream files and MP4s (the issue sets no
  goal here; this is the within-user one), and in the mixed output 40 ms +
  one output frame: its pictures exist only at output frame times, and two
  instants any distance apart can fall on either side of one;
- each file lasts the wall time it covers (the short run's bound below; the
  bench checks 0.5 % over 10 minutes).
One recording serves every test of the module; the figures are printed.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from kiroku_e2e import CallbackReceiver

pytest.importorskip("aiortc", reason="pip install -r tests/e2e/requirements.txt (aiortc)")
import avsync  # noqa: E402
from avsync_room import KINDS, RECORDING_CONFIG, USERS, Report, measure, record_room  # noqa: E402

PUBLISH_SECONDS = 16.0
FPS = 30  # the publishers'
# The mixed output's rate. Not VideoParams.Fps's default of 15: a mixed
# picture exists only at output frame times, so at 15 fps up to half of
# 1/15 s (33 ms) of a flash's offset is the output's rate, not sync, and the
# goal's 40 ms leaves under 7 ms for the sender (a CI run: 32.3 ms of
# rounding + 11.4 ms between the sender's audio and video = 45 ms). At 30
# fps the rounding is at most 17 ms. bench/av_sync_bench.py measures 15 fps.
MIX_FPS = 30
GOAL_MS = 40.0
# Start-up: the recorder subscribes and asks for a key frame, aiortc sends
# one with its next frame (the room's tracks exist before the media starts,
# so the first frames are normally kept); stop: what is in flight at DELETE;
# the mixed output: whole frames, and the Delete's round trip. A clock-rate
# error would grow with the run; here the fixed costs dominate.
DURATION_TOLERANCE_S = 0.3


@pytest.fixture(scope="module")
def report(kiroku_module) -> Report:
    receiver = CallbackReceiver().start()
    try:
        d = kiroku_module("avsync", callback_url=receiver.url, recording=RECORDING_CONFIG)
        t0 = time.monotonic()
        rec = record_room(d, receiver, 7401, PUBLISH_SECONDS, fps=FPS, mix_fps=MIX_FPS)
        rep = measure(rec)
    finally:
        receiver.stop()
    print(f"\n{rep.table()}\nrecording, merge and analysis: {time.monotonic() - t0:.1f} s")
    return rep


def check_within(report: Report, kind: str) -> None:
    rows = [(u, s) for k, u, s in report.within if k == kind]
    assert sorted(u for u, _ in rows) == sorted(USERS), (kind, rows)
    for user, s in rows:
        sent = next(n for k, u, n, _, _ in report.coverage if (k, u) == (kind, user))
        assert s.n == sent, f"{kind}, {user}: {s.n} of {sent} flashes have a beep within 250 ms\n{report.table()}"
        assert s.p99 <= GOAL_MS, (f"{kind}, {user}: beep - flash p99 {s.p99:.1f} ms > {GOAL_MS} ms "
                                  f"(p50 {s.p50:+.1f} ms)\n{report.table()}")


def test_every_mark_is_found_once_in_every_output(report):
    assert {k for k, *_ in report.coverage} == set(KINDS), report.coverage
    for kind, user, sent, flashes, beeps in report.coverage:
        # Mark k = 1 is at about 1 s of media: every mark is in every file.
        assert sent >= PUBLISH_SECONDS - 2 and flashes == beeps == sent, (kind, user, sent, flashes, beeps)
    for kind, user, rate in report.rates:
        assert abs(rate) <= 0.005, (kind, user, rate)


def test_av_offset_within_a_user_in_the_single_stream_recording(report):
    check_within(report, KINDS[0])


def test_av_offset_within_a_user_in_the_merge_tools_mp4s(report):
    check_within(report, KINDS[1])


def test_av_offset_within_a_user_in_the_mixed_recording(report):
    """The same goal: the mixed picture is seen only at output frame times
    (1/MIX_FPS s apart), so a flash is shown up to half an output frame from
    its instant; the goal leaves 40 ms for that and the sender's own
    offsets (the Opus encoder's 6.5 ms look-ahead among them). The table's
    placement rows say which side an offset comes from."""
    check_within(report, KINDS[2])


def test_users_started_together_stay_together(report):
    assert {k for k, _ in report.between} == set(KINDS), report.between
    for kind, s in report.between:
        bound = GOAL_MS + (1000 / MIX_FPS if kind == KINDS[2] else 0)
        assert s.n >= PUBLISH_SECONDS - 2, (kind, s)
        assert s.p99 <= bound, f"{kind}: users apart p99 {s.p99:.1f} ms > {bound:.1f} ms\n{report.table()}"


def test_every_file_lasts_the_wall_time_it_covers(report):
    assert len(report.durations) == len(USERS) * 2 + 1, report.durations
    for kind, who, seconds, wall in report.durations:
        assert abs(seconds - wall) <= DURATION_TOLERANCE_S, (kind, who, seconds, wall)


def test_the_mark_detectors_on_signals_made_here():
    """avsync's own check, without kiroku: beeps of two tones 800 Hz apart,
    7 samples apart, in noise, at known samples and phases, are found within
    0.5 ms (the error left is the ripple of a part-filled window: about a
    sixth of the tone's period for a tone alone, measured ≤ 0.14 ms at
    600 Hz, ≤ 0.4 ms with the other beep); flashes at known frames are
    found exactly; pairing leaves out what has no partner near."""
    rate = 48000
    rng = np.random.default_rng(7)
    starts = (np.array([0.5, 1.3123, 2.01, 3.6667]) * rate).astype(int)
    pcm = rng.normal(0, 0.002, 5 * rate).astype(np.float32)
    k = np.arange(1920)
    for i, s in enumerate(starts):
        pcm[s:s + 1920] += 0.4 * np.sin(2 * np.pi * 600 * k / rate + i)
        pcm[s + 7:s + 7 + 1920] += 0.4 * np.sin(2 * np.pi * 1400 * k / rate)
    audio = avsync.AudioTrace(rate, 10.0, pcm)
    for freq, shift in ((600.0, 0), (1400.0, 7)):
        got = avsync.beep_onsets(audio, freq)
        want = 10.0 + (starts + shift) / rate
        assert len(got) == len(want) and np.abs(got - want).max() < 5e-4, (freq, got - want)
    times = np.arange(100) / 30
    luma = np.full(100, 20.0)
    luma[[10, 11, 40, 41, 77]] = 200
    assert list(avsync.flash_onsets(times, luma)) == [times[10], times[40], times[77]]
    t, off = avsync.av_offsets(np.array([1.0, 2.0, 3.0]), np.array([1.010, 2.5, 2.995]))
    assert list(t) == [1.0, 3.0] and np.allclose(off, [10.0, -5.0])
