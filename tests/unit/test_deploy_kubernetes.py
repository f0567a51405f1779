"""The Kubernetes manifests (deploy/kubernetes/), checked offline: each is a valid object of the
Kubernetes API, and everything they say about the proxy (config keys, ports, probe paths, the
drain budget) and about the front (its template, placeholders, upstream names) matches the
code and the other shipped files."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from proxy.admin import make_admin_app
from proxy.config import OPTIONS, Config, build_config
from proxy.endpoints import DEFAULT_ENDPOINTS
from tests.support.front import REPLICA_POLICY, TEMPLATE, render

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes still commonly run, and the newest schema the validator ships.
VERSIONS = ("1.30.0", "1.37.0")
# The front test runs its replicas with the policy the pods behind the front get.
POD_OVERRIDES = {
    "upstream": "http://dstack-server:3000",
    "admin_host": "0.0.0.0",
    "policy": REPLICA_POLICY,
}


def _documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path.name, doc


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for _, d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(deployment: str) -> dict[str, Any]:
    (container,) = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _pod_config() -> Config:
    data = yaml.safe_load(_one("ConfigMap", "dstack-coalescer-config")["data"]["config.yaml"])
    return build_config({k: (v, "the ConfigMap") for k, v in data.items()})


OBJECTS = [(f, d) for f, d in _documents() if d["kind"] != "Kustomization"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("file", "doc"), OBJECTS, ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in OBJECTS]
)
def test_every_manifest_is_a_valid_kubernetes_object(
    file: str, doc: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)
    if doc["kind"] != "Namespace":
        assert doc["metadata"]["namespace"] == "dstack"


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_the_configmap_is_config_yaml_with_only_the_pod_values_changed() -> None:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    in_pod = yaml.safe_load(_one("ConfigMap", "dstack-coalescer-config")["data"]["config.yaml"])
    assert set(in_pod) == set(OPTIONS)  # every option, as config.yaml documents them
    assert in_pod == {**shipped, **POD_OVERRIDES}
    # Parsed as the proxy parses it: the built-in defaults but for the two pod values. The
    # admin listener is on the pod's address, where the kubelet probes it.
    assert _pod_config() == dataclasses.replace(Config(), **POD_OVERRIDES)


def test_the_deployment_matches_the_proxys_ports_probes_and_drain() -> None:
    config, container = _pod_config(), _container("dstack-coalescer")
    deployment = _one("Deployment", "dstack-coalescer")
    pod = deployment["spec"]["template"]["spec"]

    assert _ports(container) == {"http": config.port, "admin": config.admin_port}
    admin_routes = {
        r.resource.canonical
        for r in make_admin_app(web.Application()).router.routes()
        if r.method == "GET" and r.resource is not None
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert {"/readyz", "/healthz"} <= admin_routes

    # The config file the proxy reads is the mounted ConfigMap's key.
    config_path = Path(_env(container)["COALESCER_CONFIG"])
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert (mount["mountPath"], mount["name"]) == (str(config_path.parent), volume["name"])
    assert volume["configMap"]["name"] == "dstack-coalescer-config"
    assert config_path.name in _one("ConfigMap", "dstack-coalescer-config")["data"]

    # Endpoints are removed (preStop), then the drain runs, all inside the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert int(pre_stop[1]) + config.drain_seconds < pod["terminationGracePeriodSeconds"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_services_and_budget_select_the_pods_and_name_real_ports() -> None:
    labels = {
        name: _one("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        for name in ("dstack-coalescer", "dstack-front")
    }
    services = [d for _, d in _documents() if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {
        "dstack-coalescer",
        "dstack-coalescer-pods",
        "dstack-front",
    }
    for service in services:
        target = next(n for n, lb in labels.items() if lb == service["spec"]["selector"])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in _ports(_container(target))
    assert _one("Service", "dstack-coalescer-pods")["spec"]["clusterIP"] == "None"
    for name in labels:
        budget = _one("PodDisruptionBudget", name)
        assert budget["spec"]["selector"]["matchLabels"] == labels[name]
        replicas = _one("Deployment", name)["spec"]["replicas"]
        assert replicas >= 2 and budget["spec"]["maxUnavailable"] < replicas


def test_the_front_runs_the_shipped_template_with_every_placeholder_set() -> None:
    data = _one("ConfigMap", "dstack-front-nginx")["data"]
    assert data["default.conf.template"] == TEMPLATE.read_text()
    container = _container("dstack-front")
    env = _env(container)
    rendered = render(data["default.conf.template"], env)  # KeyError if one is missing

    assert f"listen {_ports(container)['https']} ssl http2;" in rendered
    assert env["FRONT_ROUTE"] == "batchable"
    # The hash ring is the headless Service's pods, followed as they change.
    headless = _one("Service", "dstack-coalescer-pods")
    (port,) = headless["spec"]["ports"]
    assert env["FRONT_COALESCER_SERVERS"] == (
        f"server {headless['metadata']['name']}.dstack.svc.cluster.local:{port['port']} resolve;"
    )
    assert "${NGINX_LOCAL_RESOLVERS}" in data["resolver.conf.template"]
    assert env["NGINX_ENTRYPOINT_LOCAL_RESOLVERS"] == "1"
    assert env["FRONT_DSTACK_SERVER"] == "dstack-server.dstack.svc.cluster.local:3000"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert str(Path(env["FRONT_TLS_CERT"]).parent) in mounts
    assert {"/etc/nginx/templates", "/etc/nginx/conf.d", "/tmp"} <= set(mounts)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_fronts_batchable_paths_are_the_proxys_enabled_endpoints() -> None:
    (alternatives,) = re.findall(
        r'"~\^/api/project/\[\^/\]\+/\(\?:([^)]*)\)\$" 1;', TEMPLATE.read_text()
    )
    enabled = {e.name for e in DEFAULT_ENDPOINTS if e.enabled}
    assert all(e.path == f"/api/project/{{project}}/{e.name}" for e in DEFAULT_ENDPOINTS)
    assert set(alternatives.split("|")) == enabled
