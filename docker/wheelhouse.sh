#!/bin/sh
# Every wheel the image installs, into docker/wheels/, for a `docker build` that cannot
# reach PyPI or PyTorch's index from inside the build (air-gapped hosts, company
# proxies whose certificate the base image does not trust). The Dockerfile installs
# from there, with --no-index, whenever it finds a wheel there.
#
#   TORCH_WHEEL      a local torch CPU wheel to use (default: what pip finds)
#   TORCH_INDEX_URL  an index with torch's CPU build (e.g. https://download.pytorch.org/whl/cpu)
#   PYTHON           the Python 3.11 that downloads (default: python3.11)
#
# The wheels must suit the image's Python (3.11) and platform (manylinux x86_64).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
dest="$here/wheels"
python=${PYTHON:-python3.11}
mkdir -p "$dest"

set --
if [ -n "${TORCH_WHEEL:-}" ]; then
    cp "$TORCH_WHEEL" "$dest/"
    set -- --find-links "$dest"
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    set -- "$@" --extra-index-url "$TORCH_INDEX_URL"
fi
pin=$("$python" -c 'import tomllib; print(next(d for d in tomllib.load(open("'"$root"'/pyproject.toml", "rb"))["project"]["dependencies"] if d.startswith("torch")))')
echo "wheelhouse: $pin and what it needs" >&2
"$python" -m pip download --quiet --only-binary=:all: --dest "$dest" "$@" "$pin"
torch=$(ls "$dest"/torch-*.whl)
case "$torch" in
    *+cpu*) ;;
    *) echo "wheelhouse: $torch is not a CPU build (a CUDA build is GBs): set TORCH_WHEEL or TORCH_INDEX_URL" >&2
       exit 2 ;;
esac
echo "wheelhouse: the project's other dependencies, setuptools and wheel" >&2
deps=$("$python" -c 'import tomllib; print("\n".join(d for d in tomllib.load(open("'"$root"'/pyproject.toml", "rb"))["project"]["dependencies"] if not d.startswith("torch")))')
# shellcheck disable=SC2086
echo "$deps" | tr '\n' '\0' | xargs -0 "$python" -m pip download --quiet --only-binary=:all: \
    --dest "$dest" setuptools wheel
echo "wheelhouse: $(ls "$dest"/*.whl | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest" >&2
