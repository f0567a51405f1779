"""docs/deploy.md's steps, as a reader pastes them. The Compose steps run verbatim, each block in
a fresh shell with nothing exported (as a reader coming back the next day), against a copy of
deploy/; the commands that would pull and start images are asked for the configuration they
would run instead (`config`), since Docker Hub cannot be reached here (tests/deploy/
test_compose.py runs the file itself with stand-in images). The Kubernetes steps are checked in
their order against the rendered kustomization (no cluster can exist here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support.front import debian_tool
from tests.support.kustomize import render

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deploy.md"


def section(title: str) -> str:
    text = DOC.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def shell_blocks(text: str) -> list[list[str]]:
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    return [[ln for ln in b.splitlines() if ln.strip()] for b in blocks]


def fresh_shell(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`bash -c script` with only PATH and HOME: nothing a previous step exported."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def as_dry_run(line: str) -> str:
    """A compose command line, asked for its configuration instead of acting. Debian ships
    Compose as `docker-compose`; the document uses the `docker compose` plugin's spelling."""
    line = line.split("  #")[0].replace("docker compose", "docker-compose")
    for action in (r"up -d --build", r"ps", r"down.*"):
        line = re.sub(rf"\b{action}$", "config --quiet", line)
    return line


def test_the_compose_steps_run_in_fresh_shells(tmp_path: Path) -> None:
    debian_tool("docker-compose", "docker-compose")  # `config` needs no Docker engine
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / "deploy" / ".env").unlink(missing_ok=True)
    blocks = shell_blocks(section("Compose"))
    lines = [ln for block in blocks for ln in block]
    assert any(ln.startswith("echo ") and "deploy/.env" in ln for ln in lines), lines
    compose_lines = [ln for ln in lines if ln.startswith("docker compose")]
    assert len(compose_lines) >= 3, compose_lines
    for block in blocks:
        script = "\n".join(
            as_dry_run(ln) if ln.startswith("docker compose") else ln for ln in block
        )
        done = fresh_shell(script, tmp_path)
        assert done.returncode == 0, (script, done.stderr[-2000:])
    # What `up` would run: the token from deploy/.env, in a shell that never exported it.
    config = fresh_shell("docker-compose -f deploy/compose.yaml config", tmp_path)
    assert config.returncode == 0, config.stderr
    loaded = yaml.safe_load(config.stdout)
    token = loaded["services"]["dstack-server"]["environment"]["DSTACK_SERVER_ADMIN_TOKEN"]
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    # The `down` line the document gives works in a later shell too.
    stop = section("Compose").split("Stop with `")[1].split("`")[0]
    assert fresh_shell(as_dry_run(stop), tmp_path).returncode == 0


def test_the_one_container_steps_name_a_network_for_the_upstream_name() -> None:
    (block,) = shell_blocks(section("One container"))
    text = "\n".join(block).replace("\\\n", " ")
    run = next(ln for ln in text.splitlines() if ln.startswith("docker run"))
    assert "--network dstack" in run and "COALESCER_UPSTREAM=http://dstack-server:3000" in run
    assert any(ln.startswith("docker network create dstack") for ln in block)


def test_the_kubernetes_steps_work_in_order_on_an_empty_cluster() -> None:
    (block,) = shell_blocks(section("Kubernetes with N replicas"))
    steps = [ln.split("  #")[0].strip() for ln in block]
    assert steps[0] == "kubectl create namespace dstack"
    assert steps[1].startswith("kubectl -n dstack create secret tls dstack-front-tls ")
    assert steps[2] == "kubectl apply -k deploy/kubernetes"
    objects = render(ROOT / "deploy" / "kubernetes")
    # The namespace the steps create is the kustomization's, which creates none itself; the
    # Secret they create is the one the front mounts.
    assert {o["metadata"]["namespace"] for o in objects} == {"dstack"}
    assert "Namespace" not in {o["kind"] for o in objects}
    (front,) = [o for o in objects if o["kind"] == "Deployment"]
    secrets = {
        v["secret"]["secretName"]
        for v in front["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert secrets == {"dstack-front-tls"}
    assert "kubectl delete -k deploy/kubernetes" in section("Kubernetes with N replicas")
