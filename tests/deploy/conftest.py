"""Session fixtures for the deploy tests: the wheelhouse, and the images built from the shipped
Dockerfile and from a stand-in for the official dstack server image. The engine and the front's
images are tests/conftest.py's (the e2e front tests run in them too).

Where no engine can be set up, every test here fails with the reason: never a skip."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .engine import (
    COALESCER_IMAGE,
    DSTACK_IMAGE,
    DSTACK_REQUIREMENT,
    HERE,
    MEASURED,
    ROOT,
    Engine,
    build_image,
    build_wheelhouse,
    coalescer_requirements,
    image_size,
    serve_directory,
)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASURED:
        terminalreporter.section("deploy measurements")
        for name, value in MEASURED.items():
            terminalreporter.write_line(f"{name}: {value}")


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
