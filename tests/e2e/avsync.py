"""A/V sync measured from outside: flashes and beeps found in recorded files.

The publisher (independent_publisher.py, `pattern="sync"`) sends a dark
picture that flashes a user's colour, and silence that beeps at the user's
tone, at the same media instants (the marks). This module decodes what a
recorder wrote (HLS playlists, MP4s) with PyAV, i.e. FFmpeg's demuxers and
decoders, the way a player would, and finds:

- flash onsets: the presentation time of the first frame of each flash, from
  the mean luma of a region of the picture (the whole picture, or one user's
  tile of a mixed picture); a region's user is told by the flash's chroma;
- beep onsets: from the complex envelope of the audio at the user's tone (the
  signal mixed down with e^{-2πift} and averaged over 5 ms), the instant the
  envelope's rise reaches half its plateau, plus half the window: the first
  sample of the beep, within about 0.15 ms for a tone alone and 0.4 ms next
  to another user's beep at a tone 800 Hz away (the 5 ms window has its
  spectral nulls every 200 Hz, so a steady neighbour leaves nothing; what
  is left is the ripple of a part-filled window);
- offsets: each flash paired with the nearest beep (audio minus video, ms) or
  with the nearest flash of another user, within a window far below the
  spacing of the marks, so that a pairing is never with the neighbouring mark.

Nothing here knows how kiroku works; the only inputs are files and what the
publisher says it sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

# (x0, y0, x1, y1) as fractions of the picture's width and height.
Rect = tuple[float, float, float, float]
# The whole picture but its top band (where the publisher's dim square moves).
WHOLE: dict[str, Rect] = {"picture": (0.0, 0.2, 1.0, 1.0)}
ENVELOPE_MS = 5.0
# No flash or beep is paired with anything further than this (the marks are
# at least 600 ms apart with SyncClip's defaults).
PAIR_WINDOW_S = 0.25


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------

@dataclass
class VideoTrace:
    """Per decoded frame: presentation time (s) and, per region, mean luma
    and mean chroma (U, V), all 8-bit."""
    times: np.ndarray
    luma: dict[str, np.ndarray]
    chroma: dict[str, np.ndarray]  # region → (frames, 2)


@dataclass
class AudioTrace:
    """Decoded audio, channels averaged: sample i is at `start + i / rate` s."""
    rate: int
    start: float
    pcm: np.ndarray  # float32, -1..1


def _plane(frame: av.VideoFrame, i: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, dtype=np.uint8).reshape(p.height, p.line_size)[:, :p.width]


def _crop(img: np.ndarray, r: Rect) -> np.ndarray:
    h, w = img.shape
    return img[int(r[1] * h):int(r[3] * h), int(r[0] * w):int(r[2] * w)]


def decode_video(path: Path | str, regions: dict[str, Rect] = WHOLE) -> VideoTrace:
    """Every frame of the first video stream (PyAV), in presentation order."""
    times, luma, chroma = [], {k: [] for k in regions}, {k: [] for k in regions}
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in c.decode(stream):
            if frame.pts is None:
                continue
            if frame.format.name not in ("yuv420p", "yuvj420p"):
                frame = frame.reformat(format="yuv420p")
            y, u, v = _plane(frame, 0), _plane(frame, 1), _plane(frame, 2)
            times.append(float(frame.pts * frame.time_base))
            for k, r in regions.items():
                luma[k].append(float(_crop(y, r).mean()))
                chroma[k].append((float(_crop(u, r).mean()), float(_crop(v, r).mean())))
    order = np.argsort(times, kind="stable")
    return VideoTrace(np.asarray(times)[order], {k: np.asarray(x)[order] for k, x in luma.items()},
                      {k: np.asarray(x).reshape(-1, 2)[order] for k, x in chroma.items()})


def decode_audio(path: Path | str) -> AudioTrace:
    """The first audio stream, each decoded frame placed at its own pts (a gap
    stays a gap of silence; an overlap keeps the later frame)."""
    pieces, rate = [], None
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        for frame in c.decode(stream):
            if frame.pts is None:
                continue
            rate = frame.sample_rate
            pcm = frame.to_ndarray().astype(np.float32)
            if frame.format.is_packed:
                pcm = pcm.reshape(-1, len(frame.layout.channels)).T
            if frame.format.name.startswith("s16"):
                pcm = pcm / 32768.0
            pieces.append((float(frame.pts * frame.time_base), pcm.mean(axis=0)))
    assert pieces, f"{path}: no audio decoded"
    start = min(t for t, _ in pieces)
    end = max(round((t - start) * rate) + len(p) for t, p in pieces)
    out = np.zeros(end, dtype=np.float32)
    for t, p in pieces:
        i = round((t - start) * rate)
        out[i:i + len(p)] = p
    return AudioTrace(rate, start, out)


# --------------------------------------------------------------------------
# Finding the marks
# --------------------------------------------------------------------------

def flash_onsets(times: np.ndarray, luma: np.ndarray, min_jump: float = 40.0) -> np.ndarray:
    """Times of the frames where the luma rises above the midpoint between the
    usual (median) level and the brightest frame's, after a frame below it.
    None if nothing rises `min_jump` above the usual level."""
    if len(luma) == 0:
        return np.array([])
    lo, hi = float(np.median(luma)), float(luma.max())
    if hi - lo < min_jump:
        return np.array([])
    bright = luma > (lo + hi) / 2
    rises = np.flatnonzero(bright[1:] & ~bright[:-1]) + 1
    return times[rises]


def flash_chroma(trace: VideoTrace, region: str) -> tuple[float, float]:
    """Mean (U, V) of a region's flash frames (above the luma midpoint)."""
    luma = trace.luma[region]
    lo, hi = float(np.median(luma)), float(luma.max())
    uv = trace.chroma[region][luma > (lo + hi) / 2]
    return tuple(uv.mean(axis=0)) if len(uv) else (128.0, 128.0)


