#!/usr/bin/env bash
# Configures and builds headwise (every target, or the ones named), as scripts/test.sh and the
# Docker image (docker/Dockerfile) do. Dependencies first: scripts/install-deps.sh.
#   scripts/build.sh [TARGET...]
#   BUILD_DIR   build folder (default build)
#   JOBS        parallel build jobs (default: number of cores)
#   CMAKE_ARGS  extra configure arguments, e.g. "-DCMAKE_BUILD_TYPE=Release -DHEADWISE_CUDA=ON"
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of arguments
cmake -S . -B "$build" -G Ninja ${CMAKE_ARGS:-} >/dev/null
targets=()
(($# == 0)) || targets=(--target "$@")
cmake --build "$build" -j "${JOBS:-$(nproc)}" "${targets[@]}"
