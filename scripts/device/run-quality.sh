#!/usr/bin/env bash
# The policy quality table of a Qwen2.5-Coder model on the GPU machine with `headwise eval`:
# dense, StreamingLLM, DuoAttention and RazorAttention (configs/policies/<NAME>/), each an A/B
# arm of one engine on the same prompts. The model is staged by scripts/device/stage-model.sh,
# the binaries stashed by scripts/device/qwen-checks.sh stash; the haystack travels as
# .carry/haystack/austen.txt.xz (here: mkdir -p .carry/haystack && xz -9c "$(scripts/make-haystack.sh)"
# >.carry/haystack/austen.txt.xz; 1 MB), carried with any call before or with the run.
#   device: bash scripts/device/run-quality.sh NAME LENGTHS [SAMPLES]
# A missing head profile (configs/policies/NAME/{retrieval,razor}-profile.json) is made first
# with profile-heads on the GPU (retrieval: PROFILE_LENGTHS, default 2048,4096,8192; razor: a
# 1000-token block 4 times, RAZOR_INDUCTION_RATIO default 0.5) and comes back with the results.
# One eval run per length, each its own PREFIX (merge them here with `headwise eval --merge`).
# Everything comes back as $OUT/quality.tgz.
# Environment: SAMPLES (50; the third argument wins), TASKS (all), POLICIES (the four), EVAL_ARGS
# (extra flags), OUT_TAG (a suffix of the results' names, so that a run split by TASKS over calls
# keeps each part).
set -uo pipefail
name=${1:?usage: run-quality.sh NAME LENGTHS [SAMPLES]}
lengths=${2:?usage: run-quality.sh NAME LENGTHS [SAMPLES]}
samples=${3:-${SAMPLES:-50}}
NEED_BIN=headwise source scripts/device/stashed-env.sh
res=/tmp/hw-quality && mkdir -p "$res"
trap 'tar -C "$res" -czf "$OUT/quality.tgz" .' EXIT
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$res/device.txt"
dir=configs/policies/$name
# The head profiles the policies name: made here when the tree lacks them (and kept in $res, so
# a later call of the series reuses them).
for method in retrieval razor; do
  [[ -f $dir/$method-profile.json ]] && continue
  if [[ ! -f $res/$method-profile.json ]]; then
    t0=$SECONDS
    if [[ $method == retrieval ]]; then
      args=(--context-lengths "${PROFILE_LENGTHS:-2048,4096,8192}" --depths 5)
    else
      # Half the KV heads by induction score: at the paper's 0.14 the 0.5B lost niah_multivalue
      # by 54-78 points (bench/results/quality-qwen2.5-coder-0.5b-2026-12-07-h100.md), at 0.5 it held.
      args=(--razor-length 1000 --induction-ratio "${RAZOR_INDUCTION_RATIO:-0.5}")
    fi
    "$carry/bin/headwise" profile-heads "$gguf" --device cuda --method $method "${args[@]}" \
      --out "$res/$method-profile.json" >"$res/profile-$method.log" 2>&1 \
      || { echo "FAIL $method profile"; tail -5 "$res/profile-$method.log"; exit 1; }
    echo "$method profile: $((SECONDS - t0)) s"
  fi
  cp "$res/$method-profile.json" "$dir/"
done
policies=${POLICIES:-dense=,streaming=$dir/streaming.json,duo=$dir/duo.json,razor=$dir/razor.json}
tag=${OUT_TAG:+-$OUT_TAG}
for len in ${lengths//,/ }; do
  t0=$SECONDS
  "$carry/bin/headwise" eval "$gguf" --device cuda --policies "$policies" --lengths "$len" \
    --samples "$samples" --haystack "$haystack" ${TASKS:+--tasks $TASKS} \
    --commit "${COMMIT:-unknown}" ${EVAL_ARGS:-} --out "$res/$name-$len$tag" \
    >"$res/eval-$len.log" 2>&1 || { echo "FAIL eval $len"; tail -5 "$res/eval-$len.log"; }
  echo "eval at $len tokens: $((SECONDS - t0)) s"
  grep -A30 "^## Accuracy" "$res/$name-$len$tag.md" 2>/dev/null | head -40
done
