#!/usr/bin/env bash
# A Docker engine for the deploy tests, on a fresh machine or a warm one (run as root):
#  1. installs docker.io, debootstrap and docker-compose from Debian if they are missing;
#  2. starts dockerd (no bridge, no iptables: the tests use host networking on loopback)
#     unless one already answers; its data root lives in the cache directory, so images
#     survive between runs;
#  3. builds the stand-in base images (Docker Hub cannot be reached), reused if present:
#     Debian bookworm from debootstrap with python3 (3.11, as in python:3.11-slim-bookworm),
#     for the proxy and the dstack server; and a minimal Debian trixie (as debian:trixie-slim,
#     with its apt sources, security included), for the front's images (deploy/nginx/ and
#     deploy/haproxy/ Dockerfiles).
# Prints `started-dockerd PID` when it started the daemon (the caller stops it), then
# `front-base-image NAME` and `base-image NAME`. Any failure exits non-zero with the reason on
# stderr.
set -euo pipefail

CACHE="${DSTACK_COALESCER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dstack-coalescer}"
BASE_IMAGE="${BASE_IMAGE:-dstack-coalescer-test-base:bookworm-1}"
FRONT_BASE_IMAGE="${FRONT_BASE_IMAGE:-dstack-coalescer-test-base:trixie-1}"
# python-is-python3 gives `python`, like the official image; python3-venv gives ensurepip.
PACKAGES=ca-certificates,python3,python3-venv,python-is-python3

log() { echo "setup_docker: $*" >&2; }
fail() { log "$*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "must run as root (dockerd and debootstrap need it)"
mkdir -p "$CACHE"

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q -o DPkg::Lock::Timeout=300 >&2 \
        || fail "apt-get update failed"
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
        "${missing[@]}" >&2 || fail "apt-get install ${missing[*]} failed"
fi

if ! docker info >/dev/null 2>&1; then
    [ -z "${DOCKER_HOST:-}" ] || fail "DOCKER_HOST=$DOCKER_HOST does not answer"
    log "starting dockerd (data root $CACHE/docker)"
    # setsid: the daemon outlives this script; the caller stops it by the printed pid.
    setsid dockerd --bridge=none --iptables=false --ip6tables=false \
        --data-root "$CACHE/docker" \
        --pidfile "$CACHE/dockerd.pid" >"$CACHE/dockerd.log" 2>&1 </dev/null &
    for _ in $(seq 1 120); do
        docker info >/dev/null 2>&1 && break
        if ! kill -0 $! 2>/dev/null; then
            fail "dockerd exited: $(tail -n 20 "$CACHE/dockerd.log")"
        fi
        sleep 0.5
    done
    docker info >/dev/null 2>&1 || fail "dockerd did not answer in 60 s: $(tail -n 20 "$CACHE/dockerd.log")"
    echo "started-dockerd $(cat "$CACHE/dockerd.pid")"
fi

# build_base IMAGE SUITE PACKAGES CMD [sources]: a minbase debootstrap of SUITE, as slim as the
# official images (no apt lists, caches or docs); with `sources`, also their apt sources
# (updates and security: the front's Dockerfiles install from them).
build_base() {
    local image="$1" suite="$2" packages="$3" cmd="$4" sources="${5:-}"
    docker image inspect "$image" >/dev/null 2>&1 && return 0
    log "building $image with debootstrap ($suite)"
    root="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase ${packages:+--include="$packages"} "$suite" "$root" \
        "${mirror:-http://deb.debian.org/debian}" >"$CACHE/debootstrap-$suite.log" 2>&1 \
        || fail "debootstrap $suite failed: $(tail -n 20 "$CACHE/debootstrap-$suite.log")"
    if [ -n "$sources" ]; then
        rm -f "$root"/etc/apt/sources.list
        cat >"$root"/etc/apt/sources.list.d/debian.sources <<SOURCES
Types: deb
URIs: ${mirror:-http://deb.debian.org/debian}
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    fi
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/locale/*
    tar -C "$root" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c "CMD [\"$cmd\"]" - "$image" >/dev/null \
        || fail "docker import $image failed"
    rm -rf "$root"
    trap - EXIT
}

mirror="$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)"
build_base "$FRONT_BASE_IMAGE" trixie "" bash sources
echo "front-base-image $FRONT_BASE_IMAGE"
build_base "$BASE_IMAGE" bookworm "$PACKAGES" python3
echo "base-image $BASE_IMAGE"
