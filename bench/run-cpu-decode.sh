#!/usr/bin/env bash
# Decode speed of the CPU backend, recorded in bench/results/ with date, machine, commit and
# command. Builds hw_bench_decode if needed.
#   bench/run-cpu-decode.sh [MODEL] [--context N] [--tokens N] [--threads N]
# MODEL defaults to SmolLM2-135M-Instruct (scripts/get-model.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
model=${1:-}
if [[ -z "$model" || "$model" == --* ]]; then
  model=$(scripts/get-model.sh smollm2-135m-instruct)
else
  shift
fi
cmake --build "$build" --target hw_bench_decode >/dev/null

date=$(date -u +%Y-%m-%d)
commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . ':!bench/results' || echo "-dirty")
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
cores=$(nproc)
mem=$(free -g | awk '/^Mem:/ {print $2}')
out=bench/results/cpu-decode-$date.md
{
  echo "# CPU decode speed"
  echo
  echo "- date: $date"
  echo "- machine: $cpu, $cores cores, ${mem} GiB"
  echo "- commit: $commit"
  echo "- command: bench/run-cpu-decode.sh $*"
  echo "- model: $(basename "$model")"
  echo
  echo "Each line: one run of \`hw_bench_decode\` (median decode step over the tokens, after a"
  echo "prefill of \`context\` tokens); \`fraction_of_roofline\` = (weight bytes + KV bytes) /"
  echo "read bandwidth measured in the same run, over the median step time."
  echo
  echo '```'
  for context in 128 1024; do
    "$build/bin/hw_bench_decode" "$model" --context "$context" "$@"
  done
  echo '```'
} | tee "$out"
echo "wrote $out" >&2
