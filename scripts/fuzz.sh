#!/usr/bin/env bash
# Runs every libFuzzer target for a while, each from its seed corpus and
# past findings, under ASan + UBSan (clang).
# Usage: ./scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]
#   SECONDS_PER_TARGET  default 60 (10 CPU-minutes: 600)
#   TARGET              a name of fuzz/NAME_fuzz.cc: expert_map config sglang
#                       deepseek trace_csv heat quotas map_tokens (default all)
# EPLB_FUZZ_BUILD_DIR (default build-fuzz) is the build. Inputs libFuzzer
# finds that grow coverage go to a scratch copy of the corpus, not to
# fuzz/corpus/. A crash stops the run: its input is copied to
# fuzz/regressions/TARGET/, where CTest (fuzz_regressions_TARGET) replays it
# in every build from then on; fix the reader and commit the input.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then  # Every target: fuzz/<name>_fuzz.cc.
  for f in fuzz/*_fuzz.cc; do targets+=("$(basename "$f" _fuzz.cc)"); done
fi
build="${EPLB_FUZZ_BUILD_DIR:-build-fuzz}"
case "$seconds" in '' | *[!0-9]*)
  echo "scripts/fuzz.sh: SECONDS_PER_TARGET must be a whole number, not '$seconds'" >&2
  exit 2 ;;
esac

CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Sanitize -DEPLB_WERROR=ON -DEPLB_SANITIZE=address \
  -DEPLB_FUZZ=ON -DEPLB_BUILD_BENCH=OFF -DEPLB_MPI=OFF -DEPLB_PYTHON=OFF \
  -DEPLB_CUDA=OFF >/dev/null
cmake --build "$build" --target $(printf 'eplb_fuzz_%s ' "${targets[@]}")

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
status=0
for t in "${targets[@]}"; do
  if [ ! -d "fuzz/corpus/$t" ]; then
    echo "scripts/fuzz.sh: no fuzz target '$t' (fuzz/corpus/$t is missing)" >&2
    exit 2
  fi
  mkdir -p "$scratch/$t/corpus" "$scratch/$t/crashes"
  cp -r "fuzz/corpus/$t/." "fuzz/regressions/$t/." "$scratch/$t/corpus/"
  echo "== fuzz $t: ${seconds}s"
  if ! "$build/bin/eplb_fuzz_$t" -max_total_time="$seconds" -max_len=65536 \
      -rss_limit_mb=2048 -timeout=20 -print_final_stats=1 \
      -artifact_prefix="$scratch/$t/crashes/" "$scratch/$t/corpus" \
      >"$scratch/$t/log" 2>&1; then
    tail -40 "$scratch/$t/log" >&2
    for f in "$scratch/$t/crashes/"*; do
      [ -e "$f" ] || continue
      cp "$f" "fuzz/regressions/$t/"
      echo "scripts/fuzz.sh: $t broke on fuzz/regressions/$t/$(basename "$f")" >&2
    done
    status=1
  else
    grep -E "stat::number_of_executed_units|stat::new_units_added" "$scratch/$t/log" || true
  fi
done
exit $status
