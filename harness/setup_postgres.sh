#!/usr/bin/env bash
# PostgreSQL for the Postgres-backed real-server tests, on a fresh machine or a warm one:
# installs Debian's `postgresql` when no server binaries are found (as root only; otherwise it
# says what to install), then prints the directory holding `initdb` and `postgres`.
# The tests start their own cluster from there (harness/postgres.py); the package's own
# cluster service is never started. Any failure exits non-zero with the reason on stderr.
set -euo pipefail

log() { echo "setup_postgres: $*" >&2; }
fail() { log "$*"; exit 1; }

bindir() {
    # The newest installed major version's binaries (Debian keeps them off PATH).
    local dir
    dir="$({ ls -d /usr/lib/postgresql/*/bin 2>/dev/null || true; } | sort -V | tail -n 1)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ]; then
        echo "$dir"
    fi
}

dir="$(bindir)"
if [ -z "$dir" ]; then
    [ "$(id -u)" = 0 ] || fail "PostgreSQL is not installed: sudo apt-get install postgresql"
    log "installing postgresql"
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d: the package's own cluster must not start (it would take port 5432).
    had_policy=0
    [ -e /usr/sbin/policy-rc.d ] && had_policy=1
    if [ "$had_policy" = 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    apt-get update -q -o DPkg::Lock::Timeout=300 >&2 || fail "apt-get update failed"
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 postgresql >&2 \
        || fail "apt-get install postgresql failed"
    dir="$(bindir)"
    [ -n "$dir" ] || fail "postgresql installed, yet no /usr/lib/postgresql/*/bin/initdb"
fi
echo "$dir"
