#!/usr/bin/env bash
# Fills the git-ignored .carry/ab/ for bench/serving/run-frontend-ab-gpu.sh: payload.tar.xz
# holds the two headwise binaries to compare (stripped; CUDA builds for the GPU) as
# bin/headwise-old and bin/headwise-new, the Debian libraries they need (lib/; ICU's data alone
# is 30 MB, hence xz: ~46 MB become ~15) and the TinyStories-656K model (models/); wheels/ holds
# aiohttp and its dependencies for Python 3.12 (the device image has aiohttp; they are the
# fallback). Prints the size of what would travel.
#
#   bench/serving/pack-frontend-ab.sh OLD_BIN NEW_BIN
#
# Then, through the device tool, from this checkout's root, with carry [".carry/ab"]:
#   bash bench/serving/run-frontend-ab-gpu.sh
# Environment: HEADWISE_SHARED (../shared), OLD_LABEL / NEW_LABEL (what each binary is, for
# the report), NO_WHEELS=1 (skip the download).
set -euo pipefail
[[ $# -eq 2 ]] || { sed -n '2,12p' "$0"; exit 2; }
old=$(realpath "$1")
new=$(realpath "$2")
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
shared=${HEADWISE_SHARED:-$root/../shared}
out=.carry/ab
git check-ignore -q "$out" || { echo "pack-frontend-ab: $out is not git-ignored" >&2; exit 1; }
for b in "$old" "$new"; do
  [[ -x $b ]] || { echo "pack-frontend-ab: no executable $b" >&2; exit 1; }
  ldd "$b" | grep -q libcudart ||
    echo "pack-frontend-ab: warning: $b links no CUDA runtime (a CPU-only build: AB_DEVICE=cpu)" >&2
done
rm -rf "$out"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out/wheels" "$stage/bin" "$stage/models"
strip -o "$stage/bin/headwise-old" "$old"
strip -o "$stage/bin/headwise-new" "$new"
"$shared/device/pack-runtime-libs.sh" "$stage/lib" "$stage"/bin/* >&2
cp -r "$shared/models/tinystories-656k" "$stage/models/"
chmod -R u+w "$stage"
echo "pack-frontend-ab: unpacked $(du -sh "$stage" | cut -f1) (bin $(du -sh "$stage/bin" | cut -f1)," \
  "lib $(du -sh "$stage/lib" | cut -f1), model $(du -sh "$stage/models" | cut -f1))"
tar -C "$stage" -cf - bin lib models | xz -6 -T2 >"$out/payload.tar.xz"
if [[ -z ${NO_WHEELS:-} ]]; then
  # One version of each package, for CPython 3.12 on x86-64 (the device's python3).
  python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$out/wheels" aiohttp ||
    echo "pack-frontend-ab: warning: no wheels (the device image's aiohttp must do)" >&2
fi
{
  echo "old: ${OLD_LABEL:-$old} (sha256 $(sha256sum "$old" | cut -c1-12), built $(date -u -r "$old" +%FT%TZ))"
  echo "new: ${NEW_LABEL:-$new} (sha256 $(sha256sum "$new" | cut -c1-12), built $(date -u -r "$new" +%FT%TZ))"
  echo "packed from $(git -C "$root" rev-parse --short HEAD) on $(date -u +%FT%TZ)"
} >"$out/MANIFEST"
chmod -R u+w "$out"
cat "$out/MANIFEST"
carry_b=$(du -sb "$out" | cut -f1)
tracked_b=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked_b=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
untracked_b=${untracked_b:-0}
total=$((carry_b + tracked_b + untracked_b))
mib() { awk -v b="$1" 'BEGIN{printf "%.1f MiB", b / 1048576}'; }
echo "pack-frontend-ab: $out $(mib "$carry_b") (payload.tar.xz $(du -sh "$out/payload.tar.xz" | cut -f1)," \
  "wheels $(du -sh "$out/wheels" | cut -f1));" \
  "tracked files $(mib "$tracked_b"), untracked $(mib "$untracked_b"): $(mib "$total") of the 64 MiB a call carries"
((total < 60 * 1048576)) || { echo "pack-frontend-ab: too large to travel" >&2; exit 1; }
