#!/usr/bin/env bash
# Copies the shared libraries a built binary loads (its ldd closure) into DEST, except those the
# runtime image has of its own: the C runtime (libc, libm, libstdc++, libgcc_s, the loader) and
# CUDA's (the CUDA runtime image carries cudart and cuBLAS; the driver's libcuda comes from the
# host through the NVIDIA container toolkit). The Dockerfile's runtime stage uses it, so that its
# library list follows the binary instead of being written by hand.
#   docker/runtime-libs.sh DEST BINARY [BINARY...]
set -euo pipefail
dest=${1:?usage: runtime-libs.sh DEST BINARY...}
shift
(($# > 0)) || { echo "runtime-libs.sh: no binary given" >&2; exit 2; }
mkdir -p "$dest"
for bin in "$@"; do
  # A library ldd cannot find would fail at run time: refuse here.
  if ldd "$bin" | grep -q "not found"; then
    ldd "$bin" | grep "not found" >&2
    exit 1
  fi
  ldd "$bin" | awk '$3 ~ /^\// {print $3}'
done | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so* | libm.so* | libdl.so* | librt.so* | libpthread.so* | ld-linux* | libstdc++.so* | \
      libgcc_s.so*) ;;
    libcuda.so* | libcudart.so* | libcublas* | libnccl* | libnvrtc* | libnvJitLink*) ;;
    *) cp -L "$lib" "$dest/" ;;
  esac
done
