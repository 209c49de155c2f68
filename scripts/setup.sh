#!/usr/bin/env bash
# Installs eplb's dependencies (Debian 12 packages only), builds everything in
# build/, and runs the main job (eplb replay) on the shipped trace.
#   ./scripts/setup.sh            install + build + main job
#   ./scripts/setup.sh --deps     install the dependencies only
set -euo pipefail
cd "$(dirname "$0")/.."

# Why each package is here: see README.md, "Dependencies".
PACKAGES=(
  build-essential cmake ninja-build     # compiler, build system
  clang                                 # sanitizer builds, libFuzzer (scripts/sanitize.sh)
  clang-format                          # the format test (house style: Google)
  nlohmann-json3-dev                    # JSON maps, SGLang dumps, --json output
  libcli11-dev                          # command-line parsing
  libgtest-dev libgmock-dev             # unit and integration tests
  libbenchmark-dev                      # bench/ speed measurements
  openmpi-bin libopenmpi-dev            # ranks as processes (replay --transport mpi)
  python3                               # independent re-scoring of plans in tests
  python3-dev pybind11-dev python3-numpy  # the Python module (build/python)
  python3-torch python3-pytest          # its torch paths; its tests
  pkg-config libcpp-httplib-dev         # the /metrics endpoint (replay --metrics-port)
  prometheus                            # promtool, which checks the metrics in tests
  chromium                              # renders the --report page in a test
)

install_deps() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "== installing: ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
}

install_deps
[ "${1:-}" = "--deps" ] && exit 0

echo "== building (build/)"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build

echo "== main job: eplb replay of the shipped DeepSeek-V2-Lite trace (EP16 + 16 redundant, SwiftBalancer)"
./build/bin/eplb replay
