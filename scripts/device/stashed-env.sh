# Sourced by the device run scripts (run-quality.sh, run-ann-recall.sh) from the repository root:
# the binaries stashed by scripts/device/qwen-checks.sh stash in $carry with their libraries on
# LD_LIBRARY_PATH, the model staged by scripts/device/stage-model.sh ($gguf), and the haystack
# ($haystack: from .carry/haystack when carried, else kept in /tmp by an earlier call of the
# series). Exits naming what is missing. Usage: NEED_BIN=hw_bench_ann source scripts/device/stashed-env.sh
carry=/tmp/hw-gpu
gguf=$(bash scripts/device/stage-model.sh verify) || exit 1
[ -x "$carry/bin/${NEED_BIN:-headwise}" ] ||
  { echo "${NEED_BIN:-headwise} not stashed: scripts/device/qwen-checks.sh stash"; exit 1; }
bash scripts/device/unpack-libs.sh "$carry/lib" || exit 1
export LD_LIBRARY_PATH=$carry/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
haystack=/tmp/hw-haystack/austen.txt
if [[ -f .carry/haystack/austen.txt.xz ]]; then
  mkdir -p /tmp/hw-haystack
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
    .carry/haystack/austen.txt.xz "$haystack"
fi
[ -f "$haystack" ] || { echo "no haystack: carry .carry/haystack"; exit 1; }
