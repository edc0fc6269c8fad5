"""The rendered manifests hang together: names, labels, ports, probes, env and security."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from service.config import Settings
from tests.k8s.manifests import (
    ROOT,
    Obj,
    PodTemplate,
    find,
    kustomizations,
    name_of,
    of_kind,
    pod_templates,
    quantity,
    render,
    selects,
)

ALL = kustomizations()
LABELS = ("app.kubernetes.io/name", "app.kubernetes.io/component")
# The only non-TUNEPLANE_ variables the pods set, each with a reader outside Settings.
OTHER_ENV = {
    "RAY_AUTH_MODE",  # Ray: token auth, read by Ray processes and its Jobs API client
    "RAY_AUTH_TOKEN",
    "RAY_USAGE_STATS_ENABLED",
    "HF_HOME",  # Hugging Face cache, on the writable /tmp
    "PYTHONDONTWRITEBYTECODE",  # the root filesystem is read-only
    "POSTGRES_PASSWORD",  # the postgres image, and $(...) in TUNEPLANE_DATABASE_URL
    "POSTGRES_USER",
    "POSTGRES_DB",
    "PGDATA",
    "REDIS_PASSWORD",  # --requirepass, and $(...) in TUNEPLANE_REDIS_URL
    "REDISCLI_AUTH",
}
# Created by the operator (README, "Secrets"), never rendered from the repo.
SECRETS = {"tuneplane-secrets", "tuneplane-ray-auth", "tuneplane-storage", "tuneplane-tls"}
TUNEPLANE_IMAGE = re.compile(r"(^|/)tuneplane:[^:]+$")
# The GPU workers' image (Dockerfile.gpu): ours plus vLLM, built from the same sources.
TUNEPLANE_GPU_IMAGE = re.compile(r"(^|/)tuneplane-gpu:[^:]+$")


def control_plane(objs: tuple[Obj, ...]) -> Obj:
    deployment = find(objs, "Deployment", "tuneplane-control-plane")
    container: Obj = deployment["spec"]["template"]["spec"]["containers"][0]
    return container


def ray_cluster(objs: tuple[Obj, ...]) -> Obj:
    [cluster] = of_kind(objs, "RayCluster")
    return cluster


def env_of(objs: tuple[Obj, ...], container: Obj) -> dict[str, Any]:
    """A container's environment: envFrom ConfigMaps (values), then env (values or refs)."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value", var.get("valueFrom"))
    return env


def all_containers(objs: tuple[Obj, ...]) -> Iterator[tuple[PodTemplate, Obj]]:
    for pod in pod_templates(objs):
        for container in pod.containers():
            yield pod, container


# --- labels and selectors --------------------------------------------------------------


@pytest.mark.parametrize("kustomization", ALL)
def test_every_object_and_pod_carries_the_common_labels(kustomization: str) -> None:
    objs = render(kustomization)
    for obj in objs:
        labels = obj["metadata"].get("labels", {})
        assert all(k in labels for k in LABELS), name_of(obj)
        assert labels["app.kubernetes.io/name"] == "tuneplane"
    for pod in pod_templates(objs):
        assert all(k in pod.labels for k in LABELS), pod.owner


@pytest.mark.parametrize("kustomization", ALL)
def test_workload_selectors_match_their_pods(kustomization: str) -> None:
    objs = render(kustomization)
    for obj in [*of_kind(objs, "Deployment"), *of_kind(objs, "StatefulSet")]:
        selector = obj["spec"]["selector"]["matchLabels"]
        assert selector, name_of(obj)
        assert selects(selector, obj["spec"]["template"]["metadata"]["labels"]), name_of(obj)
    # Two workloads whose pods one selector would both catch would share Services/policies.
    components = [pod.labels["app.kubernetes.io/component"] for pod in pod_templates(objs)]
    workloads = [c for c in components if c != "ray-worker"]
    assert len(workloads) == len(set(workloads)), components


@pytest.mark.parametrize("kustomization", ALL)
def test_services_select_pods_and_target_their_ports(kustomization: str) -> None:
    objs = render(kustomization)
    for svc in of_kind(objs, "Service"):
        pods = [p for p in pod_templates(objs) if selects(svc["spec"]["selector"], p.labels)]
        assert len(pods) == 1, f"{name_of(svc)} selects {[p.owner for p in pods]}"
        ports = [p for c in pods[0].containers() for p in c.get("ports", [])]
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            key = "name" if isinstance(target, str) else "containerPort"
            assert any(p.get(key) == target for p in ports), f"{name_of(svc)} -> {target}"


