#!/usr/bin/env bash
# StreamingLLM's perplexity setting beside the sampled run of run-20k.sh: SmolLM2-135M-Instruct
# reads a long natural text (teacher forcing, prefill chunks of 32 tokens) under a StreamingLLM
# policy for `--tokens` tokens, and under dense attention up to the model's context (8192), and
# hw_bench_streaming reports per 1,000 tokens the mean log-probability of the text's own next
# tokens, resident memory and non-finite logits. The default text is the Vim user manual
# (usr_*.txt of Debian's vim-runtime, concatenated): ~570 KB of English prose and examples.
#
# usage: bench/streaming/run-ppl.sh [--tokens N] [--policy FILE] [--threads N] [--name NAME]
#                                   [--text FILE] [--only streaming|dense]
set -euo pipefail
cd "$(dirname "$0")/../.."
tokens=20000 policy=bench/streaming/streaming-llm-4-1020.json threads=1 name= text= only=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tokens) tokens=$2; shift 2 ;;
    --policy) policy=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --name) name=$2; shift 2 ;;
    --text) text=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
build=${HEADWISE_BUILD:-build}
bin=$build/bin/hw_bench_streaming
model=$(scripts/get-model.sh smollm2-135m-instruct)
if [[ -z "$text" ]]; then
  text=$(mktemp)
  cat /usr/share/vim/vim90/doc/usr_0[1-9].txt /usr/share/vim/vim90/doc/usr_[1-4]*.txt > "$text"
fi
out=bench/results/${name:-streaming-llm-ppl-$(date +%F)-cpu}
common=(--text "$text" --prefill-chunk 32 --span 1000 --threads "$threads")
pids=()
if [[ "$only" != dense ]]; then
  "$bin" "$model" "${common[@]}" --attention-policy "$policy" --max-tokens "$tokens" \
    > "$out.streaming.jsonl" 2> "$out.streaming.log" &
  pids+=($!)
fi
if [[ "$only" != streaming ]]; then
  "$bin" "$model" "${common[@]}" --max-tokens 8191 > "$out.dense.jsonl" 2> "$out.dense.log" &
  pids+=($!)
fi
for pid in "${pids[@]}"; do wait "$pid"; done
