#!/usr/bin/env bash
# The passkey-retrieval quality table on the GPU machine (bench/passkey_bench.cc): SmolLM2-135M-
# Instruct, dense against the policies in PASSKEY_POLICIES, prompts of 1K-8K tokens, 50 samples a
# cell, one model load for everything. Writes the JSON lines to $OUT/passkey.jsonl.
#
# The binaries (.carry/gpu, ~60 MB) and the GGUF (98 MB, in two parts) exceed what one device
# call may carry (64 MiB), so they travel in three back-to-back calls; the warm machine keeps
# /tmp between them (as in scripts/device/smollm2-gpu.sh):
#   here:   scripts/device/pack.sh && scripts/device/smollm2-gpu.sh split
#   device: bash scripts/device/run-passkey-bench.sh stash   carry [".carry/gpu"]
#   device: bash scripts/device/smollm2-gpu.sh stash         carry [".carry/smol0"]
#   device: bash scripts/device/run-passkey-bench.sh run     carry [".carry/smol1"]
# Policy files (and the head profiles they name) are part of the working tree, so they travel
# with every call; their paths are relative to the repository root.
#   PASSKEY_POLICIES  NAME=FILE,... after dense (default: DuoAttention from its retrieval
#                     profile, RazorAttention from its razor profile and StreamingLLM;
#                     "none" for dense alone).
#   PASSKEY_ARGS      extra flags (default: --lengths 1024,2048,4096,8192 --samples 50)
# A policy the engine refuses stops the run with the engine's message.
set -uo pipefail
carry=/tmp/hw-gpu
case "${1:-}" in
  stash)
    [ -x .carry/gpu/bin/hw_bench_passkey ] || { echo "no .carry/gpu/bin/hw_bench_passkey: carry .carry/gpu (scripts/device/pack.sh)"; exit 1; }
    rm -rf "$carry" && cp -r .carry/gpu "$carry" && ls -la "$carry/bin"
    ;;
  run)
    [ -x "$carry/bin/hw_bench_passkey" ] || { echo "binaries not stashed: run '$0 stash' first"; exit 1; }
    gguf=$(scripts/device/smollm2-gpu.sh gguf) || exit 1
    bash scripts/device/unpack-libs.sh "$carry/lib" || exit 1
    export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export HEADWISE_SHARED=$carry/shared
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    smol=configs/policies/smollm2-135m
    extra=${PASSKEY_POLICIES-duo=$smol/duo.json,razor=$smol/razor.json,streaming=configs/policies/streaming-llm.json}
    [ "$extra" = none ] && extra=
    policies=dense=configs/policies/dense.json${extra:+,$extra}
    out=${OUT:-/tmp}
    "$carry/bin/hw_bench_passkey" "$gguf" --device cuda --policies "$policies" \
      ${PASSKEY_ARGS:---lengths 1024,2048,4096,8192 --samples 50} \
      >"$out/passkey.jsonl" 2>"$out/passkey.err"
    rc=$?
    cat "$out/passkey.jsonl" "$out/passkey.err"
    exit $rc
    ;;
  *)
    echo "usage: $0 stash|run (see the comment at the top)" >&2
    exit 2
    ;;
esac
