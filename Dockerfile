# dstack-coalescer: a request-coalescing reverse proxy for the dstack server.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    COALESCER_CONFIG=/etc/dstack-coalescer/config.yaml

RUN groupadd --system --gid 10001 coalescer \
    && useradd --system --uid 10001 --gid 10001 --no-create-home coalescer

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY proxy ./proxy
# Runtime dependencies only, pinned by constraints.txt.
RUN pip install --constraint constraints.txt .
COPY config.yaml /etc/dstack-coalescer/config.yaml

USER 10001:10001
EXPOSE 8080 9090
# The admin listener stays on the container's loopback (set COALESCER_ADMIN_HOST=0.0.0.0 to
# scrape /metrics from outside); the check runs inside the container, on its admin port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('COALESCER_ADMIN_PORT', '9090'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2).status != 200)"]
# Exec form: the proxy is PID 1 and receives SIGTERM itself, then drains within drain_seconds
# (8 s by default, inside Docker's 10 s stop grace period).
STOPSIGNAL SIGTERM
CMD ["dstack-coalescer"]
