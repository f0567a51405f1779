"""The Kubernetes manifests (deploy/kubernetes/), checked offline as kustomize renders them
(tests/support/kustomize.py): each is a valid object of the Kubernetes API, `delete -k` can
touch nothing but the proxy's and the front's own objects, and everything they say about the
proxy (config keys, ports, probes, the drain budget, memory) and about the front (its template,
the ring, placeholders, names) matches the code and the other shipped files."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from aiohttp import web

from proxy.admin import make_admin_app
from proxy.batching.endpoints import DEFAULT_ENDPOINTS
from proxy.config import OPTIONS, Config, build_config
from tests.support.front import REPLICA_POLICY, RING_DIR, TEMPLATE, render
from tests.support.kustomize import render as kustomize

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes still commonly run, and the newest schema the validator ships.
VERSIONS = ("1.30.0", "1.37.0")
# What the pods' config.yaml changes from the repository's (the front test runs its replicas
# with the same policy).
POD_OVERRIDES = {
    "upstream": "http://dstack-server:3000",
    "admin_host": "0.0.0.0",
    "policy": REPLICA_POLICY,
    "drain_seconds": 65.0,
}
# Peak RSS of one proxy holding 10 000 requests, the most over six runs (docs/measurements.md,
# "10 000 callers held at once": 227-246 MiB).
PEAK_RSS_10K = 246 * 2**20
# How long a terminating pod's DNS name may still resolve: endpoint propagation (allow 5 s)
# and CoreDNS's default TTL for Service records (5 s).
DNS_LAG = 5 + 5

OBJECTS = kustomize(K8S)
WITH_PODMONITOR = kustomize(K8S, components=("podmonitor",))
# The objects of this repository: kustomize's own, plus the PodMonitor's CRD kind.
OURS = {"ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget", "PodMonitor"}


def _one(kind: str, name: str, objects: list[dict[str, Any]] = OBJECTS) -> dict[str, Any]:
    (doc,) = [
        d
        for d in objects
        if d["kind"] == kind and re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?", d["metadata"]["name"])
    ]
    return doc


def _pod(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = _one(kind, name)["spec"]["template"]["spec"]
    return spec


def _container(kind: str, name: str, container: str) -> dict[str, Any]:
    (found,) = [c for c in _pod(kind, name)["containers"] if c["name"] == container]
    return found


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def _pod_config() -> Config:
    data = yaml.safe_load(_one("ConfigMap", "dstack-coalescer-config")["data"]["config.yaml"])
    return build_config({k: (v, "the ConfigMap") for k, v in data.items()})


def _mebibytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * 2 ** (20 if unit == "Mi" else 30)


VALIDATED = [d for d in WITH_PODMONITOR if d["kind"] != "PodMonitor"]  # a CRD: no schema here


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    "doc", VALIDATED, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in VALIDATED]
)
def test_every_rendered_object_is_a_valid_kubernetes_object(
    doc: dict[str, Any], version: str
) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_delete_k_touches_only_the_proxys_and_the_fronts_objects() -> None:
    """`kubectl delete -k` deletes what the kustomization renders: no Namespace (dstack and its
    volumes may share it), nothing of dstack's, every object in the one namespace set in one
    place, named for the proxy or the front."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "dstack"
    for objects in (OBJECTS, WITH_PODMONITOR):
        assert {d["kind"] for d in objects} <= OURS
        for d in objects:
            assert d["metadata"]["namespace"] == "dstack"
            assert d["metadata"]["name"].startswith(("dstack-coalescer", "dstack-front"))
    # No manifest names a namespace of its own, so `namespace:` is the only place.
    for path in K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "metadata" in doc:
                assert "namespace" not in doc["metadata"], path
    assert {d["kind"] for d in WITH_PODMONITOR} - {d["kind"] for d in OBJECTS} == {"PodMonitor"}


