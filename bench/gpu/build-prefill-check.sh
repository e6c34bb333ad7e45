#!/usr/bin/env bash
# Builds the standalone paged prefill attention check into .carry/prefill/ (cudart linked
# statically, so the binary runs on a bare GPU machine). Extra arguments go to nvcc, e.g.
#   bench/gpu/build-prefill-check.sh -DHW_PREFILL_WARPS=8 -o .carry/prefill/prefill_check_w8
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
mkdir -p .carry/prefill
out=.carry/prefill/prefill_check
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
"$nvcc" -O3 -std=c++17 -gencode=arch=compute_90a,code=sm_90a -cudart static -lineinfo \
  -Xptxas -v -I"$root" "${args[@]}" \
  kernels/cuda/prefill_attention.cu bench/gpu/prefill_attention_check.cu -o "$out" \
  2> >(tee "$out.ptxas.log" >&2)
echo "built $out"
