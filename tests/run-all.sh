#!/usr/bin/env bash
# Installs everything kiroku's tests need (idempotent; apt + pip) and runs
# every test: formatting, lints, Rust unit/integration tests, the end-to-end
# suite that drives the real binary with Tencent's own SDK, and a short
# run of the API benchmark. This is the README's test command and the only
# thing .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A clean clone builds once: incremental caches would only add gigabytes
# to a disk CI shares with the recordings the tests write.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# Each step's start time, so a slow CI log shows where the minutes went.
step() { printf '\n==> [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

# --- system packages -------------------------------------------------------
# mesa-vulkan-drivers + libvulkan1: Mesa's lavapipe, a Vulkan software
# rasteriser, so the wgpu compositor is tested against the CPU one without a GPU.
APT_PACKAGES=(build-essential pkg-config cmake nasm python3 python3-venv python3-pip systemd curl ca-certificates chromium ffmpeg mesa-vulkan-drivers libvulkan1 openssl postgresql python3-gi gir1.2-glib-2.0 gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0 gir1.2-gst-plugins-bad-1.0 gir1.2-nice-0.1 gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-nice prometheus lintian help2man)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true

# --- python test dependencies ---------------------------------------------
step "python venv (.venv) with tests/e2e/requirements.txt"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/e2e/requirements.txt

# --- Node.js: Tencent's Node.js SDK for tests/e2e/test_nodejs_sdk.py -------
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  step "apt-get install nodejs npm"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm
fi
step "npm ci (tests/e2e/node: tencentcloud-sdk-nodejs, pinned)"
npm ci --prefix tests/e2e/node --no-audit --no-fund --loglevel=error

# --- Rust -----------------------------------------------------------------
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
step "cargo clippy --features nvenc (NVENC and NVDEC bindings: built and unit-tested without a GPU)"
cargo clippy -p kiroku-gpu --features nvenc --all-targets --locked -- -D warnings
cargo clippy -p kiroku --features nvenc --locked -- -D warnings
step "cargo build"
cargo build --workspace --locked
step "cargo test (required: ffprobe/moto (TOOLS), the wgpu compositor on lavapipe (GPU_TESTS), io_uring for the spool (URING))"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
KIROKU_REQUIRE_TOOLS=1 KIROKU_REQUIRE_GPU_TESTS=1 KIROKU_REQUIRE_URING=1 cargo test --workspace --locked
KIROKU_REQUIRE_GPU_TESTS=1 cargo test -p kiroku-gpu --features nvenc --locked -- nvenc nvdec cuda

# --- end to end -----------------------------------------------------------
step "end-to-end tests (tests/e2e, Tencent SDK against the real binary)"
KIROKU_REQUIRE_ALL=1 KIROKU_REQUIRE_GPU_TESTS=1 KIROKU_REQUIRE_TOOLS=1 KIROKU_BIN="$PWD/target/debug/kiroku" .venv/bin/python -m pytest -q --durations=25 tests/e2e

# --- benchmark smoke --------------------------------------------------------
step "API benchmark (short, debug build; figures in docs/performance.md come from release builds)"
./target/debug/api-load --kiroku target/debug/kiroku --seconds 2 --concurrency 4
step "recording benchmark (short smoke, debug build)"
./target/debug/record-load --kiroku target/debug/kiroku --streams 25 --seconds 3

step "mixed pipeline benchmark (short smoke, debug build, side by side with ffmpeg)"
./target/debug/mix-bench --seconds 2 --cases 4x720,25x1080
step "mixed picture quality (short smoke, debug build: kiroku's encoder and x264 veryfast scored on the same canvas)"
./target/debug/mix-bench --seconds 2 --cases 4x720 --quality --no-ffmpeg
step "spool write benchmark (short smoke, debug build: io_uring vs plain writes)"
./target/debug/spool-bench --files 100 --threads 1,8
step "upload benchmark (short smoke, debug build: spool + S3 uploads vs boto3, against moto)"
./target/debug/upload-bench --files 20 --size 262144
step "merge benchmark (short smoke, debug build: kiroku merge vs ffmpeg, remux and re-encode)"
./target/debug/merge-bench --kiroku target/debug/kiroku --seconds 20 --rounds 1
step "compositor benchmark (short smoke, debug build: CPU and wgpu on lavapipe)"
./target/debug/compositor-bench --ticks 3 --tasks 4

step "all tests passed"
