"""The only module that talks to Ray. The service depends on the `ComputeBackend` protocol.

Ray is reached only through its Jobs API (the dashboard's HTTP address), never by joining
the cluster: the control plane can then run anywhere the NetworkPolicy lets it reach the
head's dashboard port, and tenants never reach Ray at all.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

log = logging.getLogger(__name__)
_RAY_ADDRESS_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")

RayJobState = Literal["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED", "MISSING"]
TERMINAL_RAY_STATES = frozenset({"STOPPED", "SUCCEEDED", "FAILED", "MISSING"})


@dataclass(frozen=True)
class Capacity:
    cpus: float
    gpus: float

    def __add__(self, other: Capacity) -> Capacity:
        return Capacity(self.cpus + other.cpus, self.gpus + other.gpus)

    def __sub__(self, other: Capacity) -> Capacity:
        return Capacity(self.cpus - other.cpus, self.gpus - other.gpus)

    def fits(self, cpus: float, gpus: float) -> bool:
        # A little slack: float sums of fractional CPUs must not refuse an exact fit.
        return cpus <= self.cpus + 1e-9 and gpus <= self.gpus + 1e-9


class CapacitySource(Protocol):
    def total_capacity(self) -> Capacity:
        """What the cluster can hold in all (the scheduler subtracts what its jobs use)."""
        ...


class ComputeBackend(CapacitySource, Protocol):
    """What the control plane needs from a compute cluster."""

    def submit(self, submission_id: str, entrypoint: str, env: dict[str, str]) -> None:
        """Start `entrypoint` as the cluster job `submission_id`; idempotent on the id."""
        ...

    def stop(self, submission_id: str) -> None:
        """Ask the job to stop; returns before it has."""
        ...

    def state(self, submission_id: str) -> RayJobState: ...

    def message(self, submission_id: str) -> str:
        """Ray's own words on how the job ended ('' when it has none)."""
        ...

    def ping(self) -> bool: ...


@dataclass(frozen=True)
class ServeAppStatus:
    """One Serve application as Serve reports it."""

    status: str  # NOT_STARTED, DEPLOYING, RUNNING, DEPLOY_FAILED, UNHEALTHY, DELETING
    message: str
    running_replicas: int
    target_replicas: int
    # What its replicas hold, or will once Serve has placed them (`replica_holdings`).
    held: Capacity = Capacity(0.0, 0.0)


class ServeBackend(Protocol):
    """What the serving manager needs from Ray Serve."""

    def deploy_serve(self, config: dict[str, Any]) -> None:
        """Make Serve run exactly the applications in `config` (declarative)."""
        ...

    def serve_status(self) -> dict[str, ServeAppStatus]: ...


