#!/usr/bin/env bash
# Serving A/B of two `headwise` binaries (the HTTP front end before and after a change) on one
# machine in one call: TinyStories-656K on the GPU, the model whose tokens cost least, so the
# front end carries the most tokens per second. Runs on the device from the repository root,
# with .carry/ab from bench/serving/pack-frontend-ab.sh (payload.tar.xz with bin/headwise-old,
# bin/headwise-new, lib/ and models/tinystories-656k, unpacked to /tmp/ab-carry; wheels/):
#
#   bash bench/serving/run-frontend-ab-gpu.sh          (device tool, carry [".carry/ab"])
#
# For each server in ORDER (old new old new: the spread of one binary's runs is the noise), it
# starts `headwise serve MODEL --device cuda --max-num-seqs 64`, sends a warm-up burst, then
# measures max concurrency 64 (CLIENTS benchmark_serving.py processes, lined up with
# --start-at, so that one Python client's speed does not cap the point) and 1 (single-stream
# latency), each with fixed lengths (IN_LEN in, OUT_LEN out, ignore_eos) and a number of
# requests chosen from a calibration on the first server so that a point lasts about D64 / D1
# seconds; every server gets the same requests. Prints the table last; $OUT gets
# ab-table.md, ab-summary.json and ab-raw.tgz (client results, server logs).
#
# Environment (defaults for the GPU): AB_DEVICE (cuda), CARRY (.carry/ab), OLD_BIN, NEW_BIN,
# MODEL, ID_RANGE (prompt token ids LO:HI; default from MODEL/config.json), PYTHON (python3),
# ORDER ("old new old new"), CONCS ("64 1"), CLIENTS (8), IN_LEN (64), OUT_LEN (256), D64
# (25 s), D1 (15 s), N64 / N1 / N<conc> (requests per point; set, they skip the calibration),
# WARM (256 requests at the highest concurrency before measuring, per server), MAX_N (20000),
# START_SLACK (3 s for the clients' start-up and warm-up), SERVER_ARGS ("--kv-cache-memory
# 1G"), BUDGET_S (330: no new server starts after this many seconds), SERVER_TIMEOUT (180 s
# to become healthy).
set -uo pipefail
root=$(pwd)
carry=${CARRY:-$root/.carry/ab}
device=${AB_DEVICE:-cuda}
py=${PYTHON:-python3}
die() { echo "run-frontend-ab: $*" >&2; exit 1; }
payload=$carry
if [[ -f $carry/payload.tar.xz ]]; then
  # Python's tarfile reads xz wherever python3 runs; the xz tool need not be there.
  payload=/tmp/ab-carry
  rm -rf "$payload" && mkdir -p "$payload"
  "$py" -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')" \
    "$carry/payload.tar.xz" "$payload" || die "cannot unpack $carry/payload.tar.xz"
fi
old_bin=${OLD_BIN:-$payload/bin/headwise-old}
new_bin=${NEW_BIN:-$payload/bin/headwise-new}
model=${MODEL:-$payload/models/tinystories-656k}
order=${ORDER:-old new old new}
concs=${CONCS:-64 1}
clients_max=${CLIENTS:-8}
in_len=${IN_LEN:-64}
out_len=${OUT_LEN:-256}
warm_n=${WARM:-256}
max_n=${MAX_N:-20000}
slack=${START_SLACK:-3}
server_args=${SERVER_ARGS:---kv-cache-memory 1G}
budget=${BUDGET_S:-330}
server_timeout=${SERVER_TIMEOUT:-180}
out=${OUT:-/tmp/ab-out}
work=${AB_WORK:-/tmp/ab-work}
bench=$root/bench/serving/benchmark_serving.py
report=$root/bench/serving/ab_report.py
export LD_LIBRARY_PATH=$payload/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
t_start=$SECONDS
hz=$(getconf CLK_TCK)

for b in $order; do [[ $b == old || $b == new ]] || die "ORDER holds old and new only, not $b"; done
for b in "$old_bin" "$new_bin"; do [[ -x $b ]] || die "no binary $b (bench/serving/pack-frontend-ab.sh)"; done
[[ -f $model/config.json || -f $model ]] || die "no model at $model"