def rgb_to_uv(rgb: tuple[int, int, int]) -> tuple[float, float]:
    """BT.601 limited-range chroma of an RGB colour (what libx264 is fed by
    PyAV's rgb24 → yuv420p conversion)."""
    r, g, b = rgb
    return 128 - 0.148 * r - 0.291 * g + 0.439 * b, 128 + 0.439 * r - 0.368 * g - 0.071 * b


def whose_flash(uv: tuple[float, float], colours: dict[str, tuple[int, int, int]]) -> str:
    """The user whose flash colour is nearest in chroma."""
    return min(colours, key=lambda u: np.hypot(*np.subtract(rgb_to_uv(colours[u]), uv)))


def _envelope(pcm: np.ndarray, rate: int, freq: float, length: int, chunk: int = 1 << 19) -> np.ndarray:
    """|mean of pcm·e^{-2πi f n / rate}| over samples [j, j + length), for each j."""
    n = len(pcm) - length + 1
    out = np.zeros(max(n, 0), dtype=np.float32)
    for j0 in range(0, max(n, 0), chunk):
        j1 = min(n, j0 + chunk)
        idx = np.arange(j0, j1 + length - 1)
        z = pcm[j0:j1 + length - 1].astype(np.float64) * np.exp(-2j * np.pi * freq / rate * idx)
        c = np.concatenate(([0], np.cumsum(z)))
        out[j0:j1] = np.abs(c[length:] - c[:-length]) / length
    return out


def beep_onsets(audio: AudioTrace, freq: float, min_gap_s: float = 0.2) -> np.ndarray:
    """Start times (s) of the beeps at `freq`.

    Candidate beeps are where the envelope exceeds a quarter of its maximum
    (runs closer than `min_gap_s` merged); a candidate whose plateau (the
    90th percentile of its run) is under a third of the median plateau is
    dropped (leakage, codec noise). For a steady tone switched on at sample
    s, the envelope at window start j is (j + window - s) / window of its
    plateau while the window fills: a straight line that reaches half the
    plateau at j = s - window / 2. The line is fitted to the envelope's rise
    between 20 % and 80 % of the plateau (steadier than one crossing against
    codec noise), and the onset is where it reaches half, plus half the
    window. What is left is the ripple that the tone's own 2f image and a
    neighbouring beep leave in a part-filled window (see the module
    docstring for its size).
    """
    length = max(8, round(audio.rate * ENVELOPE_MS / 1000))
    env = _envelope(audio.pcm, audio.rate, freq, length)
    if len(env) == 0 or env.max() <= 1e-4:
        return np.array([])
    above = np.flatnonzero(env > 0.25 * env.max())
    gap = round(min_gap_s * audio.rate)
    breaks = np.flatnonzero(np.diff(above) > gap)
    runs = list(zip(above[np.r_[0, breaks + 1]], above[np.r_[breaks, len(above) - 1]]))
    plateaus = [float(np.percentile(env[a:b + 1], 90)) for a, b in runs]
    floor = np.median(plateaus) / 3
    onsets = []
    for (a, b), plateau in zip(runs, plateaus):
        if plateau < floor:
            continue
        lo = max(0, a - length)  # the rise starts up to a window before the run
        rise = env[lo:min(b + 1, a + 2 * length)]
        top = lo + int(np.argmax(rise >= 0.8 * plateau))  # the first sample at 80 %
        j = np.arange(lo, top + 1)
        part = env[lo:top + 1]
        keep = part >= 0.2 * plateau
        if keep.sum() >= 3:
            slope, icept = np.polyfit(j[keep], part[keep], 1)
            half = (0.5 * plateau - icept) / slope
        else:  # a rise too steep to fit: interpolate the half crossing
            k = lo + int(np.argmax(rise >= 0.5 * plateau))
            half = k - 1 + (0.5 * plateau - env[k - 1]) / max(env[k] - env[k - 1], 1e-12)
        onsets.append(audio.start + (half + length / 2) / audio.rate)
    return np.asarray(onsets)


