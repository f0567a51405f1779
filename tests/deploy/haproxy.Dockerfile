# Test-only stand-in for the official haproxy:2.6 image, which cannot be pulled here: Debian's
# HAProxy 2.6 on the stand-in base, with the official image's entrypoint rule (a command that
# starts with `haproxy` runs in master-worker mode, in the foreground). Context: tests/deploy.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends haproxy \
    && rm -rf /var/lib/apt/lists/*
COPY haproxy-entrypoint.sh /docker-entrypoint.sh
ENTRYPOINT ["/docker-entrypoint.sh"]
STOPSIGNAL SIGUSR1
CMD ["haproxy", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
