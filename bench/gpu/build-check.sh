#!/usr/bin/env bash
# Builds one standalone kernel check (a CUDA kernel file plus its check program and the header-only
# bench/gpu/check_util.cuh, nothing else of the repo) into .carry/KERNEL/, cudart linked
# statically so the binary runs on a bare GPU machine:
#   bench/gpu/build-check.sh prefill|decode|gemv [nvcc args] [-o OUT]
# e.g. bench/gpu/build-check.sh prefill -DHW_PREFILL_WARPS=8 -o .carry/prefill/prefill_check_w8
# The gemv check opens cuBLAS (far too large to carry) at run time from the machine's CUDA;
# .carry/gemv/run.sh points the loader at the usual places and runs it.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
kernel=${1:?usage: build-check.sh prefill|decode|gemv [nvcc args] [-o OUT]}
shift
case "$kernel" in
  prefill) src=prefill_attention extra=() ;;
  decode) src=decode_attention extra=() ;;
  gemv) src=gemv extra=(-ldl) ;;
  *) echo "build-check.sh: unknown kernel '$kernel'" >&2; exit 2 ;;
esac
nvcc="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
mkdir -p ".carry/$kernel"
out=".carry/$kernel/${kernel}_check"
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
  "kernels/cuda/$src.cu" "bench/gpu/${src}_check.cu" "${extra[@]}" -o "$out" \
  2> >(tee "$out.ptxas.log" >&2)
if [[ $kernel == gemv ]]; then
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
fi
echo "built $out ($(du -h "$out" | cut -f1))"