@pytest.mark.parametrize("kustomization", ALL)
def test_statefulsets_have_a_headless_service_and_a_volume_claim(kustomization: str) -> None:
    objs = render(kustomization)
    statefulsets = of_kind(objs, "StatefulSet")
    assert {s["metadata"]["name"] for s in statefulsets} == {
        "tuneplane-postgres",
        "tuneplane-redis",
    }
    for sts in statefulsets:
        svc = find(objs, "Service", sts["spec"]["serviceName"])
        assert svc["spec"].get("clusterIP") == "None", name_of(svc)
        assert selects(svc["spec"]["selector"], sts["spec"]["template"]["metadata"]["labels"])
        claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
        container = sts["spec"]["template"]["spec"]["containers"][0]
        mounts = {m["name"] for m in container["volumeMounts"]}
        assert claims and claims <= mounts, name_of(sts)


@pytest.mark.parametrize("kustomization", ALL)
def test_ingress_and_pdb_point_at_the_control_plane(kustomization: str) -> None:
    objs = render(kustomization)
    [ingress] = of_kind(objs, "Ingress")
    backends = [
        path["backend"]["service"]
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    cp_labels = find(objs, "Deployment", "tuneplane-control-plane")["spec"]["template"]
    for backend in backends:
        svc = find(objs, "Service", backend["name"])
        assert selects(svc["spec"]["selector"], cp_labels["metadata"]["labels"])
        assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    [pdb] = of_kind(objs, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], cp_labels["metadata"]["labels"])


@pytest.mark.parametrize("kustomization", ["overlays/dev", "overlays/prod"])
def test_overlays_put_everything_in_one_namespace(kustomization: str) -> None:
    namespaces = {obj["metadata"].get("namespace") for obj in render(kustomization)}
    assert len(namespaces) == 1 and None not in namespaces, namespaces


# --- images, probes, resources, security -----------------------------------------------


@pytest.mark.parametrize("kustomization", ALL)
def test_images_are_pinned_and_ours_is_one_image(kustomization: str) -> None:
    objs = render(kustomization)
    ours: set[str] = set()
    for pod, container in all_containers(objs):
        image = container["image"]
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"{pod.owner}: {image}"
        if TUNEPLANE_IMAGE.search(image):
            ours.add(image)
    # The control plane, the migrations and every Ray pod run the same build; GPU workers
    # run it with vLLM added, at the same tag (Ray needs the same Ray, Python and project).
    assert len(ours) == 1, ours
    owners = {p.owner for p, c in all_containers(objs) if c["image"] in ours}
    assert {
        "Deployment/tuneplane-control-plane",
        "Job/tuneplane-migrations",
        "RayCluster/tuneplane-ray[head]",
    } <= owners
    [tag] = [image.rpartition(":")[2] for image in ours]
    for group in ray_cluster(objs)["spec"]["workerGroupSpecs"]:
        [container] = group["template"]["spec"]["containers"]
        owner = f"RayCluster/tuneplane-ray[{group['groupName']}]"
        if is_gpu(group):
            assert TUNEPLANE_GPU_IMAGE.search(container["image"]), owner
            assert container["image"].rpartition(":")[2] == tag, owner
        else:
            assert owner in owners, owner
    # The autoscaler sidecar defaults to the head's image; a second image would drift.
    assert "image" not in ray_cluster(objs)["spec"]["autoscalerOptions"]


@pytest.mark.parametrize("kustomization", ALL)
def test_control_plane_probes_hit_the_ops_endpoints(kustomization: str) -> None:
    container = control_plane(render(kustomization))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in ports or get["port"] in ports.values(), probe


@pytest.mark.parametrize("kustomization", ALL)
def test_long_running_containers_have_probes(kustomization: str) -> None:
    objs = render(kustomization)
    for obj in [*of_kind(objs, "Deployment"), *of_kind(objs, "StatefulSet")]:
        for container in obj["spec"]["template"]["spec"]["containers"]:
            assert "readinessProbe" in container and "livenessProbe" in container, name_of(obj)


