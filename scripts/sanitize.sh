#!/usr/bin/env bash
# The unit suite under the sanitizers, then every fuzz target for a while:
#   1. ASan + UBSan (clang, with the libFuzzer targets): build-fuzz/
#   2. TSan (clang): build-tsan/
#   3. scripts/fuzz.sh in build-fuzz/, EPLB_FUZZ_SECONDS per target (default
#      30; 0 skips it)
# Usage: ./scripts/sanitize.sh [extra ctest args]
# scripts/test.sh (and so .ci/run) runs it after the plain suite. The suites run are CTest's `unit`
# label: the GoogleTest suite and the fuzz regressions (the CLI, MPI and
# Python tests run in the plain build).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --deps
jobs="$(nproc)"
common=(-G Ninja -DCMAKE_BUILD_TYPE=Sanitize -DEPLB_WERROR=ON
  -DEPLB_BUILD_BENCH=OFF -DEPLB_MPI=OFF -DEPLB_PYTHON=OFF -DEPLB_CUDA=OFF)
unit_targets=(eplb_unit_tests)
# Every fuzz target (fuzz/<name>_fuzz.cc): its regressions run as unit tests.
for f in fuzz/*_fuzz.cc; do
  unit_targets+=("eplb_fuzz_$(basename "$f" _fuzz.cc)_replay")
done

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"

echo "== ASan + UBSan"
CC=clang CXX=clang++ cmake -S . -B build-fuzz "${common[@]}" \
  -DEPLB_SANITIZE=address -DEPLB_FUZZ=ON >/dev/null
cmake --build build-fuzz --target "${unit_targets[@]}"
(cd build-fuzz && ctest -L unit -j "$jobs" --output-on-failure "$@")

echo "== TSan"
CC=clang CXX=clang++ cmake -S . -B build-tsan "${common[@]}" \
  -DEPLB_SANITIZE=thread >/dev/null
cmake --build build-tsan --target "${unit_targets[@]}"
(cd build-tsan && ctest -L unit -j "$jobs" --output-on-failure "$@")

seconds="${EPLB_FUZZ_SECONDS:-30}"
if [ "$seconds" != 0 ]; then
  echo "== fuzz, ${seconds}s per target"
  EPLB_FUZZ_BUILD_DIR=build-fuzz ./scripts/fuzz.sh "$seconds"
fi
