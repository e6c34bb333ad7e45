#!/usr/bin/env bash
# Issue 16's speed table on the GPU machine, in one device call: decode step time of
# TidalDecode, Quest and Recycled Attention at Llama-3-8B shapes (dummy bf16 weights) against
# our dense path measured in the same run and against the bytes each step must read
# (bench/policy_bench.cc, bench/step_bytes.h). From the repository root, with .carry/gpu from
# scripts/device/pack.sh (this script needs hw_bench_policy and hw_bench_gpu, and runs
# kernels_cuda_select_test first when it is there: a smaller carry is
#   PACK_BINARIES="hw_bench_policy hw_bench_gpu kernels_cuda_select_test" bash scripts/device/pack.sh
# ), carry [".carry/gpu"]:
#   bash scripts/device/run-sparse-decode-bench.sh
#
# What runs, in order (JSON lines flushed as they come, so a cut run keeps what it measured):
#  1. kernels_cuda_select_test "[cuda]" (the selection kernels against the CPU; at most
#     SELECT_TEST_S seconds, default 120; SELECT_TEST_S=0 skips it). The speed table is only
#     meaningful where it passes; the bench runs either way.
#  2. hw_bench_policy: dense (configs/policies/dense.json) first, then the files of
#     configs/policies/llama-3-8b/ (tidal 256/1024/4096 with a set per KV head, tidal 4096 with a
#     set per query head, quest 256/1024/4096, recycled 1024/4096), batches BATCHES (1,4,16) x
#     contexts CONTEXTS (16384,32768,65536,131072), TOKENS timed steps (30: three of Recycled's
#     refresh periods), no capacity rows. For each (batch, context) every policy runs in turn,
#     dense first; a cell whose KV (+ selection state) does not fit the card is printed as
#     skipped. Weights take 16 GB, dense KV 128 KiB a token: on an 80 GB H100 batch 1 fits every
#     context, batch 4 up to 64K, batch 16 only 16K (16K is outside the issue's 32K-128K: it is
#     there so that an H100 run still has a batch-16 row); an H200 adds batch 4 at 128K and
#     batch 16 at 32K. Batch 16 at 64K and 128K fit no single card.
#     If the bench dies (a kernel's trap, a check), it runs again without the policy it was
#     measuring (the one after the last line printed), at most twice; every run has its own
#     dense baseline, and the report keeps each run's rows with their own dense. After each row,
#     OP_STEPS (default 3; 0: none) eager steps synchronized per operation say where the time
#     goes (hw_bench_policy --op-times; the report's per-operation table).
#  3. hw_bench_gpu's decode at batches 1 and 4, 32K (GPU_CROSSCHECK=0 skips it): the GPU
#     benchmark's dense step beside the policy bench's dense rows, the same measurement
#     (bench_util.h TimeDecodeSteps) in another process.
# Everything stops at BENCH_BUDGET_S seconds (default 420) of bench time. MODEL (default
# configs/models/llama-3-8b) and BENCH_ARGS (flags for both benches, e.g. "--device cpu") exist
# to try the script without a GPU on a small config of 14+ layers.
#
# Device time, estimated: model load ~20-30 s per process (dummy 8B weights: host fill, upload,
# weight hash); per measured (policy, cell) ~0.6-1.5 s (cache + random fill ~0.2 s, graph
# capture, >= 0.2 s warm-up, 30 steps of 7-30 ms); 10 policies x 8 cells that fit an H100 = 80
# measurements, ~1.5-2 min; the select test <= 2 min; the cross-check ~40 s. About 4-5 minutes
# in all on an H100 (an H200 fits 10 cells: ~30 s more). To cut it: BATCHES=1,4 (-1 cell per
# context), CONTEXTS=32768,65536,131072 (-3 cells), SELECT_TEST_S=0, GPU_CROSSCHECK=0.
#
# Output: $OUT/sparse-decode.jsonl (every run's lines, in order, each run opened by a
# {"kind": "run", ...} line), $OUT/sparse-decode.md (the table: bench/gpu/sparse_report.py), and
# $OUT/sparse-decode-logs.tgz (stderr, the select test's log, nvidia-smi). Into bench/results:
#   python3 bench/gpu/sparse_report.py sparse-decode.jsonl --commit $(git rev-parse --short HEAD) \
#     > bench/results/sparse-decode-YYYY-MM-DD-<card>.md
# then copy the .jsonl beside it and add what the report asks for (device, date, command).
set -uo pipefail
root=$(pwd)
# The carried binaries, or those an earlier call of the series stashed (qwen-checks.sh stash).
carry=$root/.carry/gpu
[[ ! -d $carry && -x /tmp/hw-gpu/bin/hw_bench_policy ]] && carry=/tmp/hw-gpu
[ -x "$carry/bin/hw_bench_policy" ] || { echo "no $carry/bin/hw_bench_policy: carry .carry/gpu (scripts/device/pack.sh)"; exit 1; }
bash scripts/device/unpack-libs.sh "$carry/lib" || exit 1
export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export HEADWISE_SOURCE_DIR=$root HEADWISE_SHARED=$carry/shared
out=${OUT:-/tmp/hw-sparse-out}
logs=/tmp/hw-sparse-logs
rm -rf "$logs" && mkdir -p "$logs" "$out"
jsonl=$out/sparse-decode.jsonl
: >"$jsonl"
batches=${BATCHES:-1,4,16}
contexts=${CONTEXTS:-16384,32768,65536,131072}
tokens=${TOKENS:-30}
budget_s=${BENCH_BUDGET_S:-420}
start=$(date +%s)
left() { echo $((budget_s - ($(date +%s) - start))); }

