#!/bin/sh
# What the official nginx image does at start with /etc/nginx/templates: every
# NAME.conf.template becomes conf.d/NAME.conf, with the defined environment variables
# substituted (and only those, so nginx's own $variables stay).
set -eu
defined="$(printf '${%s} ' $(env | cut -d= -f1))"
for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    name="$(basename "$template" .template)"
    envsubst "$defined" <"$template" >"/etc/nginx/conf.d/$name"
done
exec "$@"
