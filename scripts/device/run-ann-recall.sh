#!/usr/bin/env bash
# Issue 17's ANN recall on the GPU machine: hw_bench_ann (bench/ann_recall.cc) on a staged Qwen2.5-
# Coder model, one run per length: a niah_multikey prompt prefilled and decoded on the GPU (CUDA
# backend, observer on: q and the key pages copied to the host), then per (layer, KV head) exact
# top-100, RoarGraph and HNSW built and searched on the machine's 16 CPU cores. The model is staged
# by scripts/device/stage-model.sh, the binaries stashed by scripts/device/qwen-checks.sh stash
# (pack.sh's default list has hw_bench_ann), the haystack from .carry/haystack/austen.txt.xz as
# for run-quality.sh.
#   device: bash scripts/device/run-ann-recall.sh NAME LENGTHS
# NAME labels the results (e.g. qwen2.5-coder-0.5b-instruct), LENGTHS is a comma list (16384,32768).
# Everything comes back as $OUT/ann.tgz: per length ann-NAME-LEN.jsonl (JSON lines, flushed as
# they come, so a cut run keeps the layers it finished), ann-NAME-LEN.md (the summary, written
# when the length completes), the log, and device.txt.
# Environment: ANN_ARGS (extra hw_bench_ann flags, e.g. "--train-stride 2" or "--layers 0-11"),
# TAG (appended to the result names, so that calls over different --layers keep both: TAG=a, TAG=b),
# ANN_TIMEOUT (seconds per length, default 540: a device call runs at most 600 s), COMMIT.
#
# Device time, estimated from CPU timings here (bench/ann_recall_eval.h's EvaluateHead on one KV
# head of the 0.5B's shape, one core of this machine's EPYC, default sweep): 39 s per KV head at
# 16K, 133 s at 32K (the RoarGraph build is 80-90% of it: exact top-100 of the group's 7 x L
# prompt queries over ~L keys, quadratic in L). 48 KV heads (24 layers x 2) on 16 cores: about
# 2 min at 16K and 7 min at 32K, plus seconds of prefill and model load. So 16K fits one call;
# 32K is too close to the 540 s ANN_TIMEOUT (the host's cores may be slower, the threads not
# scale perfectly) to risk a 10-minute call on it: run it in two calls,
# TAG=a ANN_ARGS="--layers 0-11", then TAG=b ANN_ARGS="--layers 12-23" (about 3.5 min each), or
# with ANN_ARGS="--train-stride 2" (half the build, but fewer training queries than the paper).
# Since 2026-12-07 the RoarGraph's step 1 (that 80-90%) runs on the GPU by default, as the engine
# does it (hw_bench_ann --train-top backend), and the CPU's exact top keys are 2.6x faster
# (bench/results/roargraph-build-cpu-2026-12-07.md): 32K should fit one call; the 16K run of
# 2026-12-07 (before both) took 270 s.
set -uo pipefail
name=${1:?usage: run-ann-recall.sh NAME LENGTHS}
lengths=${2:?usage: run-ann-recall.sh NAME LENGTHS}
NEED_BIN=hw_bench_ann source scripts/device/stashed-env.sh
res=/tmp/hw-ann && mkdir -p "$res"
trap 'tar -C "$res" -czf "$OUT/ann.tgz" .' EXIT
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  echo "cpu: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
  echo "commit: ${COMMIT:-unknown}"
} | tee "$res/device.txt"
for len in ${lengths//,/ }; do
  t0=$SECONDS
  out=$res/ann-$name-$len${TAG:+-$TAG}
  timeout "${ANN_TIMEOUT:-540}" "$carry/bin/hw_bench_ann" "$gguf" --device cuda --lengths "$len" \
    --haystack "$haystack" --markdown "$out.md" ${ANN_ARGS:-} >"$out.jsonl" 2>"$out.log"
  rc=$?
  echo "ann recall at $len tokens: $((SECONDS - t0)) s, exit $rc, $(grep -o '"layer":[0-9]*,"kind":"layer"' "$out.jsonl" | sort -u | wc -l) layers measured"
  [[ $rc == 0 ]] || tail -5 "$out.log"
  grep -A30 "^### Smallest setting" "$out.md" 2>/dev/null | head -32
done
