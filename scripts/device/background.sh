#!/usr/bin/env bash
# Runs a long device script in the background of the warm machine, so that the calls of a series
# that only move files (model chunks: stage-model.sh append) go on while the GPU works, instead of
# the GPU waiting for them. Device time counts from the first call to the last either way; this
# fills it. The machine still goes back 30 s after a call: keep calling (append, or `wait`).
#   device: bash scripts/device/background.sh start SCRIPT [ARGS...]   returns at once
#           bash scripts/device/background.sh wait SECONDS             returns when SCRIPT ends or
#               after SECONDS, printing its new output; brings SCRIPT's $OUT back as
#               $OUT/background-out.tgz, beside its whole output ($OUT/background.log)
# SCRIPT runs from a copy of this call's tree (/tmp/hw-bg/tree, without .carry/gpu, .carry/stage*
# and .carry/llama-bin: stash the binaries first, qwen-checks.sh stash), so later calls that
# replace the tree do not touch the files it reads. Its $OUT is /tmp/hw-bg/out.
set -uo pipefail
bg=/tmp/hw-bg
case ${1:-} in
  start)
    shift
    [[ -f $bg/rc || ! -d $bg ]] || { echo "background.sh: a script is still running (wait first)"; exit 1; }
    rm -rf "$bg" && mkdir -p "$bg/tree" "$bg/out"
    tar --exclude=./.carry/gpu --exclude='./.carry/stage*' --exclude=./.carry/llama-bin \
      --exclude='./build*' --exclude=./.venv --exclude=./.git -cf - . |
      tar -C "$bg/tree" -xf -
    echo 0 >"$bg/shown"
    # setsid: a process left in the call's session is killed when the call returns.
    setsid bash -c 'cd "$1/tree" && shift && OUT=$0/out bash "$@" >"$0/log" 2>&1 </dev/null; echo $? >"$0/rc"' \
      "$bg" "$bg" "$@" </dev/null >/dev/null 2>&1 &
    echo "started $* in the background ($bg/log)"
    ;;
  wait)
    limit=${2:?usage: background.sh wait SECONDS}
    [[ -d $bg ]] || { echo "background.sh: nothing started"; exit 1; }
    end=$((SECONDS + limit))
    while [[ ! -f $bg/rc && $SECONDS -lt $end ]]; do sleep 5; done
    shown=$(cat "$bg/shown")
    tail -c +$((shown + 1)) "$bg/log"
    stat -c %s "$bg/log" >"$bg/shown"
    cp "$bg/log" "$OUT/background.log"
    tar -C "$bg/out" -czf "$OUT/background-out.tgz" .
    if [[ -f $bg/rc ]]; then echo "--- background script ended: rc $(cat "$bg/rc")"; else echo "--- still running"; fi
    ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
