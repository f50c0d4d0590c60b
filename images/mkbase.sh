#!/usr/bin/env bash
# mkbase.sh: make sure the image debian:bookworm-slim exists in the local engine.
#
# Every Dockerfile under images/ starts FROM debian:bookworm-slim. On a machine
# with a registry the base is pulled; where no registry can be reached (CI, air-gapped
# hosts) it is built here with debootstrap (minbase variant) and imported with
# `docker import`. Takes about 25 s and needs root for debootstrap.
set -euo pipefail

BASE=${BASE_IMAGE:-debian:bookworm-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}

if $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
	exit 0
fi
echo "mkbase: $BASE not present locally; trying to pull it" >&2
if $DOCKER pull "$BASE" >/dev/null 2>&1; then
	echo "mkbase: pulled $BASE" >&2
	exit 0
fi
echo "mkbase: cannot pull $BASE (no registry?); building it with debootstrap from $MIRROR" >&2

SUDO=
if [ "$(id -u)" != 0 ]; then
	SUDO=sudo
fi
if ! command -v debootstrap >/dev/null 2>&1; then
	echo "mkbase: installing debootstrap with apt-get" >&2
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >/dev/null
fi

dir=$(mktemp -d /tmp/upstreamd-base.XXXXXX)
trap '$SUDO rm -rf "$dir"' EXIT
$SUDO debootstrap --variant=minbase bookworm "$dir" "$MIRROR" >/dev/null
# Trim what a container never needs, as the official slim image does.
$SUDO rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
$SUDO tar -C "$dir" -c . | $DOCKER import - "$BASE" >/dev/null
echo "mkbase: imported $BASE" >&2