def test_the_configmaps_are_generated_from_the_shipped_files() -> None:
    """Generated: the names carry a hash of the content, so a config edit rolls the pods; and
    the content is the repository's files, verbatim."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert {g["name"] for g in kustomization["configMapGenerator"]} == {
        "dstack-coalescer-config",
        "dstack-front",
    }
    config = _one("ConfigMap", "dstack-coalescer-config")
    volumes = {v["configMap"]["name"] for v in _pod("StatefulSet", "dstack-coalescer")["volumes"]}
    assert volumes == {config["metadata"]["name"]} != {"dstack-coalescer-config"}
    front = _one("ConfigMap", "dstack-front")
    assert front["data"] == {
        "default.conf.template": TEMPLATE.read_text(),
        "ring.cfg": (RING_DIR / "ring.cfg").read_text(),
        "statefulset.cfg": (RING_DIR / "statefulset.cfg").read_text(),
    }
    changed = (K8S / "config.yaml").read_text() + "\n# edited\n"
    edited = dict(config["data"], **{"config.yaml": changed})
    from tests.support.kustomize import _hash

    assert _hash("dstack-coalescer-config", edited) != config["metadata"]["name"][-10:]


def test_images_are_set_in_the_kustomization_only() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    names = {i["name"] for i in kustomization["images"]}
    images = {
        c["image"]
        for kind, name in (("StatefulSet", "dstack-coalescer"), ("Deployment", "dstack-front"))
        for c in _pod(kind, name)["containers"]
    }
    assert images == {f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    for path in K8S.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for c in (
                (doc or {})
                .get("spec", {})
                .get("template", {})
                .get("spec", {})
                .get("containers", [])
            ):
                assert c["image"] in names, path  # a bare name, tagged by `images:`


def test_the_front_images_are_the_shipped_dockerfiles_in_compose_and_kubernetes() -> None:
    """Compose builds the front from deploy/nginx/ and deploy/haproxy/ under the same names and
    tags that the kustomization sets, and the nginx image's port is the one both use."""
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())["services"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    tags = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization["images"]}
    for service, folder, name in (
        ("front", "nginx", "dstack-front-nginx"),
        ("ring", "haproxy", "dstack-front-ring"),
    ):
        context = (ROOT / "deploy" / compose[service]["build"]["context"]).resolve()
        assert context == ROOT / "deploy" / folder
        assert (context / "Dockerfile").read_text().startswith("# ")
        assert compose[service]["image"] == tags[name]
    dockerfile = (ROOT / "deploy" / "nginx" / "Dockerfile").read_text()
    (exposed,) = re.findall(r"^EXPOSE (\d+)$", dockerfile, re.MULTILINE)
    assert "USER 101:101" in dockerfile  # unprivileged: no port below 1024
    assert compose["front"]["environment"]["FRONT_LISTEN"] == exposed
    assert compose["front"]["ports"] == [f"443:{exposed}"]
    nginx = _container("Deployment", "dstack-front", "nginx")
    assert _env(nginx)["FRONT_LISTEN"] == exposed == str(_ports(nginx)["https"])


def test_the_configmap_is_config_yaml_with_only_the_pod_values_changed() -> None:
    shipped = yaml.safe_load((ROOT / "config.yaml").read_text())
    in_pod = yaml.safe_load(_one("ConfigMap", "dstack-coalescer-config")["data"]["config.yaml"])
    assert set(in_pod) == set(OPTIONS)  # every option, as config.yaml documents them
    assert in_pod == {**shipped, **POD_OVERRIDES}
    assert _pod_config() == dataclasses.replace(Config(), **POD_OVERRIDES)


def test_the_statefulset_matches_the_proxys_ports_probes_and_config() -> None:
    config = _pod_config()
    container = _container("StatefulSet", "dstack-coalescer", "dstack-coalescer")
    pod = _pod("StatefulSet", "dstack-coalescer")

    assert _ports(container) == {"http": config.port, "admin": config.admin_port}
    admin_routes = {
        r.resource.canonical
        for r in make_admin_app(web.Application()).router.routes()
        if r.method == "GET" and r.resource is not None
    }
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert {"/readyz", "/healthz"} <= admin_routes

    config_path = Path(_env(container)["COALESCER_CONFIG"])
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert (mount["mountPath"], mount["name"]) == (str(config_path.parent), volume["name"])
    assert config_path.name in _one("ConfigMap", "dstack-coalescer-config")["data"]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    spread = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in spread


def test_rolling_updates_let_a_held_request_get_its_real_answer() -> None:
    """preStop outlasts the DNS lag plus the ring's notice; the drain outlasts a request that
    waits behind its key's flight and then takes its own (each up to batch_timeout); the grace
    period holds both."""
    config = _pod_config()
    container = _container("StatefulSet", "dstack-coalescer", "dstack-coalescer")
    pod = _pod("StatefulSet", "dstack-coalescer")
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    ring = (RING_DIR / "ring.cfg").read_text()
    resolve = int(re.search(r"timeout resolve (\d+)s", ring).group(1))  # type: ignore[union-attr]
    hold_nx = int(re.search(r"hold nx (\d+)s", ring).group(1))  # type: ignore[union-attr]
    assert pre_stop >= DNS_LAG + resolve + hold_nx
    assert config.drain_seconds >= 2 * config.batch_timeout + config.window_ms / 1000
    assert pre_stop + config.drain_seconds + 5 <= pod["terminationGracePeriodSeconds"]
    # The ring waits for a held request at least as long as the drain may take.
    server_timeout = int(re.search(r"timeout server (\d+)s", ring).group(1))  # type: ignore[union-attr]
    assert server_timeout > config.drain_seconds
    # Docker and Compose keep the repository's 8 s drain inside their 10 s stop grace.
    assert Config().drain_seconds < 10


def test_memory_fits_the_caps() -> None:
    """The limit holds the measured peak at 10 000 held requests plus a full response buffer
    budget and a full request-body budget; request = limit (no overcommit to be OOM-killed
    for). An OOM kill would drop every held caller."""
    config = _pod_config()
    resources = _container("StatefulSet", "dstack-coalescer", "dstack-coalescer")["resources"]
    limit = _mebibytes(resources["limits"]["memory"])
    assert _mebibytes(resources["requests"]["memory"]) == limit
    assert config.max_pending == 10_000  # the figure the peak was measured at
    need = PEAK_RSS_10K + config.buffer_budget_bytes + config.max_pending_bytes
    assert need * 1.2 <= limit, (need / 2**20, limit / 2**20)


