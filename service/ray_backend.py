"""The only module that talks to Ray. The service depends on the `ComputeBackend` protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

RayJobState = Literal["PENDING", "RUNNING", "STOPPED", "SUCCEEDED", "FAILED", "MISSING"]


@dataclass(frozen=True)
class Capacity:
    cpus: float
    gpus: float


class ComputeBackend(Protocol):
    """What the control plane needs from a compute cluster."""

    def submit(self, job_id: str, entrypoint: str, env: dict[str, str]) -> None:
        """Start `entrypoint` as the cluster job `job_id`; idempotent on job_id."""
        ...

    def stop(self, job_id: str) -> None:
        """Ask the job to stop; returns before it has."""
        ...

    def state(self, job_id: str) -> RayJobState: ...

    def free_capacity(self) -> Capacity: ...
