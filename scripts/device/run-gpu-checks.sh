#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .carry/gpu from scripts/device/pack.sh:
# every CUDA kernel against the CPU backend, then end-to-end logits and greedy text. Prints a
# short table last; full logs go to $OUT when set.
set -uo pipefail
root=$(pwd)
carry=$root/.carry/gpu
export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HEADWISE_SOURCE_DIR=$root HEADWISE_SHARED=$carry/shared
logs=${OUT:-/tmp}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
run() {
  local name=$1; shift
  if "$@" >"$logs/$name.log" 2>&1; then echo "PASS $name"; else echo "FAIL $name"; status=1; fi
}
run kernels_cuda "$carry/bin/kernels_cuda_test" "[cuda]" --durations yes
run engine_cuda "$carry/bin/engine_cuda_test" "[cuda]" -s
for dev in cpu cuda; do
  "$carry/bin/headwise" generate --model "$carry/shared/models/tinystories-656k" --device $dev \
    --prompt "Once upon a time, there was a little" --max-tokens 64 >"$logs/generate-$dev.txt" 2>&1
done
# Decode step of Llama-3-8B shapes (dummy weights) at batch 1: a first baseline. The bound
# uses the 3.0 TB/s copy bandwidth of DEVICE.md, not one measured in this run.
for ctx in 1024 8192; do
  "$carry/bin/hw_bench_decode" "$root/configs/models/llama-3-8b" --load-format dummy \
    --device cuda --context $ctx --tokens 32 --bandwidth-gbs 3000 >>"$logs/decode-8b.jsonl" 2>&1
done
echo "--- summary"
grep -hE "WARNING|with expansion|passed|failed|max \|diff\||greedy tokens|divergence" "$logs"/*.log | grep -v "^$" | head -40
echo "--- decode, Llama-3-8B shapes, batch 1"
cat "$logs/decode-8b.jsonl"
echo "--- generate (cpu, then cuda)"
cat "$logs/generate-cpu.txt" "$logs/generate-cuda.txt"
exit $status
