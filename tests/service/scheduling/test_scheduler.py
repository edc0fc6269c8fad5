from __future__ import annotations

import json
import threading
from collections import Counter

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.config import Settings
from service.jobs.queueing import enqueue
from service.jobs.state import transition
from service.models import Job
from service.models.status import JobStatus
from service.queue import FairQueue, QueuedJob
from service.ray_backend import Capacity
from service.scheduling.scheduler import ClusterView, DeficitRoundRobin, Dispatcher, Scheduler
from tests.factories import TenantHandle, create_job_ok, make_tenant, upload_ok
from tests.service.scheduling.conftest import FixedCluster


def _scheduler(app: FastAPI, queue: FairQueue, cluster: FixedCluster, token: str) -> Scheduler:
    state = app.state
    settings: Settings = state.settings
    dispatcher = Dispatcher(state.engine, cluster, queue, state.store, settings)
    return Scheduler(state.engine, queue, cluster, dispatcher, settings, token)


def _submit_many(client: TestClient, tenant: TenantHandle, n: int) -> list[str]:
    file_id = upload_ok(client, tenant)
    # One CPU each, as these tests count starts by CPUs (left "auto", a job on an idle
    # cluster takes all of it: test_auto_cpus_...).
    one_cpu = {"cpus_per_worker": 1}
    return [
        create_job_ok(client, tenant, training_file=file_id, resources=one_cpu)["id"]
        for _ in range(n)
    ]


def _finish(app: FastAPI, job_id: str) -> None:
    with Session(app.state.engine) as s:
        assert transition(s, job_id, JobStatus.SUCCEEDED, expected=(JobStatus.RUNNING,))
        s.commit()


