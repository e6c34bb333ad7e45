#!/usr/bin/env bash
# Moves a model file bigger than one device call can carry (64 MiB in all) to the GPU machine in
# chunks over back-to-back calls: the machine keeps its files while warm (30 s after a call), so
# each call appends one chunk to a file under /tmp there, and the last one checks the sha256 of
# the whole before anything uses it.
#
# Here:   scripts/device/stage-model.sh split FILE
#           writes .carry/stage/part-00, part-01, ... (CHUNK_MIB MiB each, default 52: a call
#           carries the tracked tree too, about 8.6 MB, within 64 MiB in all) and
#           .carry/stage/manifest (file name, size, sha256, chunk size and count), and prints the
#           device calls to make.
# There:  one call per chunk, in order, each carrying only that chunk:
#           run(carry [".carry/stage/part-00", ".carry/stage/manifest"],
#               "bash scripts/device/stage-model.sh append 0")
#           ...
#           the last chunk's call, or any later one carrying the manifest:
#           bash scripts/device/stage-model.sh verify   # prints the staged path, or exits 1
#         then, in the same call or a later one while the machine is warm, use the printed path
#         (/tmp/hw-stage/<file>). A call that finds the machine cold (the file gone or short)
#         exits 1 naming the chunk to send next.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
# STAGE=.carry/stage-1.5b (any folder under .carry) keeps a second model's chunks beside the
# first, so both can be split before a series; give the same STAGE to append and verify.
stage_rel=${STAGE:-.carry/stage}
stage=$root/$stage_rel
remote=/tmp/hw-stage
chunk_mib=${CHUNK_MIB:-52}

# The manifest travels with each chunk; append keeps a copy beside the staged file, so that a
# later call of the series can verify without carrying it.
remote_manifest=$remote/manifest-$(basename "$stage_rel")
manifest() { if [[ -f $stage/manifest ]]; then echo "$stage/manifest"; else echo "$remote_manifest"; fi; }
manifest_field() { sed -n "s/^$1 //p" "$(manifest)"; }

case ${1:-} in
  split)
    file=${2:?usage: stage-model.sh split FILE}
    rm -rf "$stage" && mkdir -p "$stage"
    split -b "${chunk_mib}M" -d -a 2 "$file" "$stage/part-"
    chunks=$(find "$stage" -name 'part-*' | wc -l)
    {
      echo "name $(basename "$file")"
      echo "size $(stat -c %s "$file")"
      echo "sha256 $(sha256sum "$file" | cut -d' ' -f1)"
      echo "chunk_mib $chunk_mib"
      echo "chunks $chunks"
    } >"$stage/manifest"
    echo "staged $(basename "$file") in $chunks chunks under $stage_rel; device calls, in order:"
    for ((i = 0; i < chunks; i++)); do
      printf '  carry ["%s/part-%02d", "%s/manifest"]: STAGE=%s bash scripts/device/stage-model.sh append %d\n' \
        "$stage_rel" "$i" "$stage_rel" "$stage_rel" "$i"
    done
    echo "  then: STAGE=$stage_rel bash scripts/device/stage-model.sh verify"
    ;;
  append)
    i=${2:?usage: stage-model.sh append N}
    part=$(printf '%s/part-%02d' "$stage" "$i")
    name=$(manifest_field name)
    chunk_bytes=$(($(manifest_field chunk_mib) * 1024 * 1024))
    mkdir -p "$remote"
    target=$remote/$name
    # Each chunk but the last is exactly chunk_bytes: the file must hold i of them already. More
    # means chunk i is sent again (a retried call): cut back to before it.
    have=$(stat -c %s "$target" 2>/dev/null || echo 0)
    want=$((i * chunk_bytes))
    if [[ $have -lt $want ]]; then
      echo "stage-model.sh: $target holds $have bytes, chunk $i needs $want before it" \
        "(the machine went cold?): send chunk $((have / chunk_bytes)) next" >&2
      exit 1
    fi
    [[ $have -gt $want ]] && truncate -s "$want" "$target"
    cat "$part" >>"$target"
    cp "$stage/manifest" "$remote_manifest"
    echo "chunk $i appended: $(stat -c %s "$target") of $(manifest_field size) bytes"
    ;;
  verify)
    name=$(manifest_field name)
    target=$remote/$name
    if [[ "$(stat -c %s "$target" 2>/dev/null || echo 0)" != "$(manifest_field size)" ]] ||
      [[ "$(sha256sum "$target" | cut -d' ' -f1)" != "$(manifest_field sha256)" ]]; then
      echo "stage-model.sh: $target is not the staged file (size or sha256 differ)" >&2
      exit 1
    fi
    echo "$target"
    ;;
  *)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac
