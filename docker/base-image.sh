#!/bin/sh
# A Debian base image made from Debian's own packages, for hosts that cannot reach
# Docker Hub: `debootstrap` (minbase, bookworm: Python 3.11) into a folder, then
# `docker import`. Prints the image's name; does nothing if it exists already.
#
#   BASE_TAG  the image to make (default: rnnlm-base:bookworm)
#   MIRROR    the Debian mirror (default: http://deb.debian.org/debian)
#
# Use it as the build's base: docker build --build-arg BASE_IMAGE=rnnlm-base:bookworm .
set -eu
tag=${BASE_TAG:-rnnlm-base:bookworm}
mirror=${MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi
command -v debootstrap >/dev/null || { echo "base-image: debootstrap missing (apt-get install debootstrap)" >&2; exit 2; }
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "base-image: debootstrap bookworm into $rootfs (a few minutes)" >&2
debootstrap --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,passwd \
    bookworm "$rootfs" "$mirror" >&2
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$tag" >&2
echo "$tag"
