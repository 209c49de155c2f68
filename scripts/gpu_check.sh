#!/usr/bin/env bash
# The CUDA backend's checks on a machine with a GPU, from binaries built on
# any machine with nvcc: they link CUDA's runtime statically, so the GPU
# machine needs only the NVIDIA driver (no compiler, no dependencies).
#
#   scripts/gpu_check.sh stage DIR      # build machine: build the GPU tests
#                                       # and eplb_bench_cuda, copy them to DIR
#   scripts/gpu_check.sh run DIR OUT    # GPU machine: the tests, then the
#                                       # benchmark; logs in OUT
#
# `run` writes OUT/gpu_tests.txt (every test of eplb_cuda_tests, none
# skipped when a device is found) and OUT/cuda_bench.txt (the GPU's name,
# then eplb_bench_cuda's tables), and exits non-zero when a test fails.
# EPLB_BUILD_DIR (default build) is the build `stage` uses.
set -euo pipefail
cd "$(dirname "$0")/.."
usage() {
  echo "usage: scripts/gpu_check.sh stage DIR | run DIR OUT" >&2
  exit 2
}
[ $# -ge 2 ] || usage
case "$1" in
  stage)
    build="${EPLB_BUILD_DIR:-build}"
    cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEPLB_CUDA=ON \
      >/dev/null
    cmake --build "$build" --target eplb_cuda_tests eplb_bench_cuda
    mkdir -p "$2"
    cp "$build/bin/eplb_cuda_tests" "$build/bin/eplb_bench_cuda" "$2/"
    git rev-parse HEAD >"$2/commit.txt"
    echo "staged in $2 (commit $(cat "$2/commit.txt"))"
    ;;
  run)
    [ $# -eq 3 ] || usage
    dir="$2"
    out="$3"
    mkdir -p "$out"
    status=0
    {
      echo "commit: $(cat "$dir/commit.txt" 2>/dev/null || echo unknown)"
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
        2>/dev/null || echo "nvidia-smi: not found"
      "$dir/eplb_cuda_tests" --gtest_color=no
    } >"$out/gpu_tests.txt" 2>&1 || status=$?
    {
      echo "commit: $(cat "$dir/commit.txt" 2>/dev/null || echo unknown)"
      date -u +%Y-%m-%dT%H:%M:%SZ
      "$dir/eplb_bench_cuda"
    } >"$out/cuda_bench.txt" 2>&1 || status=$?
    tail -n 3 "$out/gpu_tests.txt"
    cat "$out/cuda_bench.txt"
    exit "$status"
    ;;
  *) usage ;;
esac
