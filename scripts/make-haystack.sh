#!/usr/bin/env bash
# Builds the haystack text of `headwise eval` (Jane Austen's six novels, public domain) from
# Debian's r-cran-janeaustenr package, caches it, verifies it by a pinned sha256 and prints its
# path. Nothing of the text is committed: scripts/make-haystack.py says how it is read out of the
# package. A cached file whose digest differs is rebuilt, never served.
#   XDG_CACHE_HOME   cache root (default ~/.cache); the file is headwise/haystack/austen.txt there
#   HEADWISE_HAYSTACK_DEB  a downloaded r-cran-janeaustenr .deb to use instead of apt-get download
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
package=r-cran-janeaustenr
version=1.0.0-1
want=bf5c1d6389871025b6e18e1aaa699065619552e08c41934e020f4406d0c8debe
dir=${XDG_CACHE_HOME:-$HOME/.cache}/headwise/haystack
out=$dir/austen.txt

if [[ -f $out ]] && [[ $(sha256sum "$out" | cut -d' ' -f1) == "$want" ]]; then
  echo "$out"
  exit 0
fi
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
deb=${HEADWISE_HAYSTACK_DEB:-}
if [[ -z $deb ]]; then
  # apt-get download writes into the current directory; it needs the package lists.
  if ! (cd "$work" && apt-get download "$package=$version" >/dev/null 2>&1); then
    apt-get update >/dev/null
    (cd "$work" && apt-get download "$package=$version" >/dev/null)
  fi
  deb=$(ls "$work"/${package}_*.deb)
fi
dpkg-deb -x "$deb" "$work/x"
python3 "$root/scripts/make-haystack.py" "$work/x" "$work/austen.txt"
got=$(sha256sum "$work/austen.txt" | cut -d' ' -f1)
if [[ $got != "$want" ]]; then
  echo "make-haystack.sh: the text from $package $version has sha256 $got, expected $want" >&2
  exit 1
fi
mv "$work/austen.txt" "$out"
echo "$out"