# The client needs aiohttp and numpy; the device image has them, else the carried wheels.
if ! "$py" -c "import aiohttp, numpy" 2>/dev/null || [[ -n ${AB_FORCE_WHEELS:-} ]]; then
  [[ -d $carry/wheels ]] || die "$py lacks aiohttp and no wheels were carried"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/ab-site "$carry"/wheels/*.whl || die "pip install of the wheels failed"
  export PYTHONPATH=/tmp/ab-site${PYTHONPATH:+:$PYTHONPATH}
  "$py" -c "import aiohttp, numpy" || die "aiohttp still not importable"
fi

rm -rf "$work" && mkdir -p "$work" "$out"
# Prompt token ids: random, inside the vocabulary (a GGUF model gives none here: ID_RANGE).
if [[ -z ${ID_RANGE:-} ]]; then
  vocab=$("$py" -c "import json,sys; print(json.load(open(sys.argv[1]+'/config.json'))['vocab_size'])" \
    "$model" 2>/dev/null) || die "no config.json in $model: set ID_RANGE=LO:HI"
  ID_RANGE=100:$((vocab - 48))
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)
echo "run-frontend-ab: device $device ${gpu:+($gpu) }model $(basename "$model"), $in_len in / $out_len out," \
  "order: $order, concurrencies: $concs"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }

healthy() {
  "$py" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=2)" \
    "http://127.0.0.1:$1/health" 2>/dev/null
}

spid=
stop_server() {
  [[ -n $spid ]] || return 0
  kill -TERM "$spid" 2>/dev/null
  for _ in $(seq 75); do kill -0 "$spid" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$spid" 2>/dev/null
  wait "$spid" 2>/dev/null
  spid=
}
trap stop_server EXIT

# start_server BINARY PORT LOG
start_server() {
  # shellcheck disable=SC2086  # SERVER_ARGS is a list of flags
  "$1" serve "$model" --device "$device" --host 127.0.0.1 --port "$2" --max-num-seqs 64 \
    --served-model-name ab $server_args >"$3" 2>&1 &
  spid=$!
  local t=$SECONDS
  until healthy "$2"; do
    if ! kill -0 "$spid" 2>/dev/null; then
      echo "run-frontend-ab: server exited before it was healthy:" >&2; tail -20 "$3" >&2
      spid=; return 1
    fi
    if ((SECONDS - t > server_timeout)); then
      echo "run-frontend-ab: server not healthy after ${server_timeout}s" >&2; tail -20 "$3" >&2
      stop_server; return 1
    fi
    sleep 0.2
  done
}

point_no=0
point_dir=
# run_point LABEL BINARY ROUND CONC N SEED PORT: one point; its folder is left in $point_dir.
run_point() {
  local label=$1 binary=$2 round=$3 conc=$4 n=$5 seed=$6 port=$7
  point_no=$((point_no + 1))
  local dir
  dir=$(printf '%s/p%02d-%s-%s-r%s-c%s' "$work" "$point_no" "$label" "$binary" "$round" "$conc")
  mkdir -p "$dir"
  local clients=$((conc < clients_max ? conc : clients_max))
  ((conc % clients == 0)) || clients=1
  local per_n=$(((n + clients - 1) / clients))
  local start_at
  start_at=$("$py" -c "import time,sys; print(f'{time.time() + float(sys.argv[1]):.3f}')" "$slack")
  local pids=() k
  for ((k = 0; k < clients; k++)); do
    "$py" "$bench" --base-url "http://127.0.0.1:$port" --model ab --endpoint completions \
      --prompt-format ids --token-id-range "$ID_RANGE" --input-len "$in_len" \
      --output-len "$out_len" --num-prompts "$per_n" --max-concurrency $((conc / clients)) \
      --request-rate inf --seed $((seed + k)) --num-warmup 1 --start-at "$start_at" \
      --request-timeout 300 --tag ab --result-dir "$dir" --result-name "client-$k" \
      >"$dir/client-$k.log" 2>&1 &
    pids+=($!)
  done
  # The server's CPU time over the timed window only (the clients' warm-ups come before it).
  sleep "$("$py" -c "import time,sys; print(max(0.0, float(sys.argv[1]) - time.time()))" "$start_at")"
  local c0 c1 rc=0
  c0=$(cpu_ticks "$spid")
  for k in "${pids[@]}"; do wait "$k" || rc=1; done
  c1=$(cpu_ticks "$spid")
  local server_cpu
  server_cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN{printf "%.3f", (b - a) / hz}')
  cat >"$dir/point.json" <<EOF
{"label": "$label", "binary": "$binary", "round": $round, "concurrency": $conc,
 "clients": $clients, "requests_asked": $((per_n * clients)), "seed": $seed,
 "server_cpu_s": $server_cpu, "client_rc": $rc}
EOF
  if ((rc != 0)); then
    echo "run-frontend-ab: a client of $(basename "$dir") failed:" >&2
    tail -n 5 "$dir"/client-*.log >&2
  fi
  point_dir=$dir
}

# n_for RATE SECONDS CONC: requests for a point of about SECONDS at RATE req/s.
n_for() {
  awk -v r="$1" -v s="$2" -v c="$3" -v m="$max_n" -v cl="$clients_max" 'BEGIN{
    n = int(r * s + 0.5); if (n < 2 * c) n = 2 * c; if (n > m) n = m;
    step = (c >= cl && c % cl == 0) ? cl : 1; n = int((n + step - 1) / step) * step; print n }'
}

declare -A n_of
read -r -a conc_list <<<"$concs"
top_conc=${conc_list[0]}
for c in "${conc_list[@]}"; do ((c > top_conc)) && top_conc=$c; done
for c in "${conc_list[@]}"; do  # N64, N1, ...: fixed request counts, no calibration
  var=N$c
  [[ -n ${!var:-} ]] && n_of[$c]=${!var}
done
skipped=
failed=
round_of_old=0 round_of_new=0
port=18100
for binary in $order; do
  if ((SECONDS - t_start > budget)); then
    skipped+="$binary "
    continue
  fi
  if [[ $binary == old ]]; then bin=$old_bin; round_of_old=$((round_of_old + 1)); round=$round_of_old
  else bin=$new_bin; round_of_new=$((round_of_new + 1)); round=$round_of_new; fi
  port=$((port + 1))
  log=$work/server-$binary-r$round.log
  echo "run-frontend-ab: [$((SECONDS - t_start))s] $binary run $round: $(basename "$bin") on port $port"
  if ! start_server "$bin" "$port" "$log"; then
    echo "run-frontend-ab: $binary run $round: server failed to start" >&2
    failed+="$binary-r$round (start) "
    continue
  fi
  # A warm-up burst at the highest concurrency; the first one calibrates that concurrency.
  run_point warm "$binary" "$round" "$top_conc" "$warm_n" 100 "$port"
  wdir=$point_dir
  if ! "$py" "$report" rate "$wdir" >/dev/null; then
    echo "run-frontend-ab: $binary run $round: the warm-up failed, this server is skipped" >&2
    failed+="$binary-r$round (warm-up) "
    stop_server
    continue
  fi
  for c in "${conc_list[@]}"; do
    if [[ -z ${n_of[$c]:-} ]]; then
      cdir=$wdir
      if ((c != top_conc)); then
        run_point calibrate "$binary" "$round" "$c" $((c * 16)) 400 "$port"
        cdir=$point_dir
      fi
      rate=$("$py" "$report" rate "$cdir") || rate=0
      secs=${D64:-25}; ((c == 1)) && secs=${D1:-15}
      n_of[$c]=$(n_for "$rate" "$secs" "$c")
      echo "run-frontend-ab: calibration at concurrency $c: $rate req/s -> ${n_of[$c]} requests per point"
    fi
  done
  for c in "${conc_list[@]}"; do
    run_point measure "$binary" "$round" "$c" "${n_of[$c]}" $((200 + 1000 * c)) "$port"
    echo "run-frontend-ab: [$((SECONDS - t_start))s] $(basename "$point_dir"):" \
      "$("$py" "$report" progress "$point_dir")"
  done
  stop_server
  grep -iE "error|warn|fatal" "$log" | grep -v "chat template" | head -5
done

# The manifest: which binaries, how they were packed, what ran.
"$py" - "$work/manifest.json" "$carry/MANIFEST" <<EOF
import json, sys, pathlib
m = {"title": "headwise serve, old vs new front end, $(basename "$model") on $device",
     "device": "${gpu:-$(uname -n)}", "order": "$order", "concurrencies": "$concs",
     "lengths": "$in_len in / $out_len out, ignore_eos, greedy, token-id prompts",
     "requests per point": "$(for c in "${conc_list[@]}"; do printf '%s: %s  ' "$c" "${n_of[$c]:-?}"; done)",
     "client processes per point (at most)": "$clients_max",
     "server flags": "serve MODEL --device $device --max-num-seqs 64 $server_args",
     "old binary": "$old_bin", "new binary": "$new_bin",
     "not run (time budget)": "$skipped".strip(), "failed": "$failed".strip()}
p = pathlib.Path(sys.argv[2])
if p.exists():
    m["packed"] = p.read_text().strip().replace("\n", "; ")
pathlib.Path(sys.argv[1]).write_text(json.dumps(m, indent=1))
EOF
echo "run-frontend-ab: [$((SECONDS - t_start))s] done"
"$py" "$report" report "$work" "$out"
status=$?
[[ -z $failed ]] || status=1
# Everything raw in one archive (a device call returns at most 8 files of 16 MiB), less the
# per-request files of the busy points (every token gap: ab-summary.json has their numbers);
# less all of them if it is still too large.
(cd "$work" && find . -name 'client-*.json' ! -path '*-c1/*') >"$work/left-out.txt"
tar -C "$work" -X "$work/left-out.txt" -czf "$out/ab-raw.tgz" .
if (($(stat -c %s "$out/ab-raw.tgz") > 15 * 1024 * 1024)); then
  tar -C "$work" --exclude='client-*.json' -czf "$out/ab-raw.tgz" .
fi
exit $status
