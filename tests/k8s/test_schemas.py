"""Every rendered object is valid against the schemas kept in k8s/schemas."""

from __future__ import annotations

import copy

import pytest

from tests.k8s.manifests import find, kustomizations, render, schema_errors


@pytest.mark.parametrize("kustomization", kustomizations())
def test_every_object_matches_its_schema(kustomization: str) -> None:
    objs = render(kustomization)
    assert len(objs) >= 10, "the render lost most of its objects"
    errors = [err for obj in objs for err in schema_errors(obj)]
    assert errors == []


def test_no_overlay_went_missing() -> None:
    # The tests are parametrized over the directories found; a deleted or renamed overlay
    # would otherwise just run fewer tests.
    assert kustomizations() == ["base", "overlays/dev", "overlays/prod"]


def test_the_schemas_refuse_what_the_api_server_would() -> None:
    # The validators must be strict enough to catch the usual manifest mistakes; if one of
    # these passed, the test above would pass on broken manifests as well.
    objs = render("base")
    deployment = copy.deepcopy(find(objs, "Deployment", "tuneplane-control-plane"))
    deployment["spec"]["replicas"] = "two"
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProb"] = {}
    errors = schema_errors(deployment)
    assert any("/spec/replicas" in e for e in errors)
    assert any("readinessProb" in e for e in errors)

    ray = copy.deepcopy(find(objs, "RayCluster", "tuneplane-ray"))
    # Ray's start parameters are strings in the CRD: an unquoted 0 is refused.
    ray["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0
    ray["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    ray["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": "http"}
    ]
    errors = schema_errors(ray)
    assert any("rayStartParams/num-cpus" in e for e in errors)
    assert any("maxReplica" in e for e in errors)
    assert any("containerPort" in e for e in errors)
