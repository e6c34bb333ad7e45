#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .carry/gpu from scripts/device/pack.sh:
# dense vs DuoAttention (the published Llama-3.1-8B gates, 50% streaming KV heads, sink 64 +
# recent 256) vs StreamingLLM's cache (every head sink 4 + window 2044) at Llama-3-8B shapes
# (dummy weights): KV bytes, capacity under a fixed KV budget, decode latency against the bytes
# a step reads (bench/policy_bench.cc). Writes the JSON lines to $OUT/policy-bench.jsonl.
#   POLICY_BENCH_ARGS  extra flags (default contexts 32K-128K, batches 1 and 4, budget 60 GB)
set -euo pipefail
root=$(pwd)
carry=$root/.carry/gpu
bash scripts/device/unpack-libs.sh "$carry/lib" || exit 1
export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
shared=${HEADWISE_SHARED:-$carry/shared}
tmp=$(mktemp -d)
# The shipped Duo file names its pattern relative to a checkout with ../shared beside it; here
# the pattern travels in the carry, so the policy is rewritten to point at it.
sed "s#\"path\": \"[^\"]*full_attention_heads.tsv\"#\"path\": \"$shared/patterns/duo-attention/Meta-Llama-3.1-8B-Instruct/full_attention_heads.tsv\"#" \
  configs/policies/duo-llama-3.1-8b.json >"$tmp/duo.json"
streaming=${STREAMING_POLICY:-configs/policies/streaming-llm.json}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
"$carry/bin/hw_bench_policy" configs/models/llama-3-8b --load-format dummy \
  --policies "dense=configs/policies/dense.json,duo=$tmp/duo.json,streaming=$streaming" \
  ${POLICY_BENCH_ARGS:-} | tee "${OUT:-$tmp}/policy-bench.jsonl"
