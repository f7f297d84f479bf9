#!/usr/bin/env python3
"""What the live heap grew by between two stretches of one heaptrack capture.

    bench/heaptrack_windows.py CAPTURE.zst FROM-TO FROM-TO [--top N]

`heaptrack_print` shows a capture's peak and what was never freed, not how
the heap changed while a daemon ran, and one snapshot of a recording daemon
lands anywhere on the saw its open segments make (each stream's buffer fills
for a segment's length and is freed at the cut). This reads heaptrack's
interpreted trace (the `.zst` that `heaptrack -o` writes; see
`bench/soak.py --daemon-wrapper "heaptrack -o FILE"`), samples the live
allocations every 5 s of the capture's clock, averages them over each
window (seconds, e.g. `150-450 1450-1790`), and prints the totals and, for
the first window against the last, the allocation sites (leaf frames first,
with file and line) that grew or shrank the most.

The trace's lines used: `s` strings, `i` instruction pointers with their
inlined frames (function, file, line as string indices), `t` trace nodes
(ip, parent), `a` allocation infos (size, trace), `+`/`-` an allocation or
free of an allocation info, `c` the capture's clock in ms; numbers are hex.
"""
from __future__ import annotations

import argparse
import collections
import subprocess
import sys

SAMPLE_EVERY_MS = 5000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture")
    ap.add_argument("windows", nargs="+", metavar="FROM-TO", help="seconds of the capture's clock")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--frames", type=int, default=8, help="frames shown per site")
    args = ap.parse_args()
    windows = []
    for w in args.windows:
        a, _, b = w.partition("-")
        windows.append((float(a) * 1000, float(b) * 1000))

    strings = [""]
    ips: list[list[tuple[int, int, int]]] = [[]]
    traces = [(0, 0)]
    allocs: list[tuple[int, int]] = []
    live: list[int] = []
    sums: list[list[int] | None] = [None] * len(windows)
    counts = [0] * len(windows)
    next_sample = 0
    now = 0
    reader = subprocess.Popen(["zstdcat", "-q", args.capture], stdout=subprocess.PIPE, bufsize=1 << 20)
    assert reader.stdout is not None
    for raw in reader.stdout:
        kind = raw[:1]
        if kind == b"+":
            live[int(raw[2:], 16)] += 1
        elif kind == b"-":
            live[int(raw[2:], 16)] -= 1
        elif kind == b"a":
            _, size, trace = raw.split()
            allocs.append((int(size, 16), int(trace, 16)))
            live.append(0)
        elif kind == b"t":
            _, ip, parent = raw.split()
            traces.append((int(ip, 16), int(parent, 16)))
        elif kind == b"i":
            parts = raw.split()
            ips.append([(int(parts[k], 16), int(parts[k + 1], 16), int(parts[k + 2], 16))
                        for k in range(3, len(parts) - 2, 3)])
        elif kind == b"s":
            text = raw.decode("utf-8", "replace").rstrip("\n").split(" ", 2)
            strings.append(text[2] if len(text) > 2 else "")
        elif kind == b"c":
            now = int(raw[2:], 16)
            if now < next_sample:
                continue
            next_sample = now + SAMPLE_EVERY_MS
            for k, (a, b) in enumerate(windows):
                if a <= now < b:
                    acc = sums[k]
                    if acc is None:
                        acc = sums[k] = []
                    acc.extend([0] * (len(live) - len(acc)))
                    for i, n in enumerate(live):
                        if n:
                            acc[i] += n
                    counts[k] += 1
    reader.wait()
    print(f"capture read to {now / 1000:.1f} s, {len(allocs)} allocation sites", file=sys.stderr)

    def mean_bytes_by_trace(k: int) -> collections.Counter:
        acc = sums[k] or []
        out: collections.Counter = collections.Counter()
        for i, n in enumerate(acc):
            if n:
                size, trace = allocs[i]
                out[trace] += size * n / counts[k]
        return out

    def site(trace: int) -> str:
        frames: list[str] = []
        while trace and len(frames) < args.frames:
            ip, parent = traces[trace]
            for fn, file, line in reversed(ips[ip]):
                frames.append(f"{strings[fn][-80:]} @{strings[file].rsplit('/', 1)[-1]}:{line}")
            trace = parent
        return " <- ".join(frames[: args.frames])

    means = []
    for k, (a, b) in enumerate(windows):
        if not counts[k]:
            print(f"{a / 1000:.0f}-{b / 1000:.0f} s: no samples (the capture ends at {now / 1000:.0f} s)")
            continue
        m = mean_bytes_by_trace(k)
        means.append(((a, b), m))
        print(f"{a / 1000:.0f}-{b / 1000:.0f} s: live heap {sum(m.values()) / 2**20:.2f} MiB "
              f"(mean of {counts[k]} samples)")
    if len(means) < 2:
        return 0
    (fa, first), (la, last) = means[0], means[-1]
    by_site: collections.Counter = collections.Counter()
    for trace in set(first) | set(last):
        by_site[site(trace)] += last.get(trace, 0) - first.get(trace, 0)
    net = sum(by_site.values())
    print(f"\n{fa[0] / 1000:.0f}-{fa[1] / 1000:.0f} s -> {la[0] / 1000:.0f}-{la[1] / 1000:.0f} s: "
          f"{net / 2**20:+.2f} MiB")
    for name, delta in by_site.most_common(args.top):
        print(f"  {delta / 2**20:+8.2f} MiB  {name}")
    print("  shrank the most:")
    for name, delta in sorted(by_site.items(), key=lambda kv: kv[1])[: max(3, args.top // 3)]:
        print(f"  {delta / 2**20:+8.2f} MiB  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
