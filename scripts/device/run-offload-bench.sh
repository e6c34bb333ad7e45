#!/usr/bin/env bash
# Issue 17's speed table on the GPU machine, in one device call: RetrievalAttention (offload heads,
# RoarGraph on the host) against our dense path through the engine, Llama-3-8B shapes with dummy
# bf16 weights (bench/offload_bench.cc). From the repository root, with .carry/gpu from
#   PACK_BINARIES="hw_bench_offload kernels_cuda_select_test engine_cuda_test" bash scripts/device/pack.sh
# carry [".carry/gpu"]:
#   bash scripts/device/run-offload-bench.sh
#
# What runs, in order:
#  1. The offload kernels against the CPU (CHECKS_S seconds at most, default 120; 0 skips):
#     kernels_cuda_select_test's exact top keys and offload merge cases, engine_cuda_test's offload
#     heads step by step (exact and RoarGraph).
#  2. hw_bench_offload: dense at DENSE_BATCHES (default 1), then the policy POLICY (default
#     configs/policies/llama-3-8b-offload/roargraph.json) at BATCHES (default 1), prompts of
#     CONTEXT tokens (default 32768), TOKENS decoded each (default 128), host budget
#     CPU_KV_GB (default 100). Stops at BENCH_S seconds (default 420); lines are flushed as they
#     come, so a cut run keeps its finished cells.
# Device time: loading the dummy 8B ~30 s; dense prefill of 32K ~3 s (128K ~20 s); the offload
# prompt's index build on 16 cores is the unknown this run measures (random keys on 2 cores
# here: ~1.7 core-seconds per KV head at 32K keys with 8K training queries, growing ~9x per 4x
# keys: ~30 s for the 256 heads of a 32K prompt, ~4 min at 128K). Run 32K first, then 65536;
# 131072 when the 64K build time says it fits a call.
#
# Output: $OUT/offload-bench-CONTEXT[-TAG].jsonl and $OUT/offload-logs-CONTEXT[-TAG].tgz (stderr, the
# checks' logs), so that runs at several contexts (or policies, TAG) in one series keep each other's
# results.
set -uo pipefail
root=$(pwd)
carry=$root/.carry/gpu
[[ ! -d $carry && -x /tmp/hw-gpu/bin/hw_bench_offload ]] && carry=/tmp/hw-gpu
[ -x "$carry/bin/hw_bench_offload" ] || { echo "no $carry/bin/hw_bench_offload: carry .carry/gpu (scripts/device/pack.sh)"; exit 1; }
bash scripts/device/unpack-libs.sh "$carry/lib" || exit 1
export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HEADWISE_SOURCE_DIR=$root HEADWISE_SHARED=$carry/shared
out=${OUT:-/tmp/hw-offload-out}
context=${CONTEXT:-32768}
logs=/tmp/hw-offload-logs
rm -rf "$logs" && mkdir -p "$logs" "$out"
stem=$context${TAG:+-$TAG}  # TAG: runs of other policies at one context keep each other's files
trap 'tar czf "$out/offload-logs-$stem.tgz" -C "$logs" .' EXIT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$logs/nvidia-smi.txt"
nproc; free -g | head -2

checks_s=${CHECKS_S:-120}
if [ "$checks_s" -gt 0 ]; then
  check() {
    local name=$1; shift
    if timeout "$checks_s" "$@" >"$logs/$name.log" 2>&1; then echo "PASS $name"; else echo "FAIL $name (rc $?)"; fi
    tail -2 "$logs/$name.log"
  }
  check select "$carry/bin/kernels_cuda_select_test" "CUDA exact top keys match the reference,CUDA offload attention matches the merge rule"
  # Catch2 reads a comma in a test spec as "or": the name's own comma is escaped.
  check engine "$carry/bin/engine_cuda_test" 'CUDA logits with offload heads match the CPU\, step by step'
fi

timeout "${BENCH_S:-420}" "$carry/bin/hw_bench_offload" "${MODEL:-configs/models/llama-3.1-8b}" \
  --load-format dummy --policy "${POLICY:-configs/policies/llama-3-8b-offload/roargraph.json}" \
  --context "$context" --batches "${BATCHES:-1}" --dense-batches "${DENSE_BATCHES:-1}" \
  --tokens "${TOKENS:-128}" --cpu-kv-memory-gb "${CPU_KV_GB:-100}" ${BENCH_ARGS:-} \
  >"$out/offload-bench-$stem.jsonl" 2>"$logs/bench.err"
echo "hw_bench_offload: rc $?"
cat "$out/offload-bench-$stem.jsonl"
tail -5 "$logs/bench.err"