model=${MODEL:-configs/models/llama-3-8b}
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | tee "$logs/nvidia-smi.txt"
gpu=$(head -1 "$logs/nvidia-smi.txt")

# 1. The selection kernels against the CPU backend.
if [ "${SELECT_TEST_S:-120}" -gt 0 ] && [ -x "$carry/bin/kernels_cuda_select_test" ]; then
  if timeout "${SELECT_TEST_S:-120}" "$carry/bin/kernels_cuda_select_test" "[cuda]" >"$logs/select-test.log" 2>&1; then
    echo "PASS kernels_cuda_select_test [cuda]"
  else
    echo "FAIL kernels_cuda_select_test [cuda] (rc $?; the speed rows below may be of wrong kernels)"
  fi
  tail -3 "$logs/select-test.log"
fi

# 2. The policies, dense first.
dir=configs/policies/llama-3-8b
names=(dense tidal-256 tidal-1024 tidal-4096 tidal-qhead-4096 quest-256 quest-1024 quest-4096
       recycled-1024 recycled-4096)
policy_arg() {  # NAME=FILE,... of the names given
  local list="" n f
  for n in "$@"; do
    if [ "$n" = dense ]; then f=configs/policies/dense.json; else f=$dir/$n.json; fi
    list+="${list:+,}$n=$f"
  done
  echo "$list"
}
run_names=("${names[@]}")
for attempt in 1 2 3; do
  [ "$(left)" -gt 30 ] || { echo "bench budget spent before run $attempt"; break; }
  echo "{\"kind\": \"run\", \"attempt\": $attempt, \"device\": \"$gpu\", \"policies\": \"${run_names[*]}\", \"batches\": \"$batches\", \"contexts\": \"$contexts\", \"tokens\": $tokens}" >>"$jsonl"
  part=$logs/policy-$attempt.jsonl
  timeout "$(left)" "$carry/bin/hw_bench_policy" "$model" --load-format dummy ${BENCH_ARGS:-} \
    --policies "$(policy_arg "${run_names[@]}")" --batches "$batches" --contexts "$contexts" \
    --tokens "$tokens" --skip-capacity --op-times "${OP_STEPS:-3}" ${POLICY_BENCH_ARGS:-} \
    >"$part" 2>"$logs/policy-$attempt.err"
  rc=$?
  cat "$part" >>"$jsonl"
  echo "hw_bench_policy run $attempt: rc $rc, $(grep -c '"decode"' "$part") decode lines"
  [ $rc -eq 0 ] && break
  tail -5 "$logs/policy-$attempt.err"
  [ $rc -eq 124 ] && { echo "bench budget spent (timeout)"; break; }
  # The policy being measured when it died: the one after the last decode line, in the order
  # the bench runs them (cell by cell, policies in the order given).
  culprit=$(python3 - "$part" "${run_names[@]}" <<'EOF'
import json, sys
names = sys.argv[2:]
last = None
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        if r.get("kind") == "decode":
            last = r["policy"]
print(names[0] if last is None else names[(names.index(last) + 1) % len(names)])
EOF
)
  if [ "$culprit" = dense ]; then echo "dense itself failed: stopping"; break; fi
  echo "dropping $culprit and running again"
  new=()
  for n in "${run_names[@]}"; do [ "$n" = "$culprit" ] || new+=("$n"); done
  run_names=("${new[@]}")
  [ ${#run_names[@]} -gt 1 ] || break
done

# 3. The GPU benchmark's dense step at the same shapes, for the record.
if [ "${GPU_CROSSCHECK:-1}" = 1 ] && [ -x "$carry/bin/hw_bench_gpu" ] && [ "$(left)" -gt 60 ]; then
  echo "{\"kind\": \"run\", \"attempt\": \"gpu_bench\", \"device\": \"$gpu\"}" >>"$jsonl"
  timeout "$(left)" "$carry/bin/hw_bench_gpu" "$model" --load-format dummy ${BENCH_ARGS:-} \
    --batches 1,4 --contexts 32768 --prefill "" --attention-context 0 --tokens "$tokens" \
    2>"$logs/gpu-bench.err" | sed 's/^{"kind": "/{"bench": "hw_bench_gpu", "kind": "/' >>"$jsonl"
fi

echo "--- $(($(date +%s) - start)) s"
python3 bench/gpu/sparse_report.py "$jsonl" | tee "$out/sparse-decode.md"
tar czf "$out/sparse-decode-logs.tgz" -C "$logs" .
