#!/usr/bin/env bash
# Builds the CPU tests with sanitizers (CUDA off) and runs them. Exits non-zero on any failure
# or sanitizer report.
#
#   scripts/sanitize.sh [address]  ASan + UBSan into build-asan/: every CPU test (ctest -L cpu),
#                                  including the Python server and CLI tests, which run the
#                                  sanitized `headwise` (CMake hands them HEADWISE_BIN)
#   scripts/sanitize.sh thread     ThreadSanitizer into build-tsan/: the tests with threads
#                                  (engine: concurrent streams, aborts, shutdown; the server's
#                                  Python tests: concurrent clients, disconnects)
#
#   BUILD_DIR  build folder (default build-asan / build-tsan); JOBS: parallel jobs (default nproc)
#   CTEST_ARGS extra ctest arguments, e.g. "-R server_" to run a subset
#   HEADWISE_SHARED  where the shared models/tokenizers live (default ../shared)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-address}
jobs=${JOBS:-$(nproc)}
export HEADWISE_SHARED=${HEADWISE_SHARED:-$root/../shared}

case $mode in
  address)
    sanitizers=address,undefined
    build=${BUILD_DIR:-build-asan}
    ;;
  thread)
    sanitizers=thread
    build=${BUILD_DIR:-build-tsan}
    ;;
  *) echo "sanitize.sh: mode is address or thread, not $mode" >&2; exit 2 ;;
esac

scripts/install-deps.sh
python=$(scripts/python-env.sh)
HEADWISE_SMOLLM2_GGUF=$(scripts/get-model.sh smollm2-135m-instruct)
export HEADWISE_SMOLLM2_GGUF
# Qwen2.5-Coder-0.5B-Instruct (491 MB, 32K context) for the CPU tests on a real long-context
# model (tests/python/server_qwen05_chat.py); fetched once, then only stamp-checked.
HEADWISE_QWEN05_GGUF=$(scripts/get-model.sh qwen2.5-coder-0.5b-instruct)
export HEADWISE_QWEN05_GGUF

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache
                                          -DCMAKE_C_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" \
    -DHEADWISE_CUDA=OFF -DHEADWISE_SANITIZE="$sanitizers" -DHEADWISE_PYTHON="$python" >/dev/null

# Run-time options. Every report fails the process that made it: ASan and TSan exit non-zero,
# UBSan aborts (built with -fno-sanitize-recover=undefined), LSan checks leaks at exit. Reports
# go to files as well as failing the test: the server tests run `headwise` as a child whose
# stderr the Python harness keeps to itself, so the report would otherwise be lost.
reports=$(cd "$build" && pwd)/sanitizer-reports
rm -rf "$reports"
mkdir -p "$reports"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$reports/asan
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:log_path=$reports/ubsan
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:log_path=$reports/tsan
# Sanitized code runs several times slower (and ASan keeps freed memory in quarantine): tests with
# time or memory bounds loosen them by this factor; what they check otherwise is unchanged.
export HEADWISE_TEST_SLOWDOWN=${HEADWISE_TEST_SLOWDOWN:-10}

status=0
if [[ $mode == address ]]; then
  cmake --build "$build" -j "$jobs"
  # Tests left out of the sanitized run, each with its reason (a test may go here only when a
  # smaller test that does run covers its code path, e.g. a benchmark-size golden run).
  #   eval_cli.qwen_passkey: two 2K-token prompts on a 0.5B model, over 25 minutes sanitized
  #     (CPU attention is scalar and instrumented); eval_cli.smollm2 runs the same `headwise
  #     eval` paths (tasks, engine arms, scoring, report) sanitized, and qwen05_policies and
  #     server_qwen05_chat run the Qwen model itself.
  exclude=('^eval_cli\.qwen_passkey$')
  exclude_re=$(IFS='|'; echo "${exclude[*]:-^$}")
  ctest --test-dir "$build" --output-on-failure -j "$jobs" -L cpu -E "$exclude_re" \
      ${CTEST_ARGS:-} || status=$?
else
  cmake --build "$build" -j "$jobs" --target engine_test headwise
  # The engine's [engine] cases run the engine thread against callers that submit, stream,
  # abort (by call and by dropping the stream) and shut it down; the server's Python tests run
  # the TSan-built `headwise` with concurrent clients, disconnects and shutdown.
  (cd "$build" && HEADWISE_SOURCE_DIR=$root bin/engine_test "[engine]") || status=$?
  ctest --test-dir "$build" --output-on-failure -j "$jobs" -L cpu -R '^server_[a-z_]*$' \
      ${CTEST_ARGS:-} || status=$?
fi

if [[ -n $(ls -A "$reports") ]]; then
  echo "sanitize.sh: sanitizer reports in $reports:" >&2
  for f in "$reports"/*; do
    echo "--- $f" >&2
    head -n 60 "$f" >&2
  done
  status=1
fi
exit "$status"
