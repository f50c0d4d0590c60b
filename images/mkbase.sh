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
# The sources the official image has: updates and security fixes too.
SECURITY=${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}
$SUDO tee "$dir/etc/apt/sources.list" >/dev/null <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY bookworm-security main
SOURCES
# Like the official slim image: packages installed later leave out docs,
# man pages and translations; drop the ones already there.
$SUDO tee "$dir/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
SLIM
$SUDO find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
$SUDO rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/usr/share/locale/* \
	"$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
$SUDO tar -C "$dir" -c . | $DOCKER import - "$BASE" >/dev/null
echo "mkbase: imported $BASE" >&2