def _owner(app: FastAPI, job_id: str) -> str:
    with Session(app.state.engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.tenant_id


def test_drr_gives_starts_in_proportion_to_weight() -> None:
    drr = DeficitRoundRobin()
    heads = {t: QueuedJob(f"{t}-job", t, 1, 0) for t in ("a", "b", "c")}
    picks = [drr.pick(heads, {"a": 3, "b": 2, "c": 1}, lambda j: True) for _ in range(60)]
    counts = Counter(p.tenant_id for p in picks if p is not None)
    assert counts == {"a": 30, "b": 20, "c": 10}
    # An ineligible tenant is skipped without stopping the others.
    picks = [drr.pick(heads, {}, lambda j: j.tenant_id != "a") for _ in range(10)]
    assert {p.tenant_id for p in picks if p is not None} == {"b", "c"}


def test_auto_cpus_take_what_is_free_and_the_reserve_only_on_an_idle_cluster() -> None:
    one = QueuedJob("j", "t", 1, 0, auto_cpus=True)
    two = QueuedJob("k", "t", 2, 0, auto_cpus=True)
    idle = ClusterView(free=Capacity(7, 0), reserved_cpus=1)
    assert idle.cpu_share(one, cap=32) == 8  # the whole machine
    assert idle.cpu_share(two, cap=32) == 4  # split over its workers
    assert idle.cpu_share(one, cap=4) == 4
    busy = ClusterView(free=Capacity(5, 0), reserved_cpus=1)
    busy.hold(QueuedJob("other", "u", 2, 0))
    # Beside a running job: what is left, the reserve kept; never below one a worker.
    assert busy.cpu_share(one, cap=32) == 3
    assert busy.cpu_share(two, cap=32) == 1
    busy.hold(QueuedJob("more", "u", 3, 0))
    assert busy.cpu_share(two, cap=32) == 1


def test_an_auto_cpu_job_takes_the_idle_cluster_and_starts_again_when_requeued(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    cluster.capacity = Capacity(cpus=2, gpus=0)
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    # One of the two CPUs held back, as by default: on the idle cluster the job gets both.
    settings = app.state.settings.model_copy(update={"reserved_cpus": 1.0})
    dispatcher = Dispatcher(app.state.engine, cluster, queue, app.state.store, settings)
    sched = Scheduler(app.state.engine, queue, cluster, dispatcher, settings, "only")
    assert sched.tick() == [job_id]
    job = client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=t.headers).json()
    assert job["resources"]["cpus_per_worker"] == 2.0 and job["resources"]["auto_cpus"]
    # Lost and queued again (a crash, a lost Ray job): it needs one CPU a worker to start,
    # not the two it got last time, so it is not stuck behind a cluster it never fits.
    with Session(app.state.engine) as s:
        assert transition(s, job_id, JobStatus.QUEUED, expected=(JobStatus.RUNNING,))
        s.commit()
        requeued = s.get(Job, job_id)
        assert requeued is not None
        enqueue(queue, requeued)
    assert queue.heads()[t.id].cpus == 1.0
    assert sched.tick() == [job_id]


def test_a_small_tenant_is_not_starved_by_a_big_backlog(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    a = make_tenant(client, "big")
    b = make_tenant(client, "small")
    a_jobs = _submit_many(client, a, 20)
    b_jobs = _submit_many(client, b, 2)
    sched = _scheduler(app, queue, cluster, "only")
    order: list[str] = []
    for _ in range(6):
        started = sched.tick()
        assert len(started) == 1, "room for exactly one job at a time"
        assert sched.tick() == [], "nothing else fits while it runs"
        order.append(started[0])
        _finish(app, started[0])
    owners = [_owner(app, j) for j in order]
    # B enqueued after A's 20: its first job still starts within the next two starts.
    assert b.id in owners[:2]
    assert set(b_jobs) <= set(order)
    # Within a tenant: submission order (same priority).
    assert [j for j in order if j in a_jobs] == a_jobs[: owners.count(a.id)]


def test_weights_two_to_one_give_a_two_to_one_start_ratio(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    heavy = make_tenant(client, "heavy", weight=2)
    light = make_tenant(client, "light", weight=1)
    _submit_many(client, heavy, 14)
    _submit_many(client, light, 14)
    sched = _scheduler(app, queue, cluster, "only")
    owners: list[str] = []
    for _ in range(12):
        (job_id,) = sched.tick()
        owners.append(_owner(app, job_id))
        _finish(app, job_id)
    assert Counter(owners) == {heavy.id: 8, light.id: 4}


def test_priority_then_age_within_a_tenant(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    file_id = upload_ok(client, t)
    low = create_job_ok(client, t, training_file=file_id, priority=0)["id"]
    high = create_job_ok(client, t, training_file=file_id, priority=5)["id"]
    sched = _scheduler(app, queue, cluster, "only")
    assert sched.tick() == [high]
    _finish(app, high)
    assert sched.tick() == [low]


def test_quotas_and_capacity_gate_starts(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    cluster.capacity = Capacity(cpus=8, gpus=0)
    capped = make_tenant(client, quotas={"max_running_jobs": 1})
    free = make_tenant(client)
    _submit_many(client, capped, 3)
    _submit_many(client, free, 2)
    big = create_job_ok(client, free, resources={"num_workers": 4, "cpus_per_worker": 4})["id"]
    sched = _scheduler(app, queue, cluster, "only")
    started = sched.tick()
    owners = Counter(_owner(app, j) for j in started)
    assert owners[capped.id] == 1
    assert owners[free.id] == 2
    assert big not in started  # 16 CPUs never fit in 8
    assert queue.depth(capped.id) == 2


def test_cancelled_queued_job_is_never_started(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    job = create_job_ok(client, t)["id"]
    client.post(f"/v1/fine_tuning/jobs/{job}/cancel", headers=t.headers)
    assert queue.depth(t.id) == 0
    assert _scheduler(app, queue, cluster, "only").tick() == []
    assert cluster.submitted == []


class SplitBrainQueue(FairQueue):
    """Both schedulers believe they lead, as after a lock expiry during a long pause:
    the database compare-and-set alone must keep starts exactly-once."""

    def acquire_leader(self, token: str, ttl_ms: int) -> bool:
        return True


def test_two_schedulers_at_once_never_start_a_job_twice(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    cluster.capacity = Capacity(cpus=1000, gpus=0)
    tenants = [make_tenant(client, quotas={"max_running_jobs": 100}) for _ in range(3)]
    jobs = [j for t in tenants for j in _submit_many(client, t, 10)]
    schedulers = [
        _scheduler(app, SplitBrainQueue(queue.r), cluster, token) for token in ("one", "two")
    ]
    barrier = threading.Barrier(2)

    def run(s: Scheduler) -> None:
        barrier.wait()
        for _ in range(5):
            s.tick()

    threads = [threading.Thread(target=run, args=(s,)) for s in schedulers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(cluster.submitted) == sorted(jobs)  # each exactly once
    with Session(app.state.engine) as s:
        for job_id in jobs:
            job = s.get(Job, job_id)
            assert job is not None and job.status == "running" and job.attempts == 1


def test_one_leader_at_a_time_and_takeover(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    t = make_tenant(client)
    first, second = _submit_many(client, t, 2)
    a = _scheduler(app, queue, cluster, "a")
    b = _scheduler(app, queue, cluster, "b")
    assert a.tick() == [first]
    _finish(app, first)
    assert b.tick() == [] and not b.is_leader
    a.resign()  # the leader goes away (or its lock expires)
    assert b.tick() == [second] and b.is_leader


def test_a_search_gets_as_many_concurrent_trials_as_fit(
    client: TestClient, app: FastAPI, queue: FairQueue, cluster: FixedCluster
) -> None:
    cluster.capacity = Capacity(cpus=5, gpus=0)
    t = make_tenant(client)
    file_id = upload_ok(client, t)
    search = {
        "space": {"learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        "num_trials": 8,
    }
    job = create_job_ok(
        client,
        t,
        training_file=file_id,
        validation_file=file_id,
        search=search,
        resources={"num_workers": 2},
    )
    small = create_job_ok(client, t, training_file=file_id)["id"]
    started = _scheduler(app, queue, cluster, "only").tick()
    # Two trials of 2 CPUs fit in 5; the remaining CPU takes the 1-CPU job.
    assert started == [job["id"], small]
    got = client.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=t.headers).json()
    assert got["search"]["max_concurrent_trials"] == 2
    with Session(app.state.engine) as s:
        stored = s.get(Job, job["id"])
        assert stored is not None and stored.spec is not None
        assert stored.spec["search"]["max_concurrent_trials"] == 2
    spec_file = app.state.store.open_read(f"{t.id}/jobs/{job['id']}/spec.json").read()
    assert json.loads(spec_file)["search"]["max_concurrent_trials"] == 2
