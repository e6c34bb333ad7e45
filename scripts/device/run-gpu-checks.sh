#!/usr/bin/env bash
# On the GPU machine, from the repository root, with .carry/gpu from scripts/device/pack.sh:
# every CUDA kernel against the CPU backend, end-to-end logits and greedy text, then the speed
# table (hw_bench_gpu; HW_BENCH_ARGS adds flags). Prints a short table last; the logs come back
# as $OUT/gpu-logs.tgz, the two benchmarks' JSON lines beside it.
set -uo pipefail
root=$(pwd)
carry=$root/.carry/gpu
bash scripts/device/unpack-libs.sh "$carry/lib" || exit 1
export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HEADWISE_SOURCE_DIR=$root HEADWISE_SHARED=$carry/shared
# Logs gather in one folder and come back as one archive: a device call returns at most 8 files.
logs=/tmp/hw-gpu-logs
rm -rf "$logs" && mkdir -p "$logs"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
run() {
  local name=$1; shift
  if "$@" >"$logs/$name.log" 2>&1; then echo "PASS $name"; else echo "FAIL $name"; status=1; fi
}
run kernels_cuda "$carry/bin/kernels_cuda_test" "[cuda]" --durations yes
run select_cuda "$carry/bin/kernels_cuda_select_test" "[cuda]" --durations yes
run sampling_cuda "$carry/bin/sampling_test" "[cuda]" --durations yes
run engine_cuda "$carry/bin/engine_cuda_test" "[cuda]" -s
for dev in cpu cuda; do
  "$carry/bin/headwise" generate --model "$carry/shared/models/tinystories-656k" --device $dev \
    --prompt "Once upon a time, there was a little" --max-tokens 64 >"$logs/generate-$dev.txt" 2>&1
done
# The speed table at Llama-3-8B shapes (dummy weights), bounds measured in the same run.
"$carry/bin/hw_bench_gpu" "$root/configs/models/llama-3-8b" --load-format dummy \
  ${HW_BENCH_ARGS:-} >"$logs/bench-8b.jsonl" 2>"$logs/bench-8b.err"
"$carry/bin/hw_bench_gpu" "$root/configs/models/llama-3-8b" --load-format dummy \
  --batches 1 --contexts 1024 --prefill "" --attention-context 0 --enforce-eager \
  >>"$logs/bench-8b.jsonl" 2>>"$logs/bench-8b.err"
# PyTorch / transformers at the same shapes, on the same machine (HW_TORCH_BUDGET seconds; 0
# skips it).
if [ "${HW_TORCH_BUDGET:-300}" -gt 0 ]; then
  python3 bench/gpu/torch_reference.py --out "$logs/torch.jsonl" --budget-s "${HW_TORCH_BUDGET:-300}" \
    >/dev/null 2>"$logs/torch.err" || echo "FAIL torch_reference (see torch.err)"
fi
# Kept for scripts/device/smollm2-gpu.sh, whose calls cannot carry the binaries too.
rm -rf /tmp/hw-gpu && cp -r "$carry" /tmp/hw-gpu
echo "--- summary"
grep -hE "WARNING|with expansion|passed|failed|max \|diff\||greedy tokens|divergence" "$logs"/*.log | grep -v "^$" | head -40
echo "--- speed, Llama-3-8B shapes (dummy weights)"
python3 bench/gpu/report.py "$logs/bench-8b.jsonl" "$logs/torch.jsonl"; tail -3 "$logs/bench-8b.err"
echo "--- generate (cpu, then cuda)"
cat "$logs/generate-cpu.txt" "$logs/generate-cuda.txt"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/gpu-logs.tgz" -C "$logs" .
  cp "$logs/bench-8b.jsonl" "$OUT/" 2>/dev/null
  cp "$logs/torch.jsonl" "$OUT/" 2>/dev/null
fi
exit $status
