"""The Dockerfile, read: hadolint finds nothing, and everything it names exists in the package and
its configuration. tests/deploy builds and runs it in a real Docker engine."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from proxy.admin import make_admin_app
from proxy.app import make_app
from proxy.config import Config, build_config, read_file

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [
        ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")
    ]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def _one(kind: str) -> str:
    (value,) = [v for k, v in _instructions() if k == kind]
    return value


def _runtime_stage() -> list[tuple[str, str]]:
    """The instructions after the last FROM: what the shipped image is made of."""
    instructions = _instructions()
    last = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last:]


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_cmd_is_the_packaged_console_script_in_exec_form() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    cmd = json.loads(_one("CMD"))  # exec form: the proxy is PID 1 and gets SIGTERM
    assert cmd[0] in scripts
    module, func = scripts[cmd[0]].split(":")
    assert callable(getattr(__import__(module, fromlist=[func]), func))


def test_healthcheck_is_the_packaged_health_module_on_the_admin_liveness_route() -> None:
    check = json.loads(_one("HEALTHCHECK").split("CMD", 1)[1])
    assert check == ["python", "-m", "proxy.health"]
    health = __import__("proxy.health", fromlist=["main", "healthz_url"])
    assert callable(health.main)
    config = Config()
    url = health.healthz_url(config.admin_host, config.admin_port)
    assert url == f"http://127.0.0.1:{config.admin_port}/healthz"  # inside the container
    admin_paths = {r.resource.canonical for r in make_admin_app(make_app(config)).router.routes()}
    assert "/healthz" in admin_paths


def test_only_the_public_port_is_exposed() -> None:
    # The admin listener is on the container's loopback by default: nothing to publish.
    assert Config().admin_host == "127.0.0.1"
    exposed = {int(p) for p in _one("EXPOSE").split()}
    assert exposed == {Config().port}


def test_copied_files_exist_and_the_config_lands_where_the_env_points() -> None:
    copies = [v.split() for k, v in _instructions() if k == "COPY"]
    from_context = [c for c in copies if not c[0].startswith("--from=")]
    kept = [line.rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()]
    for *sources, _ in from_context:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert f"!{source.rstrip('/')}" in kept, f"{source} is left out by .dockerignore"
    env = " ".join(v for k, v in _runtime_stage() if k == "ENV")
    config_path = re.search(r"COALESCER_CONFIG=(\S+)", env)
    assert config_path is not None
    assert ["config.yaml", config_path.group(1)] in copies
    assert build_config(read_file(ROOT / "config.yaml")).drain_seconds < 10  # docker stop grace


def test_the_default_base_is_the_official_python_image_and_every_stage_uses_it() -> None:
    (arg,) = [v for k, v in _instructions() if k == "ARG" and v.startswith("BASE_IMAGE=")]
    assert arg == "BASE_IMAGE=python:3.11-slim-bookworm"
    assert {v.split()[0] for k, v in _instructions() if k == "FROM"} == {"${BASE_IMAGE}"}


def test_runs_as_a_non_root_user() -> None:
    (user,) = [v for k, v in _runtime_stage() if k == "USER"]
    assert user.split(":")[0] not in ("root", "0")
