"""What `kubectl kustomize` makes of deploy/kubernetes, for the offline tests: the parts of
kustomize the shipped kustomization uses (resources, components, namespace, configMapGenerator
with content-hash names and the references to them, images). No kustomize can be installed
from the registries CI reaches. Where `kubectl` was at hand, its output was compared with this
one's: the same objects and fields, but for the hash suffixes, which here are a hash of the
content too, not kustomize's own encoding of it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

# Kinds that live in no namespace: kustomize's `namespace:` leaves them alone.
CLUSTER_KINDS = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
)


def render(root: Path, *, components: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize root` prints. `components` replaces the kustomization's
    own list (to render with an optional component turned on)."""
    k = _load(root)
    objects = list(_resources(root, k))
    for component in k.get("components", []) if components is None else components:
        objects.extend(_resources(root / component, _load(root / component)))
    generated = {}
    for spec in k.get("configMapGenerator", []):
        cm = _config_map(root, spec)
        generated[spec["name"]] = cm["metadata"]["name"]
        objects.insert(len(generated) - 1, cm)
    for obj in objects:
        if "namespace" in k and obj["kind"] not in CLUSTER_KINDS:
            obj["metadata"]["namespace"] = k["namespace"]
        for pod in _pod_specs(obj):
            _rename_config_maps(pod, generated)
            _set_images(pod, k.get("images", []))
    return objects


def _load(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((root / "kustomization.yaml").read_text())
    return data


def _resources(root: Path, k: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for entry in k.get("resources", []):
        path = root / entry
        if path.is_dir():
            yield from render(path)
        else:
            yield from (d for d in yaml.safe_load_all(path.read_text()) if d is not None)


def _config_map(root: Path, spec: dict[str, Any]) -> dict[str, Any]:
    data = {}
    for item in spec.get("files", []):
        key, _, path = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
        data[key] = (root / path).read_text()
    for item in spec.get("literals", []):
        key, _, value = item.partition("=")
        data[key] = value
    name = spec["name"]
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{name}-{_hash(name, data)}"},
        "data": data,
    }


def _hash(name: str, data: dict[str, str]) -> str:
    """A suffix that changes with the content, in kustomize's alphabet (10 characters)."""
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": name}, sort_keys=True)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans({"0": "g", "1": "h", "3": "k", "a": "m", "e": "t"}))


def _pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
        yield obj["spec"]["template"]["spec"]


def _rename_config_maps(pod: dict[str, Any], generated: dict[str, str]) -> None:
    for volume in pod.get("volumes", []):
        if "configMap" in volume and volume["configMap"]["name"] in generated:
            volume["configMap"]["name"] = generated[volume["configMap"]["name"]]
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for source in container.get("envFrom", []):
            ref = source.get("configMapRef")
            if ref and ref["name"] in generated:
                ref["name"] = generated[ref["name"]]


def _set_images(pod: dict[str, Any], images: list[dict[str, str]]) -> None:
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name = container["image"].split("@")[0].rsplit(":", 1)[0]
        for image in images:
            if image["name"] == name:
                container["image"] = f"{image.get('newName', name)}:{image['newTag']}"
