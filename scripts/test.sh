#!/usr/bin/env bash
# Builds eplb with warnings as errors and runs the whole test suite (CTest),
# then the unit suite under ASan + UBSan and TSan and every fuzz target for
# a bounded time (scripts/sanitize.sh).
# Usage: ./scripts/test.sh [extra ctest args]
# EPLB_BUILD_DIR (default build-test) and EPLB_SANITIZE (address|thread)
# select the first build;
# EPLB_SANITIZERS=0 skips scripts/sanitize.sh (a quicker local run);
# EPLB_FUZZ_SECONDS (default 30) is each fuzz target's time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --deps
build="${EPLB_BUILD_DIR:-build-test}"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEPLB_WERROR=ON \
  -DEPLB_SANITIZE="${EPLB_SANITIZE:-}" >/dev/null
cmake --build "$build"
(cd "$build" && ctest --output-on-failure -j "$(nproc)" "$@")
case "${EPLB_SANITIZERS:-1}" in
  0) echo "== sanitizers and fuzzing skipped (EPLB_SANITIZERS=0)" ;;
  1) ./scripts/sanitize.sh ;;
  *) echo "scripts/test.sh: EPLB_SANITIZERS must be 0 or 1, not '${EPLB_SANITIZERS}'" >&2
     exit 2 ;;
esac
