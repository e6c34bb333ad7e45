#!/usr/bin/env bash
# A device series as one queue, for scripts/device/background.sh: the steps named in SERIES run in
# order, each one's results under $OUT, so the GPU goes from one to the next without waiting for
# a call. Steps:
#   offload          run-offload-bench.sh (its environment: CONTEXT, BATCHES, CHECKS_S, BENCH_S,
#                    POLICY, TAG)
#   sparse           run-sparse-decode-bench.sh (BATCHES, CONTEXTS, SELECT_TEST_S, BENCH_BUDGET_S)
#   model            waits until the model being staged verifies (stage-model.sh verify, STAGE;
#                    at most STAGE_WAIT_S seconds, default 900), then goes on
#   checks           qwen-checks.sh run MODEL_NAME (STEPS, default "goldens cuda")
#   quality:LENGTHS  run-quality.sh MODEL_NAME LENGTHS (POLICIES, TASKS, OUT_TAG, COMMIT)
#   ann:LENGTHS      run-ann-recall.sh MODEL_NAME LENGTHS (ANN_ARGS, TAG, ANN_TIMEOUT)
#   peer             bench/serving/run-peer.sh run: headwise beside llama-server on the staged model
#                    (CONCS, N_<C>; llama-server unpacked first by a call carrying .carry/llama-bin:
#                    bash bench/serving/run-peer.sh build)
#   kernels          kernels_cuda_test, all of it (at most KERNELS_S seconds, default 300)
# A step may carry its own environment after a '+' each, for that step alone (no spaces):
#   quality:32768+TASKS=niah_single_uuid,niah_multivalue+OUT_TAG=b
# e.g. (device): SERIES="offload sparse model checks quality:16384" MODEL_NAME=qwen2.5-coder-1.5b-instruct
#   STAGE=.carry/stage-1.5b COMMIT=<sha> bash scripts/device/background.sh start scripts/device/series.sh
set -uo pipefail
for spec in ${SERIES:?name the steps in SERIES}; do
  t0=$SECONDS
  echo "=== $spec ($(date -u +%H:%M:%S))"
  IFS=+ read -r -a parts <<<"$spec"
  step=${parts[0]}
  # The step's own variables, exported in a subshell so that the next step does not see them.
  (
  for assignment in "${parts[@]:1}"; do export "${assignment%%=*}=${assignment#*=}"; done
  case $step in
    offload) bash scripts/device/run-offload-bench.sh ;;
    sparse) bash scripts/device/run-sparse-decode-bench.sh ;;
    model)
      until bash scripts/device/stage-model.sh verify 2>/dev/null; do
        ((SECONDS - t0 < ${STAGE_WAIT_S:-900})) || { echo "the model was not staged in time"; exit 1; }
        sleep 10
      done
      ;;
    checks) STEPS=${STEPS:-goldens cuda} bash scripts/device/qwen-checks.sh run "${MODEL_NAME:?}" ;;
    quality:*) bash scripts/device/run-quality.sh "${MODEL_NAME:?}" "${step#quality:}" ;;
    ann:*) bash scripts/device/run-ann-recall.sh "${MODEL_NAME:?}" "${step#ann:}" ;;
    peer) bash bench/serving/run-peer.sh run ;;
    kernels)
      bash scripts/device/unpack-libs.sh /tmp/hw-gpu/lib || exit 1
      LD_LIBRARY_PATH=/tmp/hw-gpu/lib:/usr/local/cuda/lib64 HEADWISE_SOURCE_DIR=$(pwd) \
        HEADWISE_SHARED=/tmp/hw-gpu/shared timeout "${KERNELS_S:-300}" /tmp/hw-gpu/bin/kernels_cuda_test \
        >/tmp/hw-kernels.log 2>&1 && echo "PASS kernels_cuda_test" || echo "FAIL kernels_cuda_test (rc $?)"
      grep -E -B2 -A8 "FAILED|failed" /tmp/hw-kernels.log | head -60; tail -3 /tmp/hw-kernels.log
      ;;
    *) echo "unknown step $step" ;;
  esac
  )
  rc=$?
  echo "=== $spec: $((SECONDS - t0)) s"
  # The model never came: what follows needs it.
  if [[ $step == model && $rc != 0 ]]; then exit "$rc"; fi
done
