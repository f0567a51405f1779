#!/usr/bin/env bash
# A Docker engine for the deploy tests, on a fresh machine or a warm one (run as root):
#  1. installs docker.io, debootstrap and docker-compose from Debian if they are missing;
#  2. starts dockerd (no bridge, no iptables: the tests use host networking on loopback)
#     unless one already answers; its data root lives in the cache directory, so images
#     survive between runs;
#  3. builds the stand-in base image (Docker Hub cannot be reached): Debian bookworm from
#     debootstrap with python3 (3.11, as in python:3.11-slim-bookworm), reused if present.
# Prints `started-dockerd PID` when it started the daemon (the caller stops it), and
# `base-image NAME` last. Any failure exits non-zero with the reason on stderr.
set -euo pipefail

CACHE="${DSTACK_COALESCER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dstack-coalescer}"
BASE_IMAGE="${BASE_IMAGE:-dstack-coalescer-test-base:bookworm-1}"
SUITE=bookworm
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

if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "building $BASE_IMAGE with debootstrap"
    root="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    trap 'rm -rf "$root"' EXIT
    mirror="$(sed -n 's/^URIs: *\(http[^ ]*\/debian\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" \
        "${mirror:-http://deb.debian.org/debian}" >"$CACHE/debootstrap.log" 2>&1 \
        || fail "debootstrap failed: $(tail -n 20 "$CACHE/debootstrap.log")"
    # As slim as the official image: no apt lists, caches or docs.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
        "$root"/usr/share/man/* "$root"/usr/share/locale/*
    tar -C "$root" -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null \
        || fail "docker import failed"
fi
echo "base-image $BASE_IMAGE"
