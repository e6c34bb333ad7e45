#!/usr/bin/env bash
# Prepares what the GPU machine needs in .carry/gpu/ (git-ignored): stripped test and tool
# binaries built here with nvcc, the Debian shared libraries they use, and the small shared
# models the GPU checks read. Then run, through the device tool with carry [".carry/gpu"]:
#   bash scripts/device/run-gpu-checks.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
build=${BUILD_DIR:-build}
shared=${HEADWISE_SHARED:-$root/../shared}
out=.carry/gpu
cmake -S . -B "$build" -G Ninja >/dev/null
# PACK_BINARIES: a smaller set when a series needs fewer (the call carries at most 64 MiB).
binaries=${PACK_BINARIES:-headwise kernels_cuda_test kernels_cuda_select_test sampling_test \
  engine_cuda_test hw_bench_gpu hw_bench_policy hw_bench_passkey hw_bench_streaming hw_bench_ann}
cmake --build "$build" --target $binaries
rm -rf "$out"
mkdir -p "$out/bin" "$out/shared/models"
for b in $binaries; do
  strip -o "$out/bin/$b" "$build/bin/$b"
done
"$shared/device/pack-runtime-libs.sh" "$out/lib" "$out"/bin/* >&2
# Libraries over 1 MB travel compressed (ICU's data: 30 MB, 7.5 MB as .xz; gRPC and OpenSSL
# for headwise's gRPC front end: 12 MB, about 4 as .xz); the device scripts unpack them with
# scripts/device/unpack-libs.sh.
find "$out/lib" -type f -size +1M -exec xz -T2 -6 {} +
cp -r "$shared/models/tinystories-656k" "$shared/models/stories260k-gguf" "$out/shared/models/"
duo=patterns/duo-attention/Meta-Llama-3.1-8B-Instruct
mkdir -p "$out/shared/$duo" && cp "$shared/$duo/full_attention_heads.tsv" "$out/shared/$duo/"
chmod -R u+w "$out"
du -sh "$out"
