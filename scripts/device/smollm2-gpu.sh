#!/usr/bin/env bash
# SmolLM2-135M on the GPU against transformers' goldens and the CPU backend. Its GGUF (98 MB)
# and the test binaries (.carry/gpu, ~50 MB) exceed what one device call may carry (64 MiB), so
# they travel in three back-to-back calls (the warm machine keeps /tmp between them):
#   here:   scripts/device/smollm2-gpu.sh split          parts into .carry/smol0, .carry/smol1
#   device: bash scripts/device/run-gpu-checks.sh        carry .carry/gpu (stashes the binaries)
#   device: bash scripts/device/smollm2-gpu.sh stash     carry .carry/smol0
#   device: bash scripts/device/smollm2-gpu.sh run       carry .carry/smol1
set -uo pipefail
STASH=/tmp/hw-smol
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
case "${1:-}" in
  split)
    gguf=$(scripts/get-model.sh smollm2-135m-instruct) || exit 1
    rm -rf .carry/smol0 .carry/smol1 && mkdir -p .carry/smol0 .carry/smol1
    split -b 50M -d -a 1 "$gguf" /tmp/hw-smolpart.
    mv /tmp/hw-smolpart.0 .carry/smol0/part.0 && mv /tmp/hw-smolpart.1 .carry/smol1/part.1
    ;;
  stash)
    mkdir -p "$STASH" && cp .carry/smol0/part.0 "$STASH"/ && ls -la "$STASH" /tmp/hw-gpu/bin
    ;;
  gguf)
    # Joins the stashed part.0 with the carried part.1 and prints the GGUF's path (the device
    # scripts' common step).
    gguf=$STASH/SmolLM2-135M-Instruct.Q4_1.gguf
    [ -f "$STASH/part.0" ] || { echo "part.0 not stashed: run '$0 stash' first" >&2; exit 1; }
    cat "$STASH/part.0" .carry/smol1/part.1 >"$gguf" || exit 1
    [[ "$(sha256sum "$gguf" | cut -d' ' -f1)" == "$SHA256" ]] || { echo "sha256 mismatch" >&2; exit 1; }
    echo "$gguf"
    ;;
  run)
    gguf=$("$0" gguf) || exit 1
    carry=/tmp/hw-gpu
    bash scripts/device/unpack-libs.sh "$carry/lib" || exit 1
    export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export HEADWISE_SOURCE_DIR=$(pwd) HEADWISE_SHARED=$carry/shared HEADWISE_SMOLLM2_GGUF=$gguf
    "$carry/bin/engine_cuda_test" "[smollm2]" -s >"${OUT:-/tmp}/smollm2.log" 2>&1
    rc=$?
    grep -E "logits|greedy|divergence|passed|failed" "${OUT:-/tmp}/smollm2.log" | grep -v "^$"
    for dev in cpu cuda; do
      echo "--- generate --device $dev"
      "$carry/bin/headwise" generate --model "$gguf" --device $dev --chat --max-tokens 64 \
        --prompt "What is the capital of France?" 2>&1 | tail -3
    done
    exit $rc
    ;;
  *)
    echo "usage: $0 split|stash|gguf|run" >&2
    exit 2
    ;;
esac
