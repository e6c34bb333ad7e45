#!/usr/bin/env bash
# Runs ON THE DEVICE MACHINE, from the repository root, with the inputs carried in
# .carry/goldens/ (see run-on-device.md). Two steps, because the SmolLM2 GGUF (98 MB) is
# larger than one call may carry:
#   scripts/goldens/device-run.sh stash   first call:  keeps part 1 of the GGUF in /tmp
#   scripts/goldens/device-run.sh run     second call: joins the parts, checks the sha256,
#                                         runs make_goldens.py, writes $OUT/goldens.tar
set -uo pipefail
C=.carry/goldens
STASH=/tmp/hw-goldens-stash
SMOL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
SMOL=/tmp/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

case "${1:-}" in
  stash)
    mkdir -p "$STASH" && cp "$C"/parta/smolpart.* "$STASH"/ && ls -la "$STASH"
    ;;
  run)
    export PYTHONUNBUFFERED=1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$C"/in/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
    smol_arg=()
    if [[ -f "$STASH/smolpart.0" && -f "$C/partb/smolpart.1" ]]; then
      mkdir -p "$(dirname "$SMOL")"
      cat "$STASH/smolpart.0" "$C/partb/smolpart.1" >"$SMOL"
      if [[ "$(sha256sum "$SMOL" | cut -d' ' -f1)" == "$SMOL_SHA256" ]]; then
        smol_arg=(--smollm2 "$SMOL")
      else
        echo "device-run.sh: SmolLM2 GGUF sha256 mismatch: case skipped" >&2
      fi
    else
      echo "device-run.sh: SmolLM2 GGUF parts missing: case skipped" >&2
    fi
    rm -rf /tmp/golden
    python3 scripts/goldens/make_goldens.py --out /tmp/golden --threads 16 \
      --tinystories "$C/in/tinystories-656k" \
      --stories260k "$C/in/stories260k/stories260K.gguf" \
      "${smol_arg[@]}" 2>&1 | tee "$OUT/log.txt"
    rc=${PIPESTATUS[0]}
    tar -C /tmp -cf "$OUT/goldens.tar" golden
    exit "$rc"
    ;;
  *)
    echo "usage: scripts/goldens/device-run.sh stash|run" >&2
    exit 2
    ;;
esac
