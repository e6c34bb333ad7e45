#!/usr/bin/env bash
# Serves SmolLM2-135M-Instruct through the OpenAI-compatible API on http://127.0.0.1:8000.
# On a fresh machine it first installs what is missing (scripts/install-deps.sh), builds the
# `headwise` target into build/ (CMake + Ninja; the default build type, RelWithDebInfo) and
# fetches the model (scripts/get-model.sh); then it execs the server.
#
#   scripts/serve.sh [SERVER FLAGS...]     e.g. scripts/serve.sh --port 8001
#
# Extra flags go to `headwise serve`; --host, --port and --served-model-name given there
# replace the defaults (127.0.0.1, 8000, smollm2-135m-instruct), and --generation-config or
# --override-generation-config replace the sampling defaults below.
#
# Sampling defaults: SmolLM2-135M-Instruct's upstream generation_config.json (which get-model.sh
# puts beside the GGUF) has no sampling keys, so a request without "temperature" would sample at
# 1, where this 135M model answers nonsense. Its model card's example samples at temperature 0.2,
# top_p 0.9, but even so it answered the README's question with nonsense 7 times in 20, 6 of them
# loops that run to the end of the context when the client sets no max_tokens (measured
# 2026-12-06). Greedy answers "The capital of France is Paris." every time, so requests that omit
# "temperature" get 0; a client that sends one samples as it asks.
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
if ! has_flag --generation-config "$@" && ! has_flag --override-generation-config "$@"; then
  defaults+=(--override-generation-config '{"temperature": 0}')
fi

exec "$build/bin/headwise" serve "$model" "${defaults[@]}" "$@"
