#!/usr/bin/env bash
# Builds headwise and runs every test. On a fresh machine it first installs what is missing
# (Debian packages, the Python test venv). Exits non-zero on any failure.
#   HEADWISE_SHARED  where the shared models/tokenizers live (default ../shared)
#   BUILD_DIR        build folder (default build)
#   JOBS             parallel build jobs (default: number of cores)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
export HEADWISE_SHARED=${HEADWISE_SHARED:-$root/../shared}

scripts/install-deps.sh
python=$(scripts/python-env.sh)
# The real chat model the goldens and tokenizer checks use (cached after the first run).
HEADWISE_SMOLLM2_GGUF=$(scripts/get-model.sh smollm2-135m-instruct)
export HEADWISE_SMOLLM2_GGUF
# Qwen2.5-Coder-0.5B-Instruct (491 MB, 32K context) for the CPU tests on a real long-context
# model (goldens, tests/python/server_qwen05_chat.py, eval_cli.qwen_passkey), fetched once, then
# only stamp-checked; and the haystack text of `headwise eval`.
HEADWISE_QWEN05_GGUF=$(scripts/get-model.sh qwen2.5-coder-0.5b-instruct)
export HEADWISE_QWEN05_GGUF
HEADWISE_HAYSTACK=$(scripts/make-haystack.sh)
export HEADWISE_HAYSTACK

BUILD_DIR=$build JOBS=$jobs CMAKE_ARGS="-DHEADWISE_PYTHON=$python ${CMAKE_ARGS:-}" scripts/build.sh
ctest --test-dir "$build" --output-on-failure -j "$jobs" -L cpu
