#!/bin/sh
# What the official haproxy image's entrypoint does: `haproxy ARGS` runs as `haproxy -W -db ARGS`.
set -eu
if [ "$1" = haproxy ]; then
    shift
    set -- haproxy -W -db "$@"
fi
exec "$@"
