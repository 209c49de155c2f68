#!/usr/bin/env bash
# Builds eplb with warnings as errors and runs the whole test suite (CTest).
# Usage: ./scripts/test.sh [extra ctest args]
# EPLB_BUILD_DIR (default build-test) and EPLB_SANITIZE (address|thread)
# select another build.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --deps
build="${EPLB_BUILD_DIR:-build-test}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEPLB_WERROR=ON \
  -DEPLB_SANITIZE="${EPLB_SANITIZE:-}" >/dev/null
cmake --build "$build"
cd "$build"
ctest --output-on-failure -j "$(nproc)" "$@"