class RayJobsBackend:
    """ComputeBackend over the Ray Jobs API (`JobSubmissionClient`)."""

    def __init__(self, address: str, fixed_capacity: Capacity | None = None) -> None:
        from ray.job_submission import JobSubmissionClient

        self.address = address.rstrip("/")
        # Ray lets RAY_ADDRESS / RAY_API_SERVER_ADDRESS in the environment override the
        # address a client is given; TUNEPLANE_RAY_ADDRESS must win, or a control plane
        # running where RAY_ADDRESS is set would submit to another cluster.
        hidden = {k: os.environ.pop(k) for k in _RAY_ADDRESS_VARS if k in os.environ}
        try:
            self.client = JobSubmissionClient(self.address)
        finally:
            os.environ.update(hidden)
        self.fixed_capacity = fixed_capacity
        # One pooled client for the dashboard's REST calls, which the loops make every
        # second or so: `httpx.get` builds a client, and with it a TLS context (loading the
        # CA bundle), per call, which took ~3% of a core and the GIL from the API.
        self.http = httpx.Client(timeout=10)

    def _headers(self) -> dict[str, str]:
        from ray._private.authentication.http_token_authentication import (
            get_auth_headers_if_auth_enabled,
        )

        return dict(get_auth_headers_if_auth_enabled({}))

    def submit(self, submission_id: str, entrypoint: str, env: dict[str, str]) -> None:
        try:
            self.client.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id,
                runtime_env={"env_vars": env},
                # The driver only coordinates; the training workers reserve the resources.
                entrypoint_num_cpus=0,
            )
        except RuntimeError as exc:
            # A retried dispatch of the same submission: the first one went through.
            if "already exists" not in str(exc):
                raise

    def stop(self, submission_id: str) -> None:
        try:
            self.client.stop_job(submission_id)
        except RuntimeError as exc:
            if "does not exist" not in str(exc):
                raise

    def state(self, submission_id: str) -> RayJobState:
        try:
            status = self.client.get_job_status(submission_id)
        except RuntimeError as exc:
            if "does not exist" in str(exc):
                return "MISSING"
            raise
        return str(status.value if hasattr(status, "value") else status)  # type: ignore[return-value]

    def message(self, submission_id: str) -> str:
        try:
            info = self.client.get_job_info(submission_id)
        except RuntimeError:
            return ""
        return str(info.message or "")

    def ping(self) -> bool:
        try:
            r = self.http.get(f"{self.address}/api/version", headers=self._headers(), timeout=3)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def total_capacity(self) -> Capacity:
        if self.fixed_capacity is not None:
            return self.fixed_capacity
        r = self.http.get(
            f"{self.address}/api/v0/nodes",
            params={"detail": "1", "limit": "10000"},
            headers=self._headers(),
            timeout=10,
        )
        r.raise_for_status()
        nodes: list[dict[str, Any]] = r.json()["data"]["result"]["result"]
        cpus = gpus = 0.0
        for node in nodes:
            if node.get("state") != "ALIVE":
                continue
            total = node.get("resources_total") or {}
            cpus += float(total.get("CPU", 0))
            gpus += float(total.get("GPU", 0))
        return Capacity(cpus, gpus)

    # Serve: the dashboard's declarative REST API, the one `serve deploy` uses.

    def deploy_serve(self, config: dict[str, Any]) -> None:
        r = self.http.put(
            f"{self.address}/api/serve/applications/",
            json=config,
            headers=self._headers(),
            timeout=30,
        )
        if r.status_code >= 400:
            raise RuntimeError(f"Serve refused the config ({r.status_code}): {r.text[:2000]}")

    def serve_status(self) -> dict[str, ServeAppStatus]:
        r = self.http.get(f"{self.address}/api/serve/applications/", headers=self._headers())
        r.raise_for_status()
        out: dict[str, ServeAppStatus] = {}
        for name, app in (r.json().get("applications") or {}).items():
            running = target = 0
            held = Capacity(0.0, 0.0)
            for deployment in (app.get("deployments") or {}).values():
                target += int(deployment.get("target_num_replicas") or 0)
                running += sum(
                    1 for rep in deployment.get("replicas") or [] if rep.get("state") == "RUNNING"
                )
                held += replica_holdings(deployment)
            out[name] = ServeAppStatus(
                str(app.get("status", "")), str(app.get("message") or ""), running, target, held
            )
        return out


def replica_holdings(deployment: dict[str, Any]) -> Capacity:
    """The CPUs and GPUs a Serve deployment's replicas hold (one deployment of Serve's
    `/api/serve/applications/` answer). Every live replica counts, a starting or stopping
    one too, and so does each replica Serve is about to add to reach its target: Ray
    places it as soon as cores are free, so a job must not be started onto them. Serve's
    controller and proxies reserve no CPU and are not counted."""
    need = deployment.get("required_resources") or {}
    replicas = max(
        int(deployment.get("target_num_replicas") or 0), len(deployment.get("replicas") or [])
    )
    return Capacity(replicas * float(need.get("CPU", 0)), replicas * float(need.get("GPU", 0)))


def submission_id(job_id: str, attempt: int) -> str:
    """Ray submission ids are single-use, so a retried job gets a new one per attempt."""
    return job_id if attempt <= 1 else f"{job_id}-attempt{attempt}"
