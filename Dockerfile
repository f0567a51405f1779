# dstack-coalescer: a request-coalescing reverse proxy for the dstack server.
# BASE_IMAGE: any Debian-based image with python3 (3.11+) and venv; the default is the official one.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Build stage: the package and its pinned runtime dependencies in a venv, then pip removed.
FROM ${BASE_IMAGE} AS build
# WHEELHOUSE_URL (optional): a directory of wheels served over HTTP, used instead of PyPI
# (offline builds; `docker build --network host` reaches one on the host's loopback).
ARG WHEELHOUSE_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY constraints.txt pyproject.toml README.md ./
COPY proxy ./proxy
RUN python3 -m venv /opt/dstack-coalescer \
    && /opt/dstack-coalescer/bin/pip install --constraint constraints.txt \
        ${WHEELHOUSE_URL:+--no-index --find-links "$WHEELHOUSE_URL"} . \
    && /opt/dstack-coalescer/bin/pip uninstall --yes pip setuptools

# Runtime stage: the venv and the configuration only (no sources, wheels or pip caches).
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/dstack-coalescer/bin:$PATH \
    COALESCER_CONFIG=/etc/dstack-coalescer/config.yaml
RUN groupadd --system --gid 10001 coalescer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home coalescer
COPY --from=build /opt/dstack-coalescer /opt/dstack-coalescer
COPY config.yaml /etc/dstack-coalescer/config.yaml

USER 10001:10001
# Only the public port: the admin listener (9090) stays on the container's loopback unless
# COALESCER_ADMIN_HOST=0.0.0.0 is set to scrape /metrics from outside.
EXPOSE 8080
# Finds the admin port like the proxy (config file, COALESCER_* environment, and the proxy's
# flags while it is PID 1: see README), and ignores HTTP_PROXY.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "proxy.health"]
# Exec form: the proxy is PID 1 and receives SIGTERM itself, then drains within drain_seconds
# (8 s by default, inside Docker's 10 s stop grace period).
STOPSIGNAL SIGTERM
CMD ["dstack-coalescer"]
