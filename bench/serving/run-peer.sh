#!/usr/bin/env bash
# headwise beside llama-server on one GPU, serving the same GGUF file in the same device call:
# closed-loop load (benchmark_serving.py --max-concurrency C, IN_LEN prompt tokens as ids,
# OUT_LEN output tokens with ignore_eos, greedy), C in CONCS, the same requests for both.
# Runs on the GPU machine from the repository root:
#   - llama.cpp's source as .carry/llama/llama-src.tar.xz (here: see bench/serving/README or
#     docs/STATUS.md: a snapshot from the search tool's fetch of unslothai/llama.cpp, docs,
#     media, models, examples, tests and other backends dropped), built here with CUDA for
#     sm_90 into /tmp/llsrc/build (4-5 minutes with 14 jobs; kept while the machine is warm);
#   - the model from scripts/device/stage-model.sh (verify prints it) or MODEL=PATH;
#   - the headwise binary stashed in /tmp/hw-gpu by scripts/device/qwen-checks.sh stash, or
#     HEADWISE_BIN.
#   bash bench/serving/run-peer.sh build     # only builds llama-server (a call of its own), or
#                                            # unpacks .carry/llama-bin (built here) when carried
#   bash bench/serving/run-peer.sh run       # builds if needed, then both servers
# PEER_DEVICE=cpu runs both on the CPU instead (headwise --device cpu; llama-server -ngl 0 from
# LLAMA_SERVER, e.g. a CPU build here) with MODEL given: the 2-core comparison.
# Environment: CONCS ("1 16 64"), IN_LEN (512), OUT_LEN (128), N_<C> requests at concurrency C
# (default 8 x C, at least 16), WARMUP (2 requests per point), PYTHON (python3, with aiohttp), SERVERS ("headwise llama"), HW_ARGS, LLAMA_ARGS, TAG.
# Writes $OUT/peer.tgz (the benchmark's JSON/Markdown per point, the server logs) and prints a
# table.
set -uo pipefail
root=$(pwd)
src=/tmp/llsrc
build() {
  [[ -x $src/build/bin/llama-server ]] && return 0
  # A llama-server built on the CPU machine (scripts/device/README.md: the same cmake flags with
  # GGML_NATIVE off and AVX2, static, sm_90), carried as .carry/llama-bin in a call of its own:
  # about 4-5 minutes of device time saved.
  if [[ -f .carry/llama-bin/llama-server.xz ]]; then
    mkdir -p "$src/build/bin" "$src/lib" && cp .carry/llama-bin/lib/* "$src/lib/" 2>/dev/null
    python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
      .carry/llama-bin/llama-server.xz "$src/build/bin/llama-server" && chmod +x "$src/build/bin/llama-server"
    return
  fi
  rm -rf "$src" && mkdir -p /tmp && tar -xJf .carry/llama/llama-src.tar.xz -C /tmp || return 1
  cmake -S "$src" -B "$src/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    >/tmp/llama-build.log 2>&1 || { tail -20 /tmp/llama-build.log; return 1; }
  ninja -C "$src/build" -j 14 llama-server >>/tmp/llama-build.log 2>&1 || { tail -20 /tmp/llama-build.log; return 1; }
}
case ${1:-} in
  build) t0=$SECONDS; build && echo "llama-server built in $((SECONDS - t0)) s"; exit ;;
  run) ;;
  *) sed -n '2,21p' "$0" >&2; exit 2 ;;
esac
device=${PEER_DEVICE:-cuda}
llama_server=${LLAMA_SERVER:-$src/build/bin/llama-server}
if [[ $device == cuda ]]; then build || exit 1; fi
model=${MODEL:-$(bash scripts/device/stage-model.sh verify)} || exit 1
hw_bin=${HEADWISE_BIN:-/tmp/hw-gpu/bin/headwise}
bash scripts/device/unpack-libs.sh "/tmp/hw-gpu/lib" || exit 1
export LD_LIBRARY_PATH=/tmp/hw-gpu/lib:$src/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
concs=${CONCS:-1 16 64}
in_len=${IN_LEN:-512}
out_len=${OUT_LEN:-128}
tag=${TAG:-peer}
res=/tmp/peer-res && rm -rf "$res" && mkdir -p "$res"
trap 'tar -C "$res" -czf "${OUT:-/tmp}/peer.tgz" .' EXIT
if [[ $device == cuda ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$res/device.txt"
  hw_device=(--device cuda) llama_device=(-ngl 99 -c 65536 -np 64)
else
  lscpu | grep -E "Model name|^CPU\(s\)" | tee "$res/device.txt"
  # As many slots as the highest concurrency, 1024 tokens each; threads as headwise uses.
  top=$(echo $concs | tr ' ' '\n' | sort -n | tail -1)
  hw_device=(--device cpu) llama_device=(-ngl 0 -c $((1024 * top)) -np "$top" -t "$(nproc)")
fi
port=8090
wait_ready() {
  for _ in $(seq 1 180); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}
for server in ${SERVERS:-headwise llama}; do
  if [[ $server == headwise ]]; then
    cmd=("$hw_bin" serve "$model" "${hw_device[@]}" --port $port --served-model-name model \
      --max-num-seqs 64 ${HW_ARGS:-})
  else
    # On the GPU 64 slots of 1024 tokens each (prompt + output = 640); flash attention as
    # llama.cpp picks.
    cmd=("$llama_server" -m "$model" "${llama_device[@]}" --port $port --host 127.0.0.1 \
      -a model ${LLAMA_ARGS:-})
  fi
  echo "${cmd[*]}" >"$res/$server.cmd"
  "${cmd[@]}" >"$res/$server.log" 2>&1 &
  pid=$!
  if ! wait_ready; then
    echo "$server did not become ready"; tail -20 "$res/$server.log"; kill $pid; continue
  fi
  for c in $concs; do
    n_var=N_$c
    n=${!n_var:-$((c * 8 > 16 ? c * 8 : 16))}
    "${PYTHON:-python3}" bench/serving/benchmark_serving.py --base-url "http://127.0.0.1:$port" --model model \
      --num-prompts "$n" --max-concurrency "$c" --input-len "$in_len" --output-len "$out_len" \
      --prompt-format ids --token-id-range 1000:30000 --num-warmup "${WARMUP:-2}" --seed 1 --no-keepalive \
      --server-cmd "${cmd[*]}" --result-dir "$res" --result-name "$tag-$server-c$c" \
      >"$res/$server-c$c.out" 2>&1 || { echo "FAIL $server c=$c"; tail -5 "$res/$server-c$c.out"; }
  done
  kill $pid; wait $pid 2>/dev/null
done
python3 - "$res" <<'PY'
import glob, json, os, sys
print("| server | conc | requests ok | output tok/s | total tok/s | TTFT p50 ms | TPOT p50 ms |")
print("|---|---|---|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*-c*.json"))):
    s = json.load(open(f))["runs"][0]["summary"]
    name = os.path.basename(f)[:-5].rsplit("-c", 1)
    print(f"| {name[0]} | {name[1]} | {s['completed']}/{s['num_requests']} | {s['output_throughput']:.0f} | "
          f"{s['total_token_throughput']:.0f} | {s['ttft_ms']['p50']:.1f} | {s['tpot_ms']['p50']:.2f} |")
PY
