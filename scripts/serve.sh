#!/usr/bin/env bash
# Serves SmolLM2-135M-Instruct through the OpenAI-compatible API on http://127.0.0.1:8000.
# On a fresh machine it first installs what is missing (scripts/install-deps.sh), builds the
# `headwise` target into build/ (CMake + Ninja; the default build type, RelWithDebInfo) and
# fetches the model (scripts/get-model.sh); then it execs the server.
#
#   scripts/serve.sh [SERVER FLAGS...]     e.g. scripts/serve.sh --port 8001
#
# Extra flags go to `headwise serve`; --host, --port and --served-model-name given there
# replace the defaults (127.0.0.1, 8000, smollm2-135m-instruct).
#   BUILD_DIR  build folder (default build)      JOBS  parallel build jobs (default: cores)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}

scripts/install-deps.sh >&2
model=$(scripts/get-model.sh smollm2-135m-instruct)
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" -G Ninja >&2
fi
cmake --build "$build" -j "$jobs" --target headwise >&2

defaults=()
has_flag() {
  local name=$1 a
  for a in "${@:2}"; do
    [[ "$a" == "$name" || "$a" == "$name="* ]] && return 0
  done
  return 1
}
has_flag --host "$@" || defaults+=(--host 127.0.0.1)
has_flag --port "$@" || defaults+=(--port 8000)
has_flag --served-model-name "$@" || defaults+=(--served-model-name smollm2-135m-instruct)

exec "$build/bin/headwise" serve "$model" "${defaults[@]}" "$@"
