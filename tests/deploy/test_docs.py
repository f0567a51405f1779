"""docs/deploy.md's steps, as a reader pastes them. The Compose steps run in fresh shells with
nothing exported (as a reader coming back the next day), against a copy of deploy/: once asked
for the configuration they would run (`config`), and once for real, verbatim but for `--build`:
`up`, a stop through the front, `logs` and the document's `down`. Nothing can be pulled or
fetched from inside a build here, so the images `up` would build are built beforehand from the
same Dockerfiles (on the stand-in bases of conftest.py) under the names deploy/compose.yaml
gives them, and the official dstack image's name is given to the stand-in dstack server (the
same dstack[server] 0.22.5). The Kubernetes steps are checked in their order against the
rendered kustomization (no cluster can exist here)."""

from __future__ import annotations

import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.front import debian_tool
from tests.support.kustomize import render

from .engine import compose, docker
from .test_compose import make_certificate

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


def fresh_shell(script: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`bash -c script` with only PATH and HOME: nothing a previous step exported."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
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


def as_run(line: str) -> str:
    """A compose command line as run here: Debian's `docker-compose`, and no `--build` (the
    images are built beforehand from the same Dockerfiles)."""
    line = line.split("  #")[0].replace("docker compose", "docker-compose")
    return line.replace(" --build", "")


def test_the_compose_steps_bring_the_stack_up_stop_through_the_front_and_down(
    tmp_path: Path,
    dstack_image: str,
    coalescer_image: str,
    nginx_image: str,
    haproxy_image: str,
) -> None:
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / "deploy" / ".env").unlink(missing_ok=True)
    services = yaml.safe_load((tmp_path / "deploy" / "compose.yaml").read_text())["services"]
    built = {
        "dstack-server": dstack_image,
        "dstack-coalescer": coalescer_image,
        "front": nginx_image,
        "ring": haproxy_image,
    }
    for service, image in built.items():
        docker("tag", image, services[service]["image"])
    # The certificate the document asks for, readable by the front's uid 101 only.
    make_certificate(tmp_path / "deploy" / "nginx" / "tls")
    assert (tmp_path / "deploy" / "nginx" / "tls" / "tls.key").stat().st_mode & 0o077 == 0
    blocks = shell_blocks(section("Compose"))
    down = section("Compose").split("Stop with `")[1].split("`")[0]
    try:
        for block in blocks:
            script = "\n".join(
                as_run(ln) if ln.startswith("docker compose") else ln for ln in block
            )
            done = fresh_shell(script, tmp_path, timeout=600)
            assert done.returncode == 0, (script, done.stdout[-2000:], done.stderr[-3000:])
        token = (tmp_path / "deploy" / ".env").read_text().strip().split("=", 1)[1]
        answers = _stops_through_the_front(tmp_path / "deploy" / "nginx" / "tls", token)
        assert answers == [(200, b"null")] * 5, answers
        logs = fresh_shell(
            "docker-compose -f deploy/compose.yaml --profile front logs --no-color", tmp_path
        )
        assert logs.returncode == 0, logs.stderr
        # The proxy's start line, and the front's access lines for the stops.
        assert re.search(r"dstack-coalescer_1 .*listening", logs.stdout), logs.stdout[-3000:]
        front = [ln for ln in logs.stdout.splitlines() if ln.startswith("front_1")]
        assert sum("/api/project/main/runs/stop" in ln for ln in front) == 5, front[-10:]
        done = fresh_shell(as_run(down), tmp_path, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        left = docker(
            "ps", "--all", "--quiet", "--filter", "label=com.docker.compose.project=deploy"
        )
        assert left.stdout.strip() == ""
    finally:
        compose(
            "-f", str(tmp_path / "deploy" / "compose.yaml"), "--profile", "front",
            "down", "--volumes", "--timeout", "0",
            check=False, env={"DSTACK_SERVER_ADMIN_TOKEN": "x"},
        )  # fmt: skip
        # The names stay the stand-ins' for this test only (the official image's above all).
        for service in built:
            docker("rmi", services[service]["image"], check=False)


def _stops_through_the_front(tls: Path, token: str) -> list[tuple[int, bytes]]:
    """Five stops of a run that does not exist, over HTTP/2 to the front on port 443, once it
    answers: dstack's own answer comes back through nginx, the ring and the proxy."""
    context = ssl.create_default_context(cafile=str(tls / "tls.crt"))
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 120
    with httpx.Client(
        http2=True, verify=context, headers=headers, base_url="https://127.0.0.1", timeout=60
    ) as client:
        while True:
            try:
                first = client.post(
                    "/api/project/main/runs/stop", json={"runs_names": ["none"], "abort": False}
                )
                if first.status_code not in (502, 503, 504):
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the front did not answer on port 443"
            time.sleep(1)
        assert first.http_version == "HTTP/2"
        rest: list[Any] = [
            client.post(
                "/api/project/main/runs/stop", json={"runs_names": [f"none-{i}"], "abort": False}
            )
            for i in range(4)
        ]
    return [(a.status_code, a.content) for a in [first, *rest]]


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
