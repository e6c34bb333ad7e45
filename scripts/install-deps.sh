#!/usr/bin/env bash
# Installs headwise's build and test dependencies from Debian packages. Idempotent: does
# nothing (and needs no network) when everything is already there.
#   scripts/install-deps.sh          what the build and the tests need
#   scripts/install-deps.sh --fuzz   that plus clang and libFuzzer (scripts/fuzz.sh), which the
#                                    main build does not need
# The sanitizer runtimes of scripts/sanitize.sh (libasan, libubsan, libtsan) come with gcc.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git python3-venv
  nlohmann-json3-dev libspdlog-dev libfmt-dev libsentencepiece-dev
  libicu-dev catch2 zlib1g-dev libhnswlib-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
)
fuzz_packages=(clang libclang-rt-14-dev)

case ${1:-} in
  "") ;;
  --fuzz) packages+=("${fuzz_packages[@]}") ;;
  *) echo "install-deps.sh: unknown argument $1" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo_cmd=()
[[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
