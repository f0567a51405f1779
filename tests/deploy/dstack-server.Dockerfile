# Test-only stand-in for the official dstackai/dstack image, which cannot be pulled here: the
# same dstack[server] on the stand-in base. Build context: a wheelhouse directory.
ARG BASE_IMAGE
FROM ${BASE_IMAGE} AS build
COPY . /wheels
RUN python3 -m venv /opt/dstack \
    && /opt/dstack/bin/pip install --no-cache-dir --no-index --find-links /wheels \
        "dstack[server]==0.22.5" \
    && /opt/dstack/bin/pip uninstall --yes pip setuptools

FROM ${BASE_IMAGE}
# The server refuses to start without an ssh client (it reaches instances over SSH). The
# release's own openssh-client is fine for a test image: not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends openssh-client \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/dstack /opt/dstack
# Like the official image: listen on every address, state in /root/.dstack/server.
# GitPython refuses to import without a git binary unless told to stay quiet.
ENV PATH=/opt/dstack/bin:$PATH \
    DSTACK_SERVER_HOST=0.0.0.0 \
    GIT_PYTHON_REFRESH=quiet \
    PYTHONUNBUFFERED=1
EXPOSE 3000
CMD ["dstack", "server"]
