#!/usr/bin/env bash
# Online serving benchmark of SmolLM2-135M-Instruct on the CPU backend at three request rates
# (under-loaded, near the knee, saturated), one server for all three. Builds `headwise` if
# needed, fetches the model, waits (bounded) for the machine to be idle, and writes one results
# file: bench/results/serving-cpu-smollm2-<date>.md (+ .json).
#
#   bench/serving/run-cpu-rates.sh [EXTRA BENCHMARK FLAGS...]
#
# Environment: RATES (comma-separated req/s), NUM_PROMPTS (per rate), INPUT_LEN, OUTPUT_LEN,
# BUILD_DIR (default build). Extra flags go to benchmark_serving.py (e.g. --endpoint chat).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
# Measured on the 2-core machine (2026-11-24, commit de74c54): one 64-in/64-out request alone
# takes about 1.4 s (TTFT ~0.5 s, TPOT ~14 ms) and the server saturates near 100 tokens/s
# in+out, about 0.8 req/s of this shape. So 0.2 req/s is under-loaded (~25 %), 0.5 near the
# knee (~60 %) and 1.0 past saturation (~125 %). About 5 minutes in all.
rates=${RATES:-0.2,0.5,1}
num_prompts=${NUM_PROMPTS:-32}
input_len=${INPUT_LEN:-64}
output_len=${OUTPUT_LEN:-64}

if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S . -B "$build" -G Ninja >&2
fi
cmake --build "$build" --target headwise >&2
model=$(scripts/get-model.sh smollm2-135m-instruct)
python=$(scripts/python-env.sh)

# The server and this client share the machine's cores: wait up to 3 minutes for the 1-minute
# load average to fall under 1.5 (a build or a test run elsewhere skews every number).
for _ in $(seq 36); do
  awk '{exit !($1 < 1.5)}' /proc/loadavg && break
  echo "run-cpu-rates: load average $(cut -d' ' -f1 /proc/loadavg), waiting for < 1.5" >&2
  sleep 5
done
load=$(cut -d' ' -f1-3 /proc/loadavg)

date=$(date -u +%Y-%m-%d)
server_cmd="$(printf '%q' "$build/bin/headwise") serve $(printf '%q' "$model")"
server_cmd+=" --served-model-name smollm2-135m-instruct"
exec "$python" bench/serving/benchmark_serving.py \
  --start-server "$server_cmd" \
  --request-rate "$rates" --num-prompts "$num_prompts" \
  --input-len "$input_len" --output-len "$output_len" --seed 0 \
  --tag cpu-smollm2 --result-name "serving-cpu-smollm2-$date" \
  --notes "Run by bench/serving/run-cpu-rates.sh (RATES=$rates NUM_PROMPTS=$num_prompts \
INPUT_LEN=$input_len OUTPUT_LEN=$output_len); load average at start: $load. The client runs \
on the same 2 cores as the server." \
  "$@"
