#!/usr/bin/env bash
# The StreamingLLM long run on the CPU: SmolLM2-135M-Instruct generating 20,000 sampled tokens
# with every head a 4-sink + 2044-window ring with re-indexed positions
# (configs/policies/streaming-llm.json), and the same prompt and seed under dense attention for
# as long as the model's context allows (8192 positions), for the log-prob trend beside it.
# Each run writes one JSON line per 1,000 tokens (hw_bench_streaming); report.py turns both into
# bench/results/streaming-llm-20k-<date>-cpu.md.
#
# usage: bench/streaming/run-20k.sh [--tokens N] [--policy FILE] [--threads N] [--date YYYY-MM-DD]
#                                   [--only streaming|dense] [--repetition-penalty R] [--name NAME]
#   --name: output prefix under bench/results (default streaming-llm-20k-<date>-cpu).
#   HEADWISE_BUILD (default build) holds bin/hw_bench_streaming. The two runs go side by side,
#   --threads each (default 1: a 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/../.."
tokens=20000 policy=configs/policies/streaming-llm.json threads=1 date=$(date +%F) only= penalty=1 name=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tokens) tokens=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --date) date=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --repetition-penalty) penalty=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
build=${HEADWISE_BUILD:-build}
bin=$build/bin/hw_bench_streaming
model=$(scripts/get-model.sh smollm2-135m-instruct)
prompt="Write a very long story about a young cartographer who travels across many kingdoms. Describe every place, every person she meets and everything that happens, chapter after chapter."
out=bench/results/${name:-streaming-llm-20k-$date-cpu}
common=(--chat --prompt "$prompt" --temperature 0.8 --top-p 0.95 --repetition-penalty "$penalty" --seed 1
        --span 1000 --threads "$threads")

# Dense up to the model's context: 8192 positions minus the prompt (the same prompt tokens).
prompt_tokens=$("$build/bin/headwise" generate --model "$model" --chat --prompt "$prompt" \
  --max-tokens 1 2>&1 | sed -n 's/^prompt: \([0-9]*\) tokens.*/\1/p')
dense_tokens=$((8192 - prompt_tokens))
echo "streaming: $tokens tokens under $policy; dense: $dense_tokens tokens" >&2
pids=()
if [[ "$only" != dense ]]; then
  "$bin" "$model" "${common[@]}" --attention-policy "$policy" --max-tokens "$tokens" \
    > "$out.streaming.jsonl" 2> "$out.streaming.log" &
  pids+=($!)
fi
if [[ "$only" != streaming ]]; then
  "$bin" "$model" "${common[@]}" --max-tokens "$dense_tokens" \
    > "$out.dense.jsonl" 2> "$out.dense.log" &
  pids+=($!)
fi
for pid in "${pids[@]}"; do wait "$pid"; done
python3 bench/streaming/report.py "$out" --date "$date" --policy "$policy" --threads "$threads" \
  --tokens "$tokens" --model "$model" --repetition-penalty "$penalty"
