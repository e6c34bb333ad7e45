#!/usr/bin/env bash
# Decompresses the libraries pack.sh stored as .xz (ICU's data alone is 30 MB and a device call
# carries at most 64 MiB). Idempotent; run before putting DIR on LD_LIBRARY_PATH.
set -euo pipefail
dir=${1:?usage: unpack-libs.sh LIBDIR}
for f in "$dir"/*.xz; do
  [[ -e $f ]] || continue
  # Python's lzma, not xz(1): the device image is not known to have xz-utils.
  [[ -e ${f%.xz} ]] || python3 -c "import lzma, shutil, sys
shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$f" "${f%.xz}"
done