@pytest.mark.parametrize("kustomization", ALL)
def test_every_container_has_bounded_resources(kustomization: str) -> None:
    objs = render(kustomization)
    containers = [(p.owner, c) for p, c in all_containers(objs)]
    autoscaler = ray_cluster(objs)["spec"]["autoscalerOptions"]
    containers.append(("autoscaler", autoscaler))
    for owner, container in containers:
        res = container["resources"]
        for key in ("cpu", "memory"):
            request, limit = quantity(res["requests"][key]), quantity(res["limits"][key])
            assert 0 < request <= limit, f"{owner} {key}"
        gpus = res["limits"].get("nvidia.com/gpu")
        # Extended resources cannot be overcommitted: a request must equal the limit.
        assert res["requests"].get("nvidia.com/gpu", gpus) == gpus, owner


@pytest.mark.parametrize("kustomization", ALL)
def test_pods_run_as_non_root_without_privileges(kustomization: str) -> None:
    objs = render(kustomization)
    for pod in pod_templates(objs):
        sc = pod.spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc.get("runAsUser", 1) != 0, pod.owner
        assert pod.spec.get("automountServiceAccountToken") is False, pod.owner
        for container in pod.containers():
            csc = container["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, pod.owner
            assert csc["capabilities"]["drop"] == ["ALL"], pod.owner
            assert not csc.get("privileged", False), pod.owner
    autoscaler = ray_cluster(objs)["spec"]["autoscalerOptions"]["securityContext"]
    assert autoscaler["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize("kustomization", ALL)
def test_control_plane_root_filesystem_is_read_only_with_a_writable_tmp(
    kustomization: str,
) -> None:
    objs = render(kustomization)
    for owner in ("Deployment/tuneplane-control-plane", "Job/tuneplane-migrations"):
        [pod] = [p for p in pod_templates(objs) if p.owner == owner]
        volumes = {v["name"]: v for v in pod.spec["volumes"]}
        for container in pod.containers():
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, owner
            [tmp] = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert "emptyDir" in volumes[tmp["name"]], owner
            # Everything the service writes must land on that volume.
            env = env_of(objs, container)
            assert env["TUNEPLANE_DATA_DIR"].startswith("/tmp/"), owner


# --- environment and configuration -----------------------------------------------------


@pytest.mark.parametrize("kustomization", ALL)
def test_env_names_are_settings_fields_or_known_readers(kustomization: str) -> None:
    objs = render(kustomization)
    fields = set(Settings.model_fields)
    names: list[tuple[str, str]] = []
    for cm in of_kind(objs, "ConfigMap"):
        names += [(name_of(cm), k) for k in cm["data"]]
    for pod, container in all_containers(objs):
        names += [(pod.owner, v["name"]) for v in container.get("env", [])]
    names += [
        ("autoscaler", v["name"]) for v in ray_cluster(objs)["spec"]["autoscalerOptions"]["env"]
    ]
    for owner, name in names:
        if name.startswith("TUNEPLANE_"):
            assert name.removeprefix("TUNEPLANE_").lower() in fields, f"{owner}: {name}"
        else:
            assert name in OTHER_ENV, f"{owner}: {name}"


@pytest.mark.parametrize("kustomization", ALL)
def test_references_resolve(kustomization: str) -> None:
    objs = render(kustomization)
    readme = (ROOT / "README.md").read_text()
    for pod, container in all_containers(objs):
        defined: list[str] = []
        for var in container.get("env", []):
            # $(VAR) expands only variables defined earlier in the same list.
            for ref in re.findall(r"\$\((\w+)\)", var.get("value", "")):
                assert ref in defined, f"{pod.owner}: {var['name']} uses $({ref})"
            defined.append(var["name"])
            secret = var.get("valueFrom", {}).get("secretKeyRef")
            if secret:
                assert secret["name"] in SECRETS, f"{pod.owner}: {secret['name']}"
                # The README's "Secrets" step must create every key the pods read.
                assert f"--from-literal={secret['key']}=" in readme, secret
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                find(objs, "ConfigMap", source["configMapRef"]["name"])
            else:
                assert source["secretRef"]["name"] in SECRETS
        for ref in re.findall(r"\$\((\w+)\)", " ".join(container.get("args", []))):
            assert ref in defined, f"{pod.owner}: args use $({ref})"
    accounts = {
        p.spec["serviceAccountName"] for p in pod_templates(objs) if "serviceAccountName" in p.spec
    }
    for account in accounts:
        find(objs, "ServiceAccount", account)


@pytest.mark.parametrize("kustomization", ALL)
def test_control_plane_settings_parse_and_point_at_the_cluster(
    kustomization: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objs = render(kustomization)
    env = env_of(objs, control_plane(objs))
    for name in ("TUNEPLANE_DATABASE_URL", "TUNEPLANE_REDIS_URL", "TUNEPLANE_STORAGE_URI"):
        assert isinstance(env[name], str), name
    assert env["TUNEPLANE_ADMIN_KEY"]["secretKeyRef"]["name"] == "tuneplane-secrets"
    for name, value in env.items():
        if name.startswith("TUNEPLANE_") and isinstance(value, str):
            monkeypatch.setenv(name, value)
    settings = Settings()  # the values must parse as the service will parse them
    assert settings.run_migrations_on_start is False
    assert settings.storage_uri.startswith("s3://")
    assert settings.database_url.startswith("postgresql+psycopg://")

    # Each URL names a Service in the render, on a port that Service exposes.
    for url, name in ((settings.database_url, "postgres"), (settings.redis_url, "redis")):
        parsed = urlparse(url)
        svc = find(objs, "Service", f"tuneplane-{name}")
        assert parsed.hostname == svc["metadata"]["name"]
        assert parsed.port in {p["port"] for p in svc["spec"]["ports"]}

    # The migrations Job migrates the very database the replicas use.
    job = find(objs, "Job", "tuneplane-migrations")["spec"]["template"]["spec"]
    [migrate] = job["containers"]
    assert migrate["command"] == ["tuneplane", "db", "upgrade"]
    assert env_of(objs, migrate)["TUNEPLANE_DATABASE_URL"] == env["TUNEPLANE_DATABASE_URL"]


# --- the Ray cluster -------------------------------------------------------------------


def test_ray_version_matches_the_pinned_ray() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    [pinned] = re.findall(r'"ray\[[^\]]*\]==([^"]+)"', pyproject)
    for kustomization in ALL:
        assert ray_cluster(render(kustomization))["spec"]["rayVersion"] == pinned


@pytest.mark.parametrize("kustomization", ALL)
def test_control_plane_reaches_the_ray_head_jobs_api(kustomization: str) -> None:
    objs = render(kustomization)
    cluster = ray_cluster(objs)
    address = urlparse(env_of(objs, control_plane(objs))["TUNEPLANE_RAY_ADDRESS"])
    # KubeRay names the head's Service <cluster>-head-svc.
    assert address.scheme == "http"
    assert address.hostname == f"{cluster['metadata']['name']}-head-svc"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert address.port == ports["dashboard"] == 8265
    assert ports["gcs-server"] == 6379 and ports["client"] == 10001


@pytest.mark.parametrize("kustomization", ALL)
def test_control_plane_reaches_serve_on_the_head(kustomization: str) -> None:
    objs = render(kustomization)
    env = env_of(objs, control_plane(objs))
    cluster = ray_cluster(objs)
    url = urlparse(env["TUNEPLANE_SERVE_URL"])
    assert url.hostname == f"{cluster['metadata']['name']}-head-svc"
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in head["ports"]}
    assert url.port == ports["serve"] == int(env["TUNEPLANE_SERVE_PORT"])
    # Serve's proxy must listen beyond localhost for another pod to reach it.
    assert env["TUNEPLANE_SERVE_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("kustomization", ALL)
def test_head_does_no_work_and_groups_autoscale(kustomization: str) -> None:
    cluster = ray_cluster(render(kustomization))["spec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    groups = cluster["workerGroupSpecs"]
    assert [g["groupName"] for g in groups if not is_gpu(g)] == ["cpu"]
    for group in groups:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        [container] = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        assert float(group["rayStartParams"]["num-cpus"]) <= quantity(limits["cpu"])
        if is_gpu(group):
            # GPU nodes exist only while a job needs them.
            assert group["minReplicas"] == 0 == group["replicas"]
            assert group["rayStartParams"]["num-gpus"] == limits["nvidia.com/gpu"]
            tolerations = group["template"]["spec"]["tolerations"]
            assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize("kustomization", ALL)
def test_model_replicas_fit_a_gpu_worker_where_they_ask_for_gpus(kustomization: str) -> None:
    # A replica asking for more GPUs than one GPU worker has would never be placed, and
    # one asking for any where there is no GPU group would wait forever.
    objs = render(kustomization)
    env = env_of(objs, control_plane(objs))
    assert env["TUNEPLANE_SERVE_ENGINE"] == "auto"
    replica_gpus = float(env["TUNEPLANE_SERVE_REPLICA_GPUS"])
    groups = [g for g in ray_cluster(objs)["spec"]["workerGroupSpecs"] if is_gpu(g)]
    if not groups:
        assert replica_gpus == 0
        return
    assert replica_gpus > 0, "GPU workers, but model replicas never ask for one"
    assert replica_gpus <= max(float(g["rayStartParams"]["num-gpus"]) for g in groups)


def is_gpu(group: Obj) -> bool:
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    return "nvidia.com/gpu" in limits


@pytest.mark.parametrize(
    ("kustomization", "gpu_groups"), [("overlays/dev", 0), ("overlays/prod", 1), ("base", 1)]
)
def test_gpu_groups_per_overlay(kustomization: str, gpu_groups: int) -> None:
    groups = ray_cluster(render(kustomization))["spec"]["workerGroupSpecs"]
    assert sum(is_gpu(g) for g in groups) == gpu_groups


def autoscaler_view(cluster: Obj) -> Obj:
    """The node types Ray's autoscaler derives from this RayCluster, by its own code."""
    from ray.autoscaler._private.kuberay.autoscaling_config import (
        _derive_autoscaling_config_from_ray_cr,
    )

    cluster = copy.deepcopy(cluster)
    cluster["metadata"].setdefault("namespace", "default")  # base has none; unused here
    config: Obj = _derive_autoscaling_config_from_ray_cr(cluster)
    return config


@pytest.mark.parametrize("kustomization", ALL)
def test_scheduler_capacity_is_what_the_autoscaler_can_reach(kustomization: str) -> None:
    # The control plane schedules against TUNEPLANE_CLUSTER_CPUS/GPUS because GPU nodes
    # start at zero; numbers that drift from the groups would queue jobs forever or overbook.
    objs = render(kustomization)
    env = env_of(objs, control_plane(objs))
    cluster = ray_cluster(objs)
    config = autoscaler_view(cluster)
    types = config["available_node_types"]
    cpus = sum(t["max_workers"] * t["resources"].get("CPU", 0) for t in types.values())
    gpus = sum(t["max_workers"] * t["resources"].get("GPU", 0) for t in types.values())
    assert float(env["TUNEPLANE_CLUSTER_CPUS"]) == cpus
    assert float(env["TUNEPLANE_CLUSTER_GPUS"]) == gpus
    # The head runs no training, GPU types scale from zero, and idle nodes go away.
    assert types["headgroup"]["resources"]["CPU"] == 0
    assert all(t["min_workers"] == 0 for t in types.values() if t["resources"].get("GPU"))
    idle_s = cluster["spec"]["autoscalerOptions"]["idleTimeoutSeconds"]
    assert config["idle_timeout_minutes"] == idle_s / 60


@pytest.mark.parametrize("kustomization", ALL)
def test_every_ray_process_and_the_control_plane_share_the_auth_token(
    kustomization: str,
) -> None:
    objs = render(kustomization)
    cp = env_of(objs, control_plane(objs))
    token = cp["RAY_AUTH_TOKEN"]["secretKeyRef"]
    assert cp["RAY_AUTH_MODE"] == "token"
    ray_envs = [env_of(objs, c) for p, c in all_containers(objs) if "RayCluster" in p.owner]
    ray_envs.append(env_of(objs, ray_cluster(objs)["spec"]["autoscalerOptions"]))
    for env in ray_envs:
        assert env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_AUTH_TOKEN"]["secretKeyRef"] == token


@pytest.mark.parametrize("kustomization", ALL)
def test_ray_pods_can_write_the_models_dir_jobs_are_given(kustomization: str) -> None:
    # The scheduler passes its own models dir to the Ray job (--models-dir) and
    # workers/tiny.py falls back to TUNEPLANE_MODELS_DIR: both must be writable on Ray pods.
    objs = render(kustomization)
    models_dir = env_of(objs, control_plane(objs))["TUNEPLANE_MODELS_DIR"]
    for pod in pod_templates(objs):
        if "RayCluster" not in pod.owner:
            continue
        [container] = pod.spec["containers"]
        assert env_of(objs, container)["TUNEPLANE_MODELS_DIR"] == models_dir, pod.owner
        volumes = {v["name"]: v for v in pod.spec["volumes"]}
        mounts = [
            m
            for m in container["volumeMounts"]
            if models_dir.startswith(m["mountPath"].rstrip("/") + "/")
            and "emptyDir" in volumes[m["name"]]
        ]
        assert mounts, f"{pod.owner}: {models_dir} is on no writable volume"


@pytest.mark.parametrize("kustomization", ALL)
def test_ray_pods_have_shared_memory_for_the_object_store(kustomization: str) -> None:
    for pod in pod_templates(render(kustomization)):
        if "RayCluster" not in pod.owner:
            continue
        volumes = {v["name"]: v for v in pod.spec["volumes"]}
        [shm] = [
            m for m in pod.spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"
        ]
        assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory", pod.owner


# --- network policy --------------------------------------------------------------------


def policy_for(objs: tuple[Obj, ...], pod: PodTemplate) -> list[Obj]:
    return [
        np
        for np in of_kind(objs, "NetworkPolicy")
        if selects(np["spec"]["podSelector"]["matchLabels"], pod.labels)
    ]


@pytest.mark.parametrize("kustomization", ALL)
def test_network_policy_selectors_match_real_pods(kustomization: str) -> None:
    objs = render(kustomization)
    pods = list(pod_templates(objs))
    for np in of_kind(objs, "NetworkPolicy"):
        assert np["spec"]["policyTypes"] == ["Ingress"], name_of(np)
        targets = [p for p in pods if selects(np["spec"]["podSelector"]["matchLabels"], p.labels)]
        assert targets, f"{name_of(np)} selects no pod"
        for rule in np["spec"]["ingress"]:
            for peer in rule["from"]:
                selector = peer["podSelector"]["matchLabels"]
                assert any(selects(selector, p.labels) for p in pods), f"{name_of(np)}: {selector}"
            # Every port a rule opens is one the selected pods listen on.
            listening = {
                port["containerPort"]
                for p in targets
                for c in p.containers()
                for port in c.get("ports", [])
            }
            for port in rule.get("ports", []):
                assert port["port"] in listening, f"{name_of(np)}: {port['port']}"


def allowed(objs: tuple[Obj, ...], source: PodTemplate, target: PodTemplate) -> set[int] | None:
    """Ports `source` may open on `target`: None for all, an empty set for none."""
    policies = policy_for(objs, target)
    if not policies:
        return None
    ports: set[int] = set()
    for np in policies:
        for rule in np["spec"]["ingress"]:
            if any(
                selects(peer["podSelector"]["matchLabels"], source.labels) for peer in rule["from"]
            ):
                if "ports" not in rule:
                    return None
                ports |= {p["port"] for p in rule["ports"]}
    return ports


@pytest.mark.parametrize("kustomization", ALL)
def test_only_the_control_plane_reaches_the_ray_head(kustomization: str) -> None:
    objs = render(kustomization)
    pods = {p.owner: p for p in pod_templates(objs)}
    head = pods["RayCluster/tuneplane-ray[head]"]
    ray = [p for p in pods.values() if "RayCluster" in p.owner]
    head_ports = {"gcs-server", "dashboard", "client", "serve"}
    port_numbers = {
        port["containerPort"]
        for port in head.spec["containers"][0]["ports"]
        if port["name"] in head_ports
    }
    assert allowed(objs, pods["Deployment/tuneplane-control-plane"], head) == port_numbers
    for other in pods.values():
        if other in ray or other.owner == "Deployment/tuneplane-control-plane":
            continue
        assert allowed(objs, other, head) == set(), other.owner
    # Ray nodes talk to each other on many ports (object manager, workers): all open.
    for source in ray:
        for target in ray:
            assert allowed(objs, source, target) is None, (source.owner, target.owner)
    # Nothing but Ray reaches the workers; only the API and migrations reach the database.
    for other in pods.values():
        if other not in ray:
            for worker in ray[1:]:
                assert allowed(objs, other, worker) == set(), other.owner
    postgres = pods["StatefulSet/tuneplane-postgres"]
    reach_db = {o for o, p in pods.items() if allowed(objs, p, postgres) != set()}
    assert reach_db == {"Deployment/tuneplane-control-plane", "Job/tuneplane-migrations"}
