#!/usr/bin/env bash
# Build KenLM's lmplz (modified Kneser-Ney estimation) and query (scoring)
# from the kenlm source distribution on PyPI (the pip wheel has only the query
# module, and Debian packages no KenLM). The tarball is pinned by version and
# SHA-256, so every machine builds the same code.
#
# Needs (Debian):
#   apt-get install -y build-essential cmake libboost-program-options-dev \
#       libboost-system-dev libboost-thread-dev libboost-test-dev \
#       zlib1g-dev libbz2-dev liblzma-dev
#
# Usage: bench/build_kenlm.sh [PREFIX]      (default: bench/.tools/kenlm)
# Result: PREFIX/bin/lmplz and PREFIX/bin/query, compiled for n-gram orders up
# to KENLM_MAX_ORDER (default 10: the character-level model needs more than
# KenLM's usual 6). Does nothing when both exist and were built from the same
# tarball and order.
set -euo pipefail

KENLM_VERSION=0.3.0
KENLM_SHA256=c4628bb9fb63c8a6f9240035b8b037385cfc404cb72e933cf48878291edac1e8
KENLM_MAX_ORDER=${KENLM_MAX_ORDER:-10}
here=$(cd "$(dirname "$0")" && pwd)
prefix=${1:-$here/.tools/kenlm}
stamp="kenlm-$KENLM_VERSION sha256=$KENLM_SHA256 max_order=$KENLM_MAX_ORDER"

if [[ -x $prefix/bin/lmplz && -x $prefix/bin/query && -f $prefix/STAMP ]] &&
    [[ $(cat "$prefix/STAMP") == "$stamp" ]]; then
    echo "build_kenlm: $prefix is up to date ($stamp)"
    exit 0
fi

for tool in g++ cmake make; do
    command -v $tool >/dev/null || { echo "build_kenlm: $tool missing (apt-get install -y build-essential cmake)" >&2; exit 2; }
done
if [[ ! -e /usr/include/boost/program_options.hpp ]]; then
    echo "build_kenlm: Boost headers missing: apt-get install -y libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev" >&2
    exit 2
fi

python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/kenlm-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$python" -m pip download --quiet --no-deps --no-binary kenlm --dest "$work" "kenlm==$KENLM_VERSION"
tarball=$work/kenlm-$KENLM_VERSION.tar.gz
echo "$KENLM_SHA256  $tarball" | sha256sum --check --quiet
tar -xzf "$tarball" -C "$work"
src=$work/kenlm-$KENLM_VERSION

cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DKENLM_MAX_ORDER="$KENLM_MAX_ORDER" -DENABLE_INTERPOLATE=OFF -DCOMPILE_TESTS=OFF >"$work/cmake.log"
nice -n 10 make -C "$work/build" -j"$(nproc)" lmplz query >"$work/make.log" 2>&1 || {
    tail -40 "$work/make.log" >&2
    exit 1
}
mkdir -p "$prefix/bin"
install -m 755 "$work/build/bin/lmplz" "$work/build/bin/query" "$prefix/bin/"
echo "$stamp" >"$prefix/STAMP"
echo "build_kenlm: built $prefix/bin/lmplz and $prefix/bin/query ($stamp)"