# --------------------------------------------------------------------------
# Pairing and figures
# --------------------------------------------------------------------------

def pair(ref: np.ndarray, other: np.ndarray, window: float = PAIR_WINDOW_S) -> tuple[np.ndarray, np.ndarray]:
    """Each `ref` instant with the nearest `other` instant within `window` s:
    (the paired ref instants, offsets other − ref in s). Unpaired refs are left out."""
    ref, other = np.sort(ref), np.sort(other)
    if len(ref) == 0 or len(other) == 0:
        return np.array([]), np.array([])
    i = np.clip(np.searchsorted(other, ref), 1, len(other) - 1) if len(other) > 1 else np.zeros(len(ref), int)
    left, right = other[np.maximum(i - 1, 0)], other[i]
    nearest = np.where(np.abs(left - ref) <= np.abs(right - ref), left, right)
    ok = np.abs(nearest - ref) <= window
    return ref[ok], (nearest - ref)[ok]


def align_to_marks(found: np.ndarray, sent: np.ndarray, tol: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Pairs instants found in a file with the marks sent (media or wall
    seconds, any constant apart): tries every shift that puts a found instant
    on a sent mark and keeps the one that pairs the most within `tol` s (the
    marks' irregular spacing makes the right shift the only one that pairs
    many). Returns (found, sent) of the pairs."""
    found, sent = np.sort(found), np.sort(sent)
    best: tuple[int, float] = (0, 0.0)
    for f in found[:5]:
        for s in sent:
            got, _ = pair(sent + (f - s), found, tol)
            if len(got) > best[0]:
                best = (len(got), f - s)
    if best[0] == 0:
        return np.array([]), np.array([])
    shifted, off = pair(sent + best[1], found, tol)
    return shifted + off, shifted - best[1]


# Drift is fitted over a minute or more only: over a short run the slope of
# offsets that are quantized to video frames says nothing.
DRIFT_MIN_SPAN_S = 60.0


@dataclass
class Stats:
    """Offsets (ms) of one class: p50 of the signed offsets, p99 and max of
    their magnitude, and the drift (slope of offset against time, ms/min;
    NaN over less than DRIFT_MIN_SPAN_S)."""
    n: int
    p50: float
    p99: float
    max: float
    drift: float

    @classmethod
    def of(cls, times_s: np.ndarray, offsets_ms: np.ndarray) -> "Stats":
        if len(offsets_ms) == 0:
            return cls(0, float("nan"), float("nan"), float("nan"), float("nan"))
        mag = np.abs(offsets_ms)
        span = float(np.ptp(times_s)) if len(times_s) else 0.0
        drift = float(np.polyfit(times_s, offsets_ms, 1)[0] * 60) if span >= DRIFT_MIN_SPAN_S else float("nan")
        return cls(len(offsets_ms), float(np.percentile(offsets_ms, 50)), float(np.percentile(mag, 99)),
                   float(mag.max()), drift)

    def row(self) -> str:
        drift = "-" if np.isnan(self.drift) else f"{self.drift:.2f}"
        return f"{self.n:5d} {self.p50:8.1f} {self.p99:8.1f} {self.max:8.1f} {drift:>9}"


STATS_HEADER = f"{'n':>5} {'p50':>8} {'p99|.|':>8} {'max|.|':>8} {'ms/min':>9}"


def av_offsets(flashes: np.ndarray, beeps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flash times, beep − flash in ms) for every flash with a beep nearby."""
    t, off = pair(flashes, beeps)
    return t, off * 1000.0


def rate_error(found: np.ndarray, sent: np.ndarray) -> float:
    """How fast a file's timeline runs against the publisher's: the slope of
    found mark times against sent mark times, minus 1 (0.001 = 0.1 % fast)."""
    if len(found) < 3:
        return float("nan")
    return float(np.polyfit(sent - sent[0], found - found[0], 1)[0] - 1)
