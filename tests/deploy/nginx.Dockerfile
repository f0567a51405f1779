# Test-only stand-in for the official nginx image, which cannot be pulled here: Debian's nginx
# on the stand-in base, with the official image's template step (envsubst of
# /etc/nginx/templates/*.template into /etc/nginx/conf.d/). Build context: tests/deploy.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends nginx gettext-base \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && mkdir -p /etc/nginx/templates
COPY nginx-entrypoint.sh /docker-entrypoint.sh
ENTRYPOINT ["/docker-entrypoint.sh"]
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
