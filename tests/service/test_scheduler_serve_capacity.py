"""The scheduler leaves the cores Serve's replicas hold to them: a job that needs them waits."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ray import serve

from service.config import Settings
from service.queue import FairQueue
from service.ray_backend import Capacity, RayJobsBackend, ServeAppStatus, replica_holdings
from service.scheduling.scheduler import Dispatcher, Scheduler
from tests.factories import create_job_ok, make_tenant
from tests.fixtures.redis_server import RedisServer
from tests.service.scheduling.conftest import FixedCluster

if TYPE_CHECKING:
    from tests.fixtures.ray_cluster import RayCluster

SERVE_APP = "held-cores"


@serve.deployment()
def idle(request: Any) -> str:
    """A replica that only holds its cores (the integration test's Serve application)."""
    return "ok"


# Serve imports this module on the cluster: it must import nothing that starts anything
# (the Ray fixtures are imported in the test).
idle_app = idle.bind()


@pytest.fixture
def settings(settings: Settings, redis_server: RedisServer) -> Settings:
    return settings.model_copy(update={"redis_url": redis_server.url, "reserved_cpus": 0.0})


@pytest.fixture
def queue(redis_server: RedisServer) -> Iterator[FairQueue]:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushdb()
    yield FairQueue(client)
    client.flushdb()
    client.close()


@dataclass
class ServeSays:
    """Serve's status as a test sets it; `down` makes it unreadable."""

    apps: dict[str, ServeAppStatus] = field(default_factory=dict)
    down: bool = False

    def deploy_serve(self, config: dict[str, Any]) -> None:
        raise NotImplementedError

    def serve_status(self) -> dict[str, ServeAppStatus]:
        if self.down:
            raise ConnectionError("dashboard away")
        return self.apps


def _app(cpus: float, gpus: float = 0.0) -> ServeAppStatus:
    return ServeAppStatus("RUNNING", "", 1, 1, Capacity(cpus, gpus))


def _scheduler(
    app: FastAPI, queue: FairQueue, capacity: Any, serving: Any, cluster: FixedCluster
) -> Scheduler:
    """`capacity` and `serving` as given; starts are only recorded, on `cluster`."""
    state = app.state
    dispatcher = Dispatcher(state.engine, cluster, queue, state.store, state.settings)
    return Scheduler(state.engine, queue, capacity, dispatcher, state.settings, "only", serving)


def _two_cpu_job(client: TestClient) -> str:
    tenant = make_tenant(client)
    return str(create_job_ok(client, tenant, resources={"cpus_per_worker": 2})["id"])


def test_a_deployment_holds_its_replicas_the_live_ones_and_those_serve_is_adding() -> None:
    one_cpu = {"CPU": 1.0, "memory": 0}
    assert replica_holdings(
        {"target_num_replicas": 0, "replicas": [], "required_resources": one_cpu}
    ) == Capacity(0, 0)
    # Scaling up: 3 wanted, 1 live; the 2 coming count too (Ray places them when it can).
    up = {
        "target_num_replicas": 3,
        "replicas": [{"state": "RUNNING"}],
        "required_resources": {"CPU": 2, "GPU": 0.5},
    }
    assert replica_holdings(up) == Capacity(6, 1.5)
    # Scaling down: the stopping replica holds its cores until it is gone.
    down = {
        "target_num_replicas": 1,
        "replicas": [{"state": "RUNNING"}, {"state": "STOPPING"}],
        "required_resources": one_cpu,
    }
    assert replica_holdings(down) == Capacity(2, 0)
    # A deployment whose config Serve has not built yet asks for nothing.
    assert replica_holdings({}) == Capacity(0, 0)


def test_a_job_waits_for_the_cores_a_deployment_holds(
    client: TestClient, app: FastAPI, queue: FairQueue
) -> None:
    cluster = FixedCluster(capacity=Capacity(4, 0))
    serving = ServeSays({"a": _app(1), "b": _app(2)})
    sched = _scheduler(app, queue, cluster, serving, cluster)
    job = _two_cpu_job(client)
    assert sched.serve_held() == Capacity(3, 0)
    assert sched.tick() == [], "3 of the 4 CPUs serve: no room for 2"
    # Serve's status unreadable: the last figure stands rather than none.
    serving.down = True
    assert sched.tick() == []
    serving.down = False
    serving.apps.pop("b")  # scaled to zero
    assert sched.tick() == [job]
    assert cluster.submitted == [job]


@pytest.mark.long  # starts a Serve of its own on the shared cluster: make test-long
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_on_ray_a_job_waits_while_a_serve_replica_holds_its_cores(
    client: TestClient, app: FastAPI, queue: FairQueue, ray_cluster: RayCluster, serve_port: int
) -> None:
    """Real Ray and Serve: a replica holding 1 CPU of a cluster the scheduler counts as 2
    (the session cluster's other CPUs may be held by other tests' work, so the replica asks
    for little) keeps a 2-CPU job queued; once Serve lets it go, the job starts."""
    from tests.fixtures.ray_cluster import shut_down_serve
    from tests.fixtures.stack import wait_for

    backend = RayJobsBackend(ray_cluster.dashboard_url)
    # From a Serve of its own: one an earlier module left up (other HTTP options, other
    # replicas on the shared cluster) kept this application from ever running.
    shut_down_serve(ray_cluster)

    def running() -> bool:
        status = backend.serve_status().get(SERVE_APP)
        return status is not None and status.status == "RUNNING"

    backend.deploy_serve(
        {
            "http_options": {"host": "127.0.0.1", "port": serve_port},
            "applications": [
                {
                    "name": SERVE_APP,
                    "route_prefix": f"/{SERVE_APP}",
                    "import_path": f"{__name__}:idle_app",
                    "deployments": [
                        {"name": "idle", "num_replicas": 1, "ray_actor_options": {"num_cpus": 1}}
                    ],
                }
            ],
        }
    )
    try:
        wait_for(running, 120, "the Serve application to run")
        cluster = FixedCluster(Capacity(2, 0))
        # Capacity the test sets, what Serve holds from the live cluster.
        sched = _scheduler(app, queue, cluster, backend, cluster)
        job = _two_cpu_job(client)
        assert sched.serve_held() == Capacity(1, 0)
        assert sched.tick() == []
        assert cluster.submitted == []
    finally:
        shut_down_serve(ray_cluster)
    wait_for(lambda: not backend.serve_status(), 60, "Serve to let its replica go")
    assert sched.tick() == [job]
