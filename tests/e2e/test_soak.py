"""Soak (issue 19), the 5-minute version of bench/soak.py against the binary
under test (the debug build in the README's test command).

8 single-stream two-user tasks (what this debug build carries with room to
spare; the hour-long benchmark sizes itself from /v1/capacity) on S3
storage (moto behind a relay), for 5 minutes: publishers joining and
leaving throughout, a ModifyCloudRecording every 30 s, and S3 refusing
connections for the middle 60 s. Every check of the benchmark must pass —
no frame lost, every callback delivered, every segment in the bucket, the
outage's backlog drained — except two. Segments: the benchmark wants every
one stored within 1 s of its cut; here, sharing 2 cores with the rest of
the test run in a debug build, 99 % must be (a full run: 907 of 911). And
"RSS growth < 5 %": over 5 minutes the growth from the warm-up is
the allocator settling and the outage's backlog (measured: +7.8 %, of
which +6.2 % during the outage), which says nothing about an hour. What
this run can say about a leak is asserted instead: once the backlog has
drained, the last third of the run grows the RSS by under 3 % (measured:
+0.3 %).
"""

from __future__ import annotations

import sys

from kiroku_e2e import KIROKU_BIN, REPO

sys.path.insert(0, str(REPO / "bench"))
import soak  # noqa: E402

MINUTES = 5
TASKS = 8


def test_five_minutes_of_churn_and_an_s3_outage_lose_nothing(tmp_path):
    r = soak.run_soak(KIROKU_BIN, MINUTES, TASKS, work=tmp_path)
    soak.print_result(r)
    relaxed = ("RSS growth < 5 %", "segments stored ≤ 1 s")
    failed = [f"{c.name}: {c.detail}" for c in r.checks if c.ok is False and c.name not in relaxed]
    assert not failed, "\n".join(failed)
    for name in ("frames lost = 0", "callbacks delivered = expected", "files uploaded = segments written",
                 "backlog drained after the outage"):
        assert r.check(name).ok is True, (name, r.check(name).detail)
    latency = r.figures["segment_latency"]
    assert latency["observations"] > 0 and latency["within_1s"] >= 0.99 * latency["observations"], latency
    total = MINUTES * 60
    # The daemon handed the heap's free pages back every 30 s (daemon/src/heap.rs).
    assert r.figures["heap_trims"] is not None and r.figures["heap_trims"] >= total / 30 - 2, r.figures["heap_trims"]
    # After each trim the daemon reports malloc's live heap; it is part of the RSS.
    live = r.figures["heap_in_use_end_mib"]
    assert isinstance(live, float) and 1 < live < r.figures["rss_end_mib"], (live, r.figures["rss_end_mib"])
    last_third = [x["rss_mib"] for x in r.series if x["t"] >= total * 2 / 3]
    assert len(last_third) >= 5, r.series
    growth = last_third[-1] / last_third[0] - 1
    assert growth < 0.03, f"RSS {last_third[0]} -> {last_third[-1]} MiB over the last third ({growth:.1%})"
