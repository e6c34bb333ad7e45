#!/usr/bin/env bash
# Qwen2.5-Coder on the GPU machine: transformers goldens, the CUDA and CPU backends against
# them, head profiles, a first passkey look. The GGUF travels in chunks
# (scripts/device/stage-model.sh), the binaries (.carry/gpu) in a call of their own, so a series
# of back-to-back device calls (the warm machine keeps /tmp ~30 s after each):
#   here:   scripts/device/pack.sh
#           scripts/device/qwen-checks.sh wheel       # the gguf wheel for transformers -> .carry/whl
#           scripts/device/stage-model.sh split "$(scripts/get-model.sh qwen2.5-coder-0.5b-instruct)"
#   device: bash scripts/device/qwen-checks.sh stash                carry [".carry/gpu", ".carry/whl"]
#   device: bash scripts/device/stage-model.sh append 0             carry [".carry/stage/part-00", ".carry/stage/manifest"]
#           ... one call per chunk ...
#   device: bash scripts/device/stage-model.sh append N && bash scripts/device/qwen-checks.sh run NAME
# NAME is qwen2.5-coder-0.5b-instruct or qwen2.5-coder-1.5b-instruct. STEPS (default
# "goldens cuda profiles passkey") picks what runs. Everything comes back as $OUT/qwen.tgz
# (goldens under golden/, profiles under profiles/, logs) and a summary on stdout.
set -uo pipefail
carry=/tmp/hw-gpu
site=/tmp/hw-site
case "${1:-}" in
  wheel)
    rm -rf .carry/whl && mkdir -p .carry/whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .carry/whl gguf==0.16.3
    ls .carry/whl
    ;;
  stash)
    [ -x .carry/gpu/bin/engine_cuda_test ] || { echo "carry .carry/gpu (scripts/device/pack.sh)"; exit 1; }
    rm -rf "$carry" "$site" && cp -r .carry/gpu "$carry"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .carry/whl/*.whl
    ls "$carry/bin" "$site"
    ;;
  run)
    name=${2:?usage: qwen-checks.sh run NAME}
    gguf=$(bash scripts/device/stage-model.sh verify) || exit 1
    [ -x "$carry/bin/engine_cuda_test" ] || { echo "binaries not stashed: run '$0 stash' first"; exit 1; }
    bash scripts/device/unpack-libs.sh "$carry/lib" || exit 1
    export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    export HEADWISE_SOURCE_DIR=$(pwd) HEADWISE_SHARED=$carry/shared HEADWISE_QWEN_GGUF=$gguf
    export PYTHONPATH=$site PYTHONUNBUFFERED=1
    res=/tmp/hw-qwen && rm -rf "$res" && mkdir -p "$res/golden" "$res/profiles"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$res/device.txt"
    steps=${STEPS:-goldens cuda profiles passkey}
    tag=qwen05 && golden_dir=tests/golden
    if [[ $name == *1.5b* ]]; then tag=qwen15 && golden_dir=tests/golden/device; fi
    finish() { tar -C "$res" -czf "$OUT/qwen.tgz" . ; }
    trap finish EXIT
    for step in $steps; do
      t0=$(date +%s)
      case $step in
        goldens)
          arg=--qwen05 && [[ $tag == qwen15 ]] && arg=--qwen15
          python3 scripts/goldens/make_goldens.py --out "$res/golden" --threads 16 --cases "$name" \
            "$arg" "$gguf" >"$res/goldens.log" 2>&1 && echo "PASS goldens" || { echo "FAIL goldens"; tail -20 "$res/goldens.log"; }
          # The CUDA check below reads the fresh golden from the tree.
          mkdir -p "$golden_dir" && cp "$res/golden/$name".* "$golden_dir/" 2>/dev/null
          ;;
        cuda)
          "$carry/bin/engine_cuda_test" "[$tag]" -s >"$res/cuda-golden.log" 2>&1 && echo "PASS cuda golden" || echo "FAIL cuda golden"
          grep -E "max \|diff\||greedy tokens|divergence|passed|failed" "$res/cuda-golden.log" | head -20
          ;;
        profiles)
          "$carry/bin/headwise" profile-heads "$gguf" --method razor --razor-length 1000 \
            --out "$res/profiles/razor-profile.json" >"$res/profile-razor.log" 2>&1 && echo "PASS razor profile" || echo "FAIL razor profile"
          "$carry/bin/headwise" profile-heads "$gguf" --method retrieval \
            --context-lengths ${PROFILE_LENGTHS:-1024,2048,4096} --depths 5 \
            --out "$res/profiles/retrieval-profile.json" >"$res/profile-retrieval.log" 2>&1 && echo "PASS retrieval profile" || echo "FAIL retrieval profile"
          tail -3 "$res/profile-razor.log" "$res/profile-retrieval.log"
          ;;
        passkey)
          "$carry/bin/hw_bench_passkey" "$gguf" --device cuda --prompt-form chat \
            --policies "dense=configs/policies/dense.json,streaming=configs/policies/streaming-llm.json" \
            ${PASSKEY_ARGS:---lengths 4096,16384,32000 --samples 10} >"$res/passkey.jsonl" 2>"$res/passkey.err" \
            && echo "PASS passkey" || { echo "FAIL passkey"; tail -5 "$res/passkey.err"; }
          grep '"cell"' "$res/passkey.jsonl" | cut -c1-200
          ;;
      esac
      echo "  ($step: $(( $(date +%s) - t0 )) s)"
    done
    ;;
  *)
    sed -n '2,17p' "$0" >&2
    exit 2
    ;;
esac