def test_services_and_budgets_select_the_pods_and_name_real_ports() -> None:
    workloads = {"dstack-coalescer": "StatefulSet", "dstack-front": "Deployment"}
    labels = {
        name: _one(kind, name)["spec"]["template"]["metadata"]["labels"]
        for name, kind in workloads.items()
    }
    containers = {
        "dstack-coalescer": _container("StatefulSet", "dstack-coalescer", "dstack-coalescer"),
        "dstack-front": _container("Deployment", "dstack-front", "nginx"),
    }
    services = [d for d in OBJECTS if d["kind"] == "Service"]
    assert {s["metadata"]["name"] for s in services} == {
        "dstack-coalescer",
        "dstack-coalescer-pods",
        "dstack-front",
    }
    for service in services:
        target = next(n for n, lb in labels.items() if lb == service["spec"]["selector"])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in _ports(containers[target])
    headless = _one("Service", "dstack-coalescer-pods")
    assert headless["spec"]["clusterIP"] == "None"
    assert _one("StatefulSet", "dstack-coalescer")["spec"]["serviceName"] == "dstack-coalescer-pods"
    front = _one("Service", "dstack-front")
    assert front["spec"]["externalTrafficPolicy"] == "Local"  # clients' addresses kept
    for name, kind in workloads.items():
        budget = _one("PodDisruptionBudget", name)
        assert budget["spec"]["selector"]["matchLabels"] == labels[name]
        replicas = _one(kind, name)["spec"]["replicas"]
        assert replicas >= 2 and budget["spec"]["maxUnavailable"] < replicas
    monitor = _one("PodMonitor", "dstack-coalescer", WITH_PODMONITOR)
    assert monitor["spec"]["selector"]["matchLabels"] == labels["dstack-coalescer"]
    assert monitor["spec"]["podMetricsEndpoints"] == [
        {"port": "admin", "path": "/metrics", "interval": "15s"}
    ]


def test_the_front_runs_nginx_and_the_ring_with_every_placeholder_set() -> None:
    data = _one("ConfigMap", "dstack-front")["data"]
    nginx = _container("Deployment", "dstack-front", "nginx")
    env = _env(nginx)
    rendered = render(data["default.conf.template"], env)  # KeyError if one is missing
    assert f"listen {_ports(nginx)['https']} ssl;" in rendered
    assert "http2 on;" in rendered  # the image is nginx 1.26 (deploy/nginx/Dockerfile)
    assert "proxy_set_header X-Forwarded-Port 443;" in rendered
    assert env["FRONT_ROUTE"] == "batchable"
    assert env["FRONT_DSTACK_SERVER"] == "dstack-server:3000"
    ring = _container("Deployment", "dstack-front", "ring")
    ring_env = _env(ring)
    assert env["FRONT_COALESCER_SERVERS"] == f"server {ring_env['RING_LISTEN']};"
    # The ring resolves each replica's name under the headless Service, in the pod's own
    # namespace: the kustomization's, never written here.
    headless = _one("Service", "dstack-coalescer-pods")
    (port,) = headless["spec"]["ports"]
    assert ring_env["RING_PODS"] == (
        f"{headless['metadata']['name']}.$(POD_NAMESPACE).svc.$(CLUSTER_DOMAIN)"
    )
    (namespace,) = [e for e in ring["env"] if e["name"] == "POD_NAMESPACE"]
    assert namespace["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert (ring_env["RING_PORT"], ring_env["RING_ADMIN_PORT"]) == (
        str(port["port"]),
        str(_pod_config().admin_port),
    )
    statefulset = data["statefulset.cfg"]
    names = re.findall(r'server replica-(\d+) "dstack-coalescer-(\d+)\.', statefulset)
    assert names and all(a == b for a, b in names)
    assert _one("StatefulSet", "dstack-coalescer")["spec"]["replicas"] <= len(names)
    script = ring["command"][-1]
    assert "/etc/haproxy-ring/ring.cfg" in shlex.split(script)
    mounts = {m["mountPath"]: m for m in nginx["volumeMounts"]}
    assert str(Path(env["FRONT_TLS_CERT"]).parent) in mounts
    assert {"/etc/nginx/conf.d", "/tmp"} <= set(mounts)
    for container in (nginx, ring):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_fronts_batchable_paths_are_the_proxys_enabled_endpoints() -> None:
    (alternatives,) = re.findall(
        r'"~\^/api/project/\[\^/\]\+/\(\?:([^)]*)\)\$" 1;', TEMPLATE.read_text()
    )
    enabled = {e.name for e in DEFAULT_ENDPOINTS if e.enabled}
    assert all(e.path == f"/api/project/{{project}}/{e.name}" for e in DEFAULT_ENDPOINTS)
    assert set(alternatives.split("|")) == enabled
