"""Session fixtures for the deploy tests: a real Docker engine, the wheelhouse, and the images
built from the shipped Dockerfiles (the proxy's, the front's nginx and its HAProxy ring) and from
a stand-in for the official dstack server image.

Where no engine can be set up, every test here fails with the reason: never a skip."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .engine import (
    COALESCER_IMAGE,
    DSTACK_IMAGE,
    DSTACK_REQUIREMENT,
    HAPROXY_IMAGE,
    HERE,
    NGINX_IMAGE,
    ROOT,
    Engine,
    EngineError,
    build_image,
    build_wheelhouse,
    coalescer_requirements,
    image_size,
    image_version,
    serve_directory,
    start_engine,
)

MEASURED: dict[str, str] = {}
"""Figures the tests measured, printed at the end of the run."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("deploy measurements")
        for name, value in MEASURED.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    try:
        engine = start_engine()
    except EngineError as exc:
        pytest.fail(f"no Docker engine: {exc}", pytrace=False)
    MEASURED["engine setup"] = f"{engine.setup_seconds:.1f} s"
    try:
        yield engine
    finally:
        engine.stop()


@pytest.fixture(scope="session")
def wheelhouse(engine: Engine) -> Path:
    # Wheels for this interpreter's Python, which must be the image's: the base is bookworm's.
    assert sys.version_info[:2] == (3, 11), "the wheelhouse must be built with Python 3.11"
    return build_wheelhouse(sys.executable, [*coalescer_requirements(), DSTACK_REQUIREMENT])


@pytest.fixture(scope="session")
def coalescer_image(engine: Engine, wheelhouse: Path) -> str:
    """The shipped Dockerfile, built on the stand-in base, with wheels from the wheelhouse."""
    with serve_directory(wheelhouse) as url:
        build_image(
            COALESCER_IMAGE, ROOT, args={"BASE_IMAGE": engine.base_image, "WHEELHOUSE_URL": url}
        )
    size = image_size(COALESCER_IMAGE)
    base = image_size(engine.base_image)
    MEASURED["image size"] = (
        f"{size / 1e6:.1f} MB on the stand-in base of {base / 1e6:.1f} MB "
        f"(+{(size - base) / 1e6:.1f} MB)"
    )
    return COALESCER_IMAGE


@pytest.fixture(scope="session")
def dstack_image(engine: Engine, wheelhouse: Path) -> str:
    build_image(
        DSTACK_IMAGE,
        wheelhouse,
        dockerfile=HERE / "dstack-server.Dockerfile",
        args={"BASE_IMAGE": engine.base_image},
    )
    return DSTACK_IMAGE


@pytest.fixture(scope="session")
def nginx_image(engine: Engine) -> str:
    """The shipped front image (deploy/nginx/Dockerfile) on the stand-in trixie base."""
    build_image(
        NGINX_IMAGE, ROOT / "deploy" / "nginx", args={"BASE_IMAGE": engine.front_base_image}
    )
    MEASURED["front nginx"] = image_version(NGINX_IMAGE, "nginx", "-v")
    return NGINX_IMAGE


@pytest.fixture(scope="session")
def haproxy_image(engine: Engine) -> str:
    """The shipped ring image (deploy/haproxy/Dockerfile) on the stand-in trixie base."""
    build_image(
        HAPROXY_IMAGE, ROOT / "deploy" / "haproxy", args={"BASE_IMAGE": engine.front_base_image}
    )
    MEASURED["front ring"] = image_version(HAPROXY_IMAGE, "haproxy", "-v")
    return HAPROXY_IMAGE
