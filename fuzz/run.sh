#!/usr/bin/env bash
# Coverage-guided fuzzing of every target (or the ones named) for SECONDS
# each, with cargo-fuzz (libFuzzer) on the nightly toolchain. Prints, per
# target, the executions run and whether it crashed; a crash leaves its
# input in fuzz/artifacts/<target>/ — copy it to fuzz/regressions/<target>/
# so that the test command replays it for ever (daemon/tests/fuzz_smoke.rs).
#
#   fuzz/run.sh 60                 # all targets, 60 s each
#   fuzz/run.sh 3600 stun h264     # two targets, an hour each
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-60}"; shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzz_targets | sed 's/\.rs$//')
fi
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
jobs=$(( $(nproc) > 1 ? $(nproc) - 1 : 1 ))
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  # A scratch copy of the corpus: what the fuzzer adds stays out of git.
  work="$(mktemp -d)"; cp -r "corpus/$t/." "$work/"
  log="$(mktemp)"
  status=ok
  cargo +nightly fuzz run "$t" "$work" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
    -timeout=10 -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"$log" 2>&1 || status=CRASH
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  echo "$t: ${execs:-?} executions in ${seconds} s, $status"
  if [ "$status" != ok ]; then grep -E "panicked|ERROR|SUMMARY" "$log" | head -5; fi
  rm -rf "$work" "$log"
done
