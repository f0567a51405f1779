#!/bin/sh
# The ring image's entrypoint, as the official haproxy image's: `haproxy ARGS` runs as
# `haproxy -W -db ARGS` (master-worker, in the foreground).
set -eu
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
