#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz (clang, ASan + UBSan, CUDA off) into build-fuzz/
# and runs each: first once over its committed seed corpus (regression), then FUZZ_SECONDS of
# fuzzing from a working copy of that corpus. Exits non-zero on any crash, leak, timeout or
# out-of-memory; each finding is saved under build-fuzz/fuzz-artifacts/<target>/ and the log
# of every run under build-fuzz/fuzz-logs/.
#
#   scripts/fuzz.sh                               every target, FUZZ_SECONDS each
#   scripts/fuzz.sh --seconds 600 --target jinja  one target, longer (--target repeats)
#   scripts/fuzz.sh --seconds 0                   the regression runs only
#   scripts/fuzz.sh --no-build --target X         reuse the build (e.g. several runs at once)
#   scripts/fuzz.sh --keep-going --seconds 600    a campaign: libFuzzer's fork mode goes on after
#                                                 a finding and collects them all (still fails)
#   scripts/fuzz.sh --list                        the target names
# Reproduce a finding: build-fuzz/bin/<target>_fuzz <file>
#
#   FUZZ_SECONDS    fuzzing time per target (default 30)
#   FUZZ_TIMEOUT    seconds one input may take before it counts as a hang (default 25; the machines
#                   are shared, and a wall-clock limit must not flag a busy machine)
#   FUZZ_RSS_MB     memory limit of a fuzzing process (default 2048)
#   BUILD_DIR       build folder (default build-fuzz); JOBS: parallel build jobs (default nproc)
#   HEADWISE_SHARED the shared tokenizers the tokenize target loads (default ../shared)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build-fuzz}
jobs=${JOBS:-$(nproc)}
seconds=${FUZZ_SECONDS:-30}
timeout=${FUZZ_TIMEOUT:-25}
rss_mb=${FUZZ_RSS_MB:-2048}
export HEADWISE_SHARED=${HEADWISE_SHARED:-$root/../shared}

all_targets=()
for src in tests/fuzz/*_fuzz.cc; do
  name=$(basename "$src" .cc)
  all_targets+=("${name%_fuzz}")
done

targets=()
do_build=1
keep_going=0
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --target) targets+=("$2"); shift 2 ;;
    --no-build) do_build=0; shift ;;
    --keep-going) keep_going=1; shift ;;
    --list) printf '%s\n' "${all_targets[@]}"; exit 0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ -f tests/fuzz/${t}_fuzz.cc ]] || { echo "fuzz.sh: no target $t (--list)" >&2; exit 2; }
done

if ((do_build)); then
  scripts/install-deps.sh --fuzz
  launcher=()
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache
                                            -DCMAKE_C_COMPILER_LAUNCHER=ccache)
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ "${launcher[@]}" \
      -DHEADWISE_CUDA=OFF -DHEADWISE_BUILD_TESTS=OFF -DHEADWISE_FUZZ=ON >/dev/null
  cmake --build "$build" -j "$jobs" --target "${targets[@]/%/_fuzz}"
fi

# Sanitizer findings must stop the run and say where: UBSan aborts (the build has
# -fno-sanitize-recover), ASan checks leaks at exit of every input batch.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

logs=$build/fuzz-logs
mkdir -p "$logs"
failed=()
summary=()
for t in "${targets[@]}"; do
  bin=$build/bin/${t}_fuzz
  seeds=tests/fuzz/corpus/$t
  artifacts=$build/fuzz-artifacts/$t
  work=$build/fuzz-corpus/$t
  rm -rf "$artifacts"  # findings of an earlier run are not this run's
  mkdir -p "$artifacts" "$work"
  flags=(-timeout="$timeout" -rss_limit_mb="$rss_mb" -artifact_prefix="$artifacts/"
         -print_final_stats=1)
  [[ -f tests/fuzz/$t.dict ]] && flags+=(-dict="tests/fuzz/$t.dict")

  # Regression: every committed seed once.
  echo "== $t: regression over $seeds ($(find "$seeds" -type f | wc -l) inputs)"
  if ! "$bin" "${flags[@]}" -runs=0 "$seeds" >"$logs/$t.regression.log" 2>&1; then
    echo "FAIL $t: regression run (log: $logs/$t.regression.log)"
    tail -n 30 "$logs/$t.regression.log"
    failed+=("$t")
    summary+=("$t: regression FAILED")
    continue
  fi
  ((seconds > 0)) || { summary+=("$t: regression ok"); continue; }

  # Fuzzing: new inputs go to the working corpus, the committed seeds stay as they are.
  echo "== $t: fuzzing for ${seconds}s (corpus $work)"
  log=$logs/$t.fuzz.log
  extra=()
  ((keep_going)) && extra=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  if "$bin" "${flags[@]}" "${extra[@]}" -max_total_time="$seconds" "$work" "$seeds" >"$log" 2>&1 &&
      [[ -z $(find "$artifacts" -type f) ]]; then
    status=ok
  else
    status=FAILED
    failed+=("$t")
    echo "FAIL $t (log: $log, inputs: $artifacts/)"
    grep -E "ERROR: |SUMMARY: |runtime error:|Test unit written to" "$log" | head -n 20 || true
  fi
  # The last status line: "#N DONE cov: C ft: F corp: U/S ..." (or the last pulse before a crash;
  # in fork mode "#N: cov: C ft: F corp: U exec/s ...").
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  [[ -n $execs ]] || execs=$(sed -E 's/^#([0-9]+).*/\1/' <<<"$last")
  findings=$(find "$artifacts" -type f | wc -l)
  summary+=("$t: fuzz $status (${seconds}s limit), ${execs:-?} execs, $findings findings |"
            "  ${last:-no status line}")
done

echo
echo "== fuzz summary (${seconds}s per target)"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
