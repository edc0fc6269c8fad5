"""Render the kustomize overlays and walk what they produce.

Rendering uses the real kustomize (`kustomize build`, or the one built into `kubectl
kustomize`), so a test sees exactly what `kubectl apply -k` would send.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
K8S_SCHEMAS = K8S / "schemas" / "kubernetes" / "v1.35.0"
RAYCLUSTER_SCHEMA = K8S / "schemas" / "kuberay" / "raycluster-ray-v1.json"

Obj = dict[str, Any]


def kustomizations() -> list[str]:
    """The base and every overlay, as paths relative to k8s/ (new overlays are picked up)."""
    overlays = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
    return ["base", *(f"overlays/{name}" for name in overlays)]


def _kustomize_command(path: Path) -> list[str]:
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(path)]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(path)]
    raise RuntimeError(
        "neither `kustomize` nor `kubectl` is on PATH: install kubectl (it embeds kustomize)"
    )


@functools.cache
def render(kustomization: str) -> tuple[Obj, ...]:
    path = K8S / kustomization
    proc = subprocess.run(
        _kustomize_command(path), capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"kustomize failed on {kustomization}:\n{proc.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def name_of(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def find(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise AssertionError(f"no {kind}/{name} in the rendered objects")


def of_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [obj for obj in objs if obj["kind"] == kind]


@dataclass(frozen=True)
class PodTemplate:
    """A pod template anywhere in the output: a workload's, or a RayCluster group's."""

    owner: str
    template: Obj
    # For RayCluster groups: the group's own spec (rayStartParams, replicas ...).
    group: Obj | None = None

    @property
    def labels(self) -> dict[str, str]:
        labels: dict[str, str] = self.template.get("metadata", {}).get("labels", {})
        return labels

    @property
    def spec(self) -> Obj:
        spec: Obj = self.template["spec"]
        return spec

    def containers(self) -> list[Obj]:
        return [*self.spec.get("initContainers", []), *self.spec["containers"]]


def pod_templates(objs: tuple[Obj, ...]) -> Iterator[PodTemplate]:
    for obj in objs:
        kind = obj["kind"]
        if kind in ("Deployment", "StatefulSet", "Job"):
            yield PodTemplate(name_of(obj), obj["spec"]["template"])
        elif kind == "RayCluster":
            head = obj["spec"]["headGroupSpec"]
            yield PodTemplate(f"{name_of(obj)}[head]", head["template"], head)
            for group in obj["spec"].get("workerGroupSpecs", []):
                owner = f"{name_of(obj)}[{group['groupName']}]"
                yield PodTemplate(owner, group["template"], group)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- schemas ---------------------------------------------------------------------------


def _schema_file(api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    group = group.split(".")[0]
    suffix = f"-{group}-{version}" if group else f"-{version}"
    return K8S_SCHEMAS / f"{kind.lower()}{suffix}.json"


@functools.cache
def _registry() -> Registry:
    definitions = json.loads((K8S_SCHEMAS / "_definitions.json").read_text())
    resource = Resource.from_contents(definitions)
    registry: Registry = Registry().with_resource(definitions["$id"], resource)
    return registry


@functools.cache
def validator(api_version: str, kind: str) -> Draft202012Validator:
    if (api_version, kind) == ("ray.io/v1", "RayCluster"):
        path = RAYCLUSTER_SCHEMA
    else:
        path = _schema_file(api_version, kind)
    if not path.exists():
        raise AssertionError(f"no schema for {api_version} {kind} in k8s/schemas ({path.name})")
    schema = json.loads(path.read_text())
    return Draft202012Validator(schema, registry=_registry())


def schema_errors(obj: Obj) -> list[str]:
    v = validator(obj["apiVersion"], obj["kind"])
    return [
        f"{name_of(obj)} at /{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}"
        for e in v.iter_errors(obj)
    ]


# --- quantities ------------------------------------------------------------------------

_SUFFIX = {
    "m": 1e-3,
    "": 1.0,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ('500m', '2', '48Gi') as a number."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]
