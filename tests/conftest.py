"""Every tier: property tests run under the one hypothesis profile (tests/support/modes.py).
The Docker engine and the front's images, built from the shipped deploy/nginx/ and
deploy/haproxy/ Dockerfiles, for the deploy tests and the e2e tests of the front: the nginx and
HAProxy that ship, not the host's. Where no engine can be set up, those tests fail with the
reason: never a skip."""

from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.deploy.engine import (
    HAPROXY_IMAGE,
    MEASURED,
    NGINX_IMAGE,
    ROOT,
    Engine,
    EngineError,
    build_image,
    image_version,
    start_engine,
)
from tests.support.modes import PROFILE

settings.load_profile(PROFILE)


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
