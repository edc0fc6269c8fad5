from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
import redis
from fastapi import FastAPI

from service.config import Settings
from service.queue import FairQueue
from service.ray_backend import Capacity, RayJobState
from service.scheduling.reconciler import Reconciler
from service.scheduling.scheduler import Dispatcher, Scheduler
from tests.fixtures.redis_server import RedisServer


@pytest.fixture
def settings(settings: Settings, redis_server: RedisServer) -> Settings:
    return settings.model_copy(update={"redis_url": redis_server.url, "reserved_cpus": 0.0})


@pytest.fixture
def queue(redis_client: redis.Redis) -> FairQueue:
    return FairQueue(redis_client)


@dataclass
class FixedCluster:
    """A compute backend for scheduler tests: capacity the test controls, submissions
    recorded. The scheduling logic, Redis and the database under it are all real; what a
    started job then does on Ray is not what these tests are about."""

    capacity: Capacity = field(default_factory=lambda: Capacity(1, 0))
    submitted: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # What `state()` answers for a submission id, where a test sets it.
    states: dict[str, RayJobState] = field(default_factory=dict)
    stopped: list[str] = field(default_factory=list)

    def submit(self, submission_id: str, entrypoint: str, env: dict[str, str]) -> None:
        with self.lock:
            self.submitted.append(submission_id)

    def stop(self, submission_id: str) -> None:
        self.stopped.append(submission_id)

    def state(self, submission_id: str) -> RayJobState:
        if submission_id in self.states:
            return self.states[submission_id]
        return "RUNNING" if submission_id in self.submitted else "MISSING"

    def message(self, submission_id: str) -> str:
        return ""

    def ping(self) -> bool:
        return True

    def total_capacity(self) -> Capacity:
        return self.capacity


@pytest.fixture
def cluster() -> FixedCluster:
    return FixedCluster()


def loop_parts(
    app: FastAPI, queue: FairQueue, cluster: FixedCluster, **overrides: object
) -> tuple[Scheduler, Reconciler]:
    """The scheduler and reconciler of `app` over `cluster`: quick (no dispatch grace) and
    retrying a lost job once unless `overrides` say otherwise. The app's cancels and pauses
    stop runs on `cluster` too."""
    settings: Settings = app.state.settings.model_copy(
        update={"dispatch_grace_s": 0.0, "max_attempts": 2, **overrides}
    )
    dispatcher = Dispatcher(app.state.engine, cluster, queue, app.state.store, settings)
    sched = Scheduler(app.state.engine, queue, cluster, dispatcher, settings, "only")
    return sched, Reconciler(app.state.engine, queue, cluster, dispatcher, settings)
