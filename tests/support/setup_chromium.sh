#!/usr/bin/env bash
# Headless Chromium for the browser tests (tests/e2e/test_legacy_ui.py), from Debian: Playwright's
# own `playwright install` downloads a browser build, which cannot be reached here and is not
# needed, since Playwright drives Debian's `chromium` through `executable_path`.
# Installs the `chromium` package when /usr/bin/chromium is missing (needs root), then prints
# `chromium PATH` last. Any failure exits non-zero with the reason on stderr.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

log() { echo "setup_chromium: $*" >&2; }
fail() { log "$*"; exit 1; }

if [ ! -x "$CHROMIUM" ]; then
    [ "$(id -u)" = 0 ] || fail "$CHROMIUM is missing and installing it needs root: apt-get install chromium"
    log "installing chromium"
    export DEBIAN_FRONTEND=noninteractive
    # Another install (nginx, docker) may hold the dpkg lock meanwhile: wait for it.
    apt-get update -q -o DPkg::Lock::Timeout=300 >&2 || fail "apt-get update failed"
    apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 \
        chromium fonts-liberation >&2 || fail "apt-get install chromium failed"
    [ -x "$CHROMIUM" ] || fail "$CHROMIUM is still missing after apt-get install chromium"
fi
"$CHROMIUM" --version >&2 || fail "$CHROMIUM does not start"
echo "chromium $CHROMIUM"
