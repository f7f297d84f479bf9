#!/usr/bin/env bash
# Everything that needs an accelerator, in one go, within 8 minutes: run it
# on a GPU machine from the repository root (the session's device tool runs
# commands there) and copy the summary into docs/performance.md with the
# date. It never prints a figure it did not measure: a part whose hardware
# is absent says so and is skipped.
#
#   bench/device.sh                       # builds release (cargo) unless the binaries are there
#   KIROKU_BIN_DIR=.devbin bench/device.sh  # binaries built elsewhere (a GPU machine without cargo)
#   OUT=/some/dir bench/device.sh
#
# KIROKU_BIN_DIR holds `kiroku` and `compositor-bench` (release, built with
# `--features kiroku/nvenc`) and, optionally, `kiroku-gpu-tests` (the GPU
# crate's test binary: `cargo test --release -p kiroku-gpu --features nvenc
# --no-run`), which runs its NVENC, NVDEC, CUDA and wgpu tests on the device.
#
# Parts:
# 1. probes: nvidia-smi, `kiroku doctor --json` (wgpu adapter, NVENC, NVDEC
#    with its H.264 limits), then the GPU crate's tests on the real device;
# 2. the wgpu compositor benchmark: 100 tasks × 25 tiles → 1080p per tick,
#    on the GPU and the CPU side by side (compositor-bench);
# 3. the capacity bench with the GPU compositor (`recording.compositor =
#    "gpu"`), quick windows: 25×360p→1080p15, the same with the CPU
#    compositor for the ratio, in the same run, then 4×360p→720p15 on the
#    GPU with the time left.
#
# $OUT ends with at most 6 files (the device tool brings back 8).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-${TMPDIR:-/tmp}/kiroku-device}"
BIN="${KIROKU_BIN_DIR:-target/release}"
mkdir -p "$OUT"
WORK="$(mktemp -d)"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
# DEVICE_MINUTES: a shorter budget for a dry run on a machine without a GPU.
deadline=$(( $(date +%s) + ${DEVICE_MINUTES:-8} * 60 ))
left() { echo $(( deadline - $(date +%s) )); }
min() { if [ "$1" -lt "$2" ]; then echo "$1"; else echo "$2"; fi; }

say "# kiroku device run, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) CPUs"
if [ ! -x "$BIN/kiroku" ] || [ ! -x "$BIN/compositor-bench" ]; then
  say "building release binaries (cargo build --release -p kiroku -p kiroku-bench --features kiroku/nvenc)"
  cargo build --release --locked -p kiroku -p kiroku-bench --features kiroku/nvenc >"$WORK/build.log" 2>&1 \
    || { tail -n 30 "$WORK/build.log" >>"$SUMMARY"; say "build failed"; exit 1; }
  BIN=target/release
fi
KIROKU="$BIN/kiroku"
# The NVIDIA Vulkan driver of a container that mounts it under
# /usr/local/nvidia, where the loader does not look by default.
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then export VK_DRIVER_FILES="$icd"; fi

say "## 1. probes"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,encoder.stats.sessionCount --format=csv,noheader 2>&1 \
    | sed 's/^/gpu: /' | tee -a "$SUMMARY"
else
  say "gpu: nvidia-smi not found (no NVIDIA driver here)"
fi
"$KIROKU" doctor --json >"$WORK/doctor.json" 2>/dev/null
python3 - "$WORK/doctor.json" <<'PY' | tee -a "$SUMMARY"
import json, sys
try:
    findings = json.load(open(sys.argv[1])).get("findings", [])
except Exception as e:  # a doctor that could not run says why
    print(f"doctor: unreadable output ({e})"); sys.exit(0)
for f in findings:
    if f.get("check") in ("gpu", "nvenc", "nvdec", "io_uring"):
        print(f"{f['check']}: {f.get('status')} — {f.get('detail')}")
PY
if [ -x "$BIN/kiroku-gpu-tests" ]; then
  # --nocapture: the NVENC/NVDEC tests print what the device answered.
  timeout 90 "$BIN/kiroku-gpu-tests" --test-threads 2 --nocapture >"$OUT/gpu-tests.txt" 2>&1
  rc=$?
  grep -E "^NVDEC|^NVENC|test result|FAILED|panicked" "$OUT/gpu-tests.txt" | head -n 20 | sed 's/^/gpu tests: /' | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || say "gpu tests exited $rc (see gpu-tests.txt)"
fi

say "## 2. compositor: 100 tasks x 25 tiles -> 1080p per tick (GPU and CPU)"
if [ "$(left)" -gt 200 ]; then
  timeout "$(min $(( $(left) - 180 )) 120)" "$BIN/compositor-bench" --tasks 100 --ticks 5 --backend both \
    >"$OUT/compositor.txt" 2>&1
  rc=$?
  tail -n 12 "$OUT/compositor.txt" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || say "compositor-bench exited $rc (124: stopped at its time share; see compositor.txt)"
else
  say "skipped: out of time"
fi

say "## 3. capacity, mixed shapes: GPU compositor, then CPU, same run"
# 25 tiles per task is where the compositor's share is largest, and its
# ramp ends within the budget; 4 tiles per task goes last, with what is left.
capacity() {  # name, compositor, seconds, shapes
  local name=$1 compositor=$2 budget=$3 shapes=$4
  if [ "$budget" -lt 45 ]; then say "capacity ($name): skipped, out of time"; return; fi
  local cfg="$WORK/capacity-$name.toml"
  printf 'data_dir = "%s"\n[recording]\ncompositor = "%s"\n' "$WORK/data-$name" "$compositor" >"$cfg"
  timeout "$budget" "$KIROKU" bench capacity --config "$cfg" --out "$WORK/capacity-$name.json" \
    --quick --shapes "$shapes" --max-tasks 64 \
    >"$OUT/capacity-$name.txt" 2>&1
  local rc=$?
  sed "s/^/$name: /" "$OUT/capacity-$name.txt" | grep -E "shape|mixed-|error|Error" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || say "capacity ($name) exited $rc (124: stopped at its time share)"
  # The profile rides in the same file: the device tool brings back 8 files.
  [ -f "$WORK/capacity-$name.json" ] && { echo "--- profile"; cat "$WORK/capacity-$name.json"; } >>"$OUT/capacity-$name.txt"
}
capacity gpu-25 gpu $(( $(left) * 2 / 5 )) mixed-25x360p-1080p15
capacity cpu-25 cpu $(( $(left) * 2 / 3 )) mixed-25x360p-1080p15
capacity gpu-4 gpu $(( $(left) - 5 )) mixed-4x360p-720p15
rm -rf "$WORK"
say "summary: $SUMMARY"
