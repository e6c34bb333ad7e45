#!/usr/bin/env bash
# The StreamingLLM long run on the GPU machine: SmolLM2-135M-Instruct generating 20,000 sampled
# tokens under configs/policies/streaming-llm.json (every head 4 sinks + 2044 window, positions
# re-indexed), and dense attention with the same prompt, seed and sampling up to the model's
# context, side by side on one GPU (hw_bench_streaming --device cuda). Writes
# $OUT/<name>.{streaming,dense}.{jsonl,log,txt}; bench/streaming/report.py makes the table here.
#
# The binaries and the GGUF travel as for the passkey table (scripts/device/run-passkey-bench.sh):
#   here:   scripts/device/pack.sh && scripts/device/smollm2-gpu.sh split
#   device: bash scripts/device/run-passkey-bench.sh stash     carry [".carry/gpu"]
#   device: bash scripts/device/smollm2-gpu.sh stash           carry [".carry/smol0"]
#   device: bash bench/streaming/run-20k-gpu.sh NAME [FLAGS]   carry [".carry/smol1"]
# FLAGS go to both runs (sampling: --repetition-penalty, --min-p, --temperature, ...);
# STREAMING_TOKENS (default 20000), STREAMING_POLICY (default configs/policies/streaming-llm.json).
set -uo pipefail
name=${1:?usage: $0 NAME [hw_bench_streaming flags]}
shift
carry=/tmp/hw-gpu
[ -x "$carry/bin/hw_bench_streaming" ] || { echo "binaries not stashed (run-passkey-bench.sh stash)"; exit 1; }
gguf=$(scripts/device/smollm2-gpu.sh gguf) || exit 1
export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
out=${OUT:-/tmp}
prompt="Write a very long story about a young cartographer who travels across many kingdoms. Describe every place, every person she meets and everything that happens, chapter after chapter."
common=(--device cuda --chat --prompt "$prompt" --seed 1 --span 1000 "$@")
prompt_tokens=$("$carry/bin/headwise" generate --model "$gguf" --device cuda --chat --prompt "$prompt" \
  --max-tokens 1 2>&1 | sed -n 's/^prompt: \([0-9]*\) tokens.*/\1/p')
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$carry/bin/hw_bench_streaming" "$gguf" "${common[@]}" \
  --attention-policy "${STREAMING_POLICY:-configs/policies/streaming-llm.json}" \
  --max-tokens "${STREAMING_TOKENS:-20000}" --text-out "$out/$name.streaming.txt" \
  >"$out/$name.streaming.jsonl" 2>"$out/$name.streaming.log" &
s=$!
"$carry/bin/hw_bench_streaming" "$gguf" "${common[@]}" --max-tokens $((8192 - prompt_tokens)) \
  --text-out "$out/$name.dense.txt" >"$out/$name.dense.jsonl" 2>"$out/$name.dense.log" &
d=$!
wait $s; rs=$?
wait $d; rd=$?
tail -n 2 "$out/$name.streaming.log" "$out/$name.dense.log"
exit $((rs | rd))
