#!/usr/bin/env bash
# On the GPU machine, from the repository root: the speed benchmarks of this tree's binaries
# (.carry/gpu, scripts/device/pack.sh) against a baseline build of another commit
# (.carry/base/bin: hw_bench_gpu, hw_bench_policy, built here from that commit), in one call, each
# benchmark twice in alternating order (new, base, new, base) so clock drift shows as noise.
#   WHAT=gpu     hw_bench_gpu at Llama-3-8B shapes (dummy weights): batch 1 at 1K/8K/32K,
#                batches 8/32/64 (its defaults); HW_BENCH_ARGS adds flags.
#   WHAT=policy  hw_bench_policy: dense / duo / streaming at 32K-128K (run-policy-bench.sh's
#                policies); POLICY_BENCH_ARGS adds flags.
# JSON lines go to $OUT/<what>-{new,base}-{1,2}.jsonl.
set -euo pipefail
root=$(pwd)
what=${WHAT:-gpu}
out=${OUT:-/tmp/hw-ab}
mkdir -p "$out"
bash scripts/device/unpack-libs.sh "$root/.carry/gpu/lib" || exit 1
export LD_LIBRARY_PATH=$root/.carry/gpu/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
shared=$root/.carry/gpu/shared
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
tmp=$(mktemp -d)
sed "s#\"path\": \"[^\"]*full_attention_heads.tsv\"#\"path\": \"$shared/patterns/duo-attention/Meta-Llama-3.1-8B-Instruct/full_attention_heads.tsv\"#" \
  configs/policies/duo-llama-3.1-8b.json >"$tmp/duo.json"
run() {  # run <binary dir> <label> <round>
  local bin=$1 label=$2 round=$3
  case $what in
    gpu)
      "$bin/hw_bench_gpu" configs/models/llama-3-8b --load-format dummy ${HW_BENCH_ARGS:-} \
        >"$out/gpu-$label-$round.jsonl" 2>"$out/gpu-$label-$round.err" ;;
    policy)
      "$bin/hw_bench_policy" configs/models/llama-3-8b --load-format dummy \
        --policies "dense=configs/policies/dense.json,duo=$tmp/duo.json,streaming=configs/policies/streaming-llm.json" \
        ${POLICY_BENCH_ARGS:-} >"$out/policy-$label-$round.jsonl" 2>"$out/policy-$label-$round.err" ;;
  esac
  echo "done $what $label $round"
}
for round in 1 2; do
  run "$root/.carry/gpu/bin" new $round
  run "$root/.carry/base/bin" base $round
done
