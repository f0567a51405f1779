#!/bin/sh
# The front image's template step, as the official nginx image does it at start: every
# /etc/nginx/templates/NAME.conf.template becomes /etc/nginx/conf.d/NAME.conf, with the defined
# environment variables substituted (and only those, so nginx's own $variables stay).
set -eu
defined="$(printf '${%s} ' $(env | cut -d= -f1))"
for template in /etc/nginx/templates/*.template; do
    [ -e "$template" ] || continue
    name="$(basename "$template" .template)"
    envsubst "$defined" <"$template" >"/etc/nginx/conf.d/$name"
done
exec "$@"
