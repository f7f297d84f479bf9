#!/usr/bin/env bash
# Everything that needs an accelerator, in one go, within 8 minutes: run it
# on a GPU machine from the repository root (the session's device tool runs
# commands there) and copy the summary into docs/performance.md with the
# date. It never prints a figure it did not measure: a part whose hardware
# is absent says so and is skipped.
#
#   bench/device.sh            # builds release (cargo) unless target/release has the binaries
#   OUT=/some/dir bench/device.sh
#
# Parts:
# 1. probes: nvidia-smi, `kiroku doctor --json` (wgpu adapter, NVENC, NVDEC);
# 2. the wgpu compositor benchmark: 100 tasks × 25 tiles → 1080p per tick,
#    on the GPU and the CPU side by side (compositor-bench);
# 3. the capacity bench with the GPU compositor (`recording.compositor =
#    "gpu"`), mixed shapes only, quick windows — and the same shapes with the
#    CPU compositor for the ratio, both in this run.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-${TMPDIR:-/tmp}/kiroku-device}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
say() { printf '%s\n' "$*" | tee -a "$SUMMARY"; }
deadline=$(( $(date +%s) + 8 * 60 ))
left() { echo $(( deadline - $(date +%s) )); }

say "# kiroku device run, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [ ! -x target/release/kiroku ] || [ ! -x target/release/compositor-bench ]; then
  say "building release binaries (cargo build --release -p kiroku -p kiroku-bench --features kiroku/nvenc)"
  cargo build --release --locked -p kiroku -p kiroku-bench --features kiroku/nvenc >"$OUT/build.log" 2>&1 \
    || { say "build failed: see $OUT/build.log"; exit 1; }
fi
KIROKU=target/release/kiroku

say "## 1. probes"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$SUMMARY"
else
  say "gpu: nvidia-smi not found (no NVIDIA driver here)"
fi
"$KIROKU" doctor --json >"$OUT/doctor.json" 2>/dev/null
python3 - "$OUT/doctor.json" <<'PY' | tee -a "$SUMMARY"
import json, sys
try:
    findings = json.load(open(sys.argv[1])).get("findings", [])
except Exception as e:  # a doctor that could not run says why
    print(f"doctor: unreadable output ({e})"); sys.exit(0)
for f in findings:
    if f.get("check") in ("gpu", "nvenc", "nvdec"):
        print(f"{f['check']}: {f.get('status')} — {f.get('detail')}")
PY

say "## 2. compositor: 100 tasks x 25 tiles -> 1080p per tick (GPU and CPU)"
if [ "$(left)" -gt 120 ]; then
  timeout $(( $(left) - 90 )) target/release/compositor-bench --tasks 100 --ticks 5 --backend both \
    >"$OUT/compositor.txt" 2>&1
  rc=$?
  tail -n 12 "$OUT/compositor.txt" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || say "compositor-bench exited $rc (see $OUT/compositor.txt)"
else
  say "skipped: out of time"
fi

say "## 3. capacity, mixed shapes: GPU compositor, then CPU, same run"
for compositor in gpu cpu; do
  if [ "$(left)" -lt 60 ]; then say "capacity ($compositor): skipped, out of time"; continue; fi
  cfg="$OUT/capacity-$compositor.toml"
  printf 'data_dir = "%s"\n[recording]\ncompositor = "%s"\n' "$OUT/data-$compositor" "$compositor" >"$cfg"
  [ "$compositor" = gpu ] && budget=$(( $(left) / 2 ))
  [ "$compositor" = cpu ] && budget=$(left)
  timeout "$budget" "$KIROKU" bench capacity --config "$cfg" --out "$OUT/capacity-$compositor.json" \
    --quick --shapes mixed-4x360p-720p15,mixed-25x360p-1080p15 --max-tasks 64 \
    >"$OUT/capacity-$compositor.txt" 2>&1
  rc=$?
  sed "s/^/$compositor: /" "$OUT/capacity-$compositor.txt" | grep -E "shape|mixed-|error" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || say "capacity ($compositor) exited $rc (124: stopped at the 8-minute budget)"
done
say "summary: $SUMMARY"
