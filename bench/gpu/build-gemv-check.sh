#!/usr/bin/env bash
# Builds the standalone skinny-GEMM check into .carry/gemv/ (cudart linked statically; cuBLAS,
# far too large to carry, is opened at run time from the machine's CUDA, so the binary runs on a
# bare GPU machine with or without it). Also writes .carry/gemv/run.sh, which points the loader at
# the usual cuBLAS locations and runs the check. Extra arguments go to nvcc, e.g.
#   bench/gpu/build-gemv-check.sh -DHW_GEMV_STAGES=3 -o .carry/gemv/gemv_check_s3
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
mkdir -p .carry/gemv
out=.carry/gemv/gemv_check
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
  kernels/cuda/gemv.cu bench/gpu/gemv_check.cu -ldl -o "$out" \
  2> >(tee "$out.ptxas.log" >&2)
cat >.carry/gemv/run.sh <<'RUN'
#!/usr/bin/env bash
# Runs a gemv check binary (default .carry/gemv/gemv_check) with cuBLAS reachable if installed.
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/gemv_check}"
shift || true
paths=/usr/local/cuda/lib64
for d in /usr/local/cuda/targets/x86_64-linux/lib /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
  /opt/torch/.venv/lib/python3*/site-packages/nvidia/cublas/lib; do
  [[ -d $d ]] && paths="$paths:$d"
done
LD_LIBRARY_PATH="$paths${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$bin" "$@"
RUN
chmod +x .carry/gemv/run.sh
echo "built $out ($(du -h "$out" | cut -f1))"
