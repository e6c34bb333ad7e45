#!/usr/bin/env bash
# Both front ends of one `headwise serve` on the same engine and load (issue 18): SmolLM2-135M on
# the CPU backend, 64 concurrent streams (all sent at once, 64 in flight), REST streaming
# completions against gRPC Generate, in alternating rounds on one server so that neither gets
# a warmer machine (the order alternates by round). Results:
# bench/results/serving-frontend-grpc-cpu-<round>-<api>-<date>.{json,md}.
#
#   bench/serving/run-frontend-grpc-cpu.sh
#
# Round 1 warms the server (its first REST run on 2026-12-07 took twice as long): compare the
# later rounds. Environment: ROUNDS (4), NUM_PROMPTS (64), INPUT_LEN (64), OUTPUT_LEN (32),
# BUILD_DIR (build).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
rounds=${ROUNDS:-4}
[[ -f "$build/CMakeCache.txt" ]] || cmake -S . -B "$build" -G Ninja >&2
cmake --build "$build" --target headwise >&2
model=$(scripts/get-model.sh smollm2-135m-instruct)
python=$(scripts/python-env.sh)
port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
grpc_port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp /tmp/headwise-frontend-XXXX.log)
server_cmd="$build/bin/headwise serve $model --port $port --grpc-port $grpc_port --served-model-name smollm2"
$server_cmd >"$log" 2>&1 &
server=$!
trap 'kill -INT $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  grep -q "gRPC listening" "$log" && break
  kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
date=$(date -u +%Y-%m-%d)
for round in $(seq "$rounds"); do
  order="rest grpc" && ((round % 2 == 0)) && order="grpc rest"  # neither always goes first
  for api in $order; do
    endpoint=completions && [[ $api == grpc ]] && endpoint=grpc
    "$python" bench/serving/benchmark_serving.py --base-url "http://127.0.0.1:$port" \
      --grpc-target "127.0.0.1:$grpc_port" --endpoint "$endpoint" --model smollm2 \
      --num-prompts "${NUM_PROMPTS:-64}" --max-concurrency 64 --request-rate inf \
      --input-len "${INPUT_LEN:-64}" --output-len "${OUTPUT_LEN:-32}" --num-warmup 2 \
      --tag "frontend-grpc-cpu-$round-$api" --server-cmd "$server_cmd" \
      --result-name "serving-frontend-grpc-cpu-$round-$api-$date"
  done
done
