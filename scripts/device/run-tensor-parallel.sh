#!/usr/bin/env bash
# Issue 19's runs, on a machine with several GPUs (a kind with 2, 4 or 8 of them). Carry
# .carry/gpu made with
#   PACK_BINARIES="headwise engine_cuda_test hw_bench_gpu" bash scripts/device/pack.sh
# stash it (`bash scripts/device/qwen-checks.sh stash`, carry .carry/gpu .carry/whl), then
#   COMMIT=<sha> bash scripts/device/run-tensor-parallel.sh
#  1. Greedy equality: engine_cuda_test "[multigpu]" with HEADWISE_TP_RANKS=N for N = 2, 4, 8 (as
#     many as the machine has): TinyStories over N GPUs through NCCL, decode graphs captured per
#     rank, dense and a mixed ring / compress-once layout, against one GPU.
#  2. Decode at Llama-3-8B shapes (dummy weights): hw_bench_gpu --tensor-parallel-size N for N = 1,
#     2, 4 (where present), BATCHES (default 1,8), CONTEXTS (default 1024,8192): each N's step
#     against its own roofline (one rank's weights and KV at the copy bandwidth measured in the
#     run, plus the step's all-reduces and logits gather timed alone in the same run).
#  3. Serving, when a model is staged (scripts/device/stage-model.sh; Qwen2.5-Coder-1.5B-Instruct
#     has 2 KV heads: N = 2 only): bench/serving/run-peer.sh with SERVERS=headwise at N = 1 and 2,
#     CONCS (default "16 64").
# Writes $OUT/tp.tgz (logs, JSON lines, the serving results) and prints the tables.
# Device time, estimated: the multigpu test ~20 s per N; hw_bench_gpu ~40 s per N (the dummy 8B
# load, ~16 GB / N per GPU); serving ~2 min per N.
set -uo pipefail
carry=/tmp/hw-gpu
[ -x "$carry/bin/engine_cuda_test" ] || { echo "binaries not stashed: qwen-checks.sh stash"; exit 1; }
bash scripts/device/unpack-libs.sh "$carry/lib" || exit 1
export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HEADWISE_SOURCE_DIR=$(pwd) HEADWISE_SHARED=$carry/shared
res=/tmp/hw-tp && rm -rf "$res" && mkdir -p "$res"
trap 'tar -C "$res" -czf "${OUT:-/tmp}/tp.tgz" .' EXIT
nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv,noheader | tee "$res/gpus.txt"
gpus=$(wc -l <"$res/gpus.txt")
echo "commit ${COMMIT:-unknown}, $gpus GPUs" | tee "$res/run.txt"
[ "$gpus" -ge 2 ] || { echo "one GPU: nothing of this script can run (the one-GPU check is engine_cuda_test [cuda])"; exit 1; }

# 1. Greedy equality.
for n in 2 4 8; do
  [ "$n" -le "$gpus" ] || break
  if HEADWISE_TP_RANKS=$n timeout 300 "$carry/bin/engine_cuda_test" "[multigpu]" -s \
    >"$res/multigpu-$n.log" 2>&1; then
    echo "PASS multigpu N=$n"
  else
    echo "FAIL multigpu N=$n (rc $?)"
  fi
  grep -E "max \|logit diff\||passed|failed" "$res/multigpu-$n.log" | tail -4
done

# 2. Decode against each N's roofline.
for n in 1 2 4; do
  [ "$n" -le "$gpus" ] || break
  timeout 300 "$carry/bin/hw_bench_gpu" configs/models/llama-3-8b --load-format dummy \
    --tensor-parallel-size "$n" --batches "${BATCHES:-1,8}" --contexts "${CONTEXTS:-1024,8192}" \
    --attention-context 0 >"$res/decode-$n.jsonl" 2>"$res/decode-$n.err" ||
    { echo "FAIL hw_bench_gpu N=$n"; tail -3 "$res/decode-$n.err"; }
done
python3 - "$res" <<'PY'
import glob, json, os, sys
print("| N | batch | context | step ms | roofline ms | of roofline | collectives ms | tokens/s |")
print("|---|---|---|---|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(sys.argv[1], "decode-*.jsonl"))):
    for line in open(f):
        r = json.loads(line)
        if r.get("kind") != "decode" or "ms" not in r:
            continue
        print(f"| {r['tensor_parallel_size']} | {r['batch']} | {r['context']} | {r['ms']:.3f} "
              f"| {r['roofline_ms']:.3f} | {r['fraction_of_roofline']:.2f} | {r['collectives_ms']:.3f} "
              f"| {r['tokens_per_s']:.0f} |")
PY

# 3. Serving, N = 1 and 2, when a model is staged.
if model=$(bash scripts/device/stage-model.sh verify 2>/dev/null); then
  for n in 1 2; do
    mkdir -p "$res/serving-$n"
    MODEL=$model SERVERS=headwise HW_ARGS="--tensor-parallel-size $n" TAG=tp$n CONCS="${CONCS:-16 64}" \
      OUT=$res/serving-$n timeout 400 bash bench/serving/run-peer.sh run >"$res/serving-$n.out" 2>&1
    tail -4 "$res/serving-$n.out"
  done
else
  echo "no staged model: serving skipped"
fi
