"""The Dockerfile cannot be built here (no Docker engine), so it is checked instead: hadolint
finds nothing, and everything it names exists in the package and its configuration."""

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


def test_healthcheck_targets_the_admin_liveness_route() -> None:
    check = _one("HEALTHCHECK")
    port = re.search(r"COALESCER_ADMIN_PORT', '(\d+)'", check)
    path = re.search(r"http://127\.0\.0\.1:\{port\}(/\w+)", check)
    assert port is not None and path is not None
    assert int(port.group(1)) == Config().admin_port
    assert Config().admin_host == "127.0.0.1"  # the check runs inside the container
    admin_paths = {r.resource.canonical for r in make_admin_app(make_app(Config())).router.routes()}
    assert path.group(1) in admin_paths


def test_exposed_ports_are_the_default_listeners() -> None:
    exposed = {int(p) for p in _one("EXPOSE").split()}
    assert exposed == {Config().port, Config().admin_port}


def test_copied_files_exist_and_the_config_lands_where_the_env_points() -> None:
    copies = [v.split() for k, v in _instructions() if k == "COPY"]
    for *sources, _ in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
    env = " ".join(v for k, v in _instructions() if k == "ENV")
    config_path = re.search(r"COALESCER_CONFIG=(\S+)", env)
    assert config_path is not None
    assert ["config.yaml", config_path.group(1)] in copies
    assert build_config(read_file(ROOT / "config.yaml")).drain_seconds < 10  # docker stop grace


def test_runs_as_a_non_root_user() -> None:
    user = _one("USER")
    assert user.split(":")[0] not in ("root", "0")
