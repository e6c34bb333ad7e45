#!/usr/bin/env bash
# Builds the standalone decode attention check into .carry/decode/ (cudart linked statically, so
# the binary runs on a bare GPU machine). Extra arguments go to nvcc, e.g.
#   bench/gpu/build-decode-check.sh -DSOMETHING -o .carry/decode/decode_check_variant
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
mkdir -p .carry/decode
out=.carry/decode/decode_check
args=()
while (($#)); do
  if [[ $1 == -o ]]; then
    out=$2
    shift 2
  else
    args+=("$1")
    shift
  fi
done
"$nvcc" -O3 -std=c++20 -gencode=arch=compute_90a,code=sm_90a -cudart static -lineinfo \
  -Xptxas -v -I"$root" "${args[@]}" \
  kernels/cuda/decode_attention.cu bench/gpu/decode_attention_check.cu -o "$out" \
  2> >(tee "$out.ptxas.log" >&2)
echo "built $out"
