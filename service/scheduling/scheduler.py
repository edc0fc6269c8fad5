"""The scheduler: weighted fair share across tenants, then priority, then age.

Only the leader schedules (a Redis lock with a TTL; any replica can take over). A start
is exactly-once: the database compare-and-set `queued -> running` decides who starts a
job, and the Ray submission id is the job id (per attempt), which Ray never runs twice.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Engine

from service.config import Quotas, Settings
from service.db import new_session
from service.faults import crash_point
from service.jobs.control import withdraw_pause
from service.jobs.lifecycle import JobLifecycle
from service.jobs.queueing import cost_of, enqueue
from service.models.status import JobStatus
from service.queue import FairQueue, QueuedJob
from service.ray_backend import (
    Capacity,
    CapacitySource,
    ComputeBackend,
    ServeAppStatus,
    ServeBackend,
    submission_id,
)
from service.secrets.service import write_job_secrets
from service.storage import ArtifactStore
from service.tenants.repository import TenantRepository
from service.tenants.service import effective_quotas
from workers.spec import JobSpec

log = logging.getLogger(__name__)
# Consecutive refused submissions (Ray up but refusing) before a job fails.
MAX_SUBMIT_FAILURES = 8
# How long a cancelled job's driver has between Ray's SIGINT and its SIGKILL (Ray's own
# default is 3 s).
STOP_GRACE_S = 20
TENANT_CACHE_S = 1.0


def serve_held(apps: Iterable[ServeAppStatus]) -> Capacity:
    """What Serve's applications hold in all; none of it is free for a job."""
    return sum((app.held for app in apps), Capacity(0.0, 0.0))


class DeficitRoundRobin:
    """Deficit round robin with unit job cost: over time each tenant with queued work gets
    starts in proportion to its weight, and a tenant with one job waits behind at most one
    round of the others, however many jobs they queued."""

    def __init__(self) -> None:
        self.deficit: dict[str, float] = {}
        self.current: str | None = None

    def pick(
        self,
        heads: dict[str, QueuedJob],
        weights: dict[str, float],
        eligible: Callable[[QueuedJob], bool],
    ) -> QueuedJob | None:
        for gone in set(self.deficit) - set(heads):
            del self.deficit[gone]
        if not heads:
            return None
        cur = self.current
        if cur in heads and self.deficit.get(cur, 0.0) >= 1 and eligible(heads[cur]):
            self.deficit[cur] -= 1
            return heads[cur]
        order = sorted(heads)
        # Quanta scaled so the lightest active tenant gets 1: one lap always yields a pick.
        lightest = min(max(weights.get(t, 1.0), 1e-6) for t in order)
        start = 0 if cur is None else next((i for i, t in enumerate(order) if t > cur), 0)
        for k in range(len(order)):
            tenant = order[(start + k) % len(order)]
            quantum = max(weights.get(tenant, 1.0), 1e-6) / lightest
            job = heads[tenant]
            # Credit is granted only on a turn that is used, so a tenant blocked by its
            # quota or by a full cluster banks nothing to burst with later.
            if eligible(job):
                self.deficit[tenant] = self.deficit.get(tenant, 0.0) + quantum - 1
                self.current = tenant
                return job
        return None


@dataclass
class Usage:
    """What a tenant's running jobs hold."""

    running: int = 0
    cpus: float = 0.0
    gpus: float = 0.0


@dataclass
class ClusterView:
    free: Capacity
    usage: dict[str, Usage] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    quotas: dict[str, Quotas] = field(default_factory=dict)
    # CPUs held back for concurrent jobs' data preparation (Settings.reserved_cpus).
    reserved_cpus: float = 0.0

    def eligible(self, job: QueuedJob) -> bool:
        if not self.free.fits(job.cpus, job.gpus):
            return False
        use = self.usage.get(job.tenant_id, Usage())
        quotas = self.quotas.get(job.tenant_id)
        if quotas is None:
            return False  # the tenant is gone
        if quotas.max_running_jobs is not None and use.running >= quotas.max_running_jobs:
            return False
        return quotas.max_gpus is None or use.gpus + job.gpus <= quotas.max_gpus

    def trial_slots(self, job: QueuedJob) -> int:
        """How many of a search's trials to run at once: as many as fit in the free
        capacity and the tenant's GPU quota, at least one (it was eligible), at most all."""
        slots = job.auto_trials
        if job.cpus > 0:
            slots = min(slots, int((self.free.cpus + 1e-9) // job.cpus))
        if job.gpus > 0:
            slots = min(slots, int((self.free.gpus + 1e-9) // job.gpus))
            quotas = self.quotas.get(job.tenant_id)
            if quotas is not None and quotas.max_gpus is not None:
                used = self.usage.get(job.tenant_id, Usage()).gpus
                slots = min(slots, int((quotas.max_gpus - used + 1e-9) // job.gpus))
        return max(1, slots)

    def cpu_share(self, job: QueuedJob, cap: float) -> float:
        """CPUs per worker for a job left to the scheduler: what is free, split over its
        workers. On an idle cluster the reserve goes to it too: the reserve is there so
        a job starting beside running ones can prepare its data, and while this one holds
        every CPU nothing else starts."""
        workers = max(1, round(job.cpus))  # queued at one CPU per worker
        free = self.free.cpus + (self.reserved_cpus if not self.usage else 0.0)
        return float(max(1, min(int(cap), int((free + 1e-9) // workers))))

    def hold(self, job: QueuedJob) -> None:
        self.free = self.free - Capacity(job.cpus, job.gpus)
        use = self.usage.setdefault(job.tenant_id, Usage())
        use.running += 1
        use.cpus += job.cpus
        use.gpus += job.gpus


@dataclass(eq=False)
class Dispatcher:
    """Starts one job: compare-and-set in the database, then submit to the cluster."""

    engine: Engine
    backend: ComputeBackend
    queue: FairQueue
    store: ArtifactStore
    settings: Settings
    # Per job: consecutive refused submissions, and when the next try may happen.
    submit_failures: dict[str, int] = field(default_factory=dict, init=False)
    retry_at: dict[str, float] = field(default_factory=dict, init=False)
    # Jobs whose submission to Ray is under way: Ray may not know them yet, and the
    # reconciler must not take that for a lost job (it would start the job again).
    submitting: set[str] = field(default_factory=set, init=False)

    def entrypoint(self, job_id: str, spec_uri: str) -> str:
        s = self.settings
        parts = [s.worker_python, "-m", "workers.run_job", job_id, "--spec-uri", spec_uri]
        if s.redis_url:
            parts += ["--redis-url", s.redis_url]
        parts += ["--models-dir", str(s.resolved_models_dir)]
        return shlex.join(parts)

    def env(self) -> dict[str, str]:
        # SIGINT rather than SIGTERM on cancel, so Tune and Train can save their state; and
        # time to do it before Ray's SIGKILL: Train's abort alone may wait 12 s for its
        # placement-group cleaner to start, and a driver killed first leaves that cleaner
        # behind for good (`workers.ray_cleanup`).
        return {
            **self.settings.worker_env,
            "RAY_JOB_STOP_SIGNAL": "SIGINT",
            "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S),
        }

    def start(
        self,
        job_id: str,
        concurrent_trials: int | None = None,
        cpus_per_worker: float | None = None,
    ) -> bool:
        """`concurrent_trials`: for a search left to the scheduler, how many trials may run
        at once; `cpus_per_worker`: for a job whose CPUs were left to it, what each worker
        gets. Both are written into the job and its spec in the same update."""
        with new_session(self.engine) as s:
            jobs = JobLifecycle(s)
            job = jobs.job(job_id)
            if job is None or job.status != JobStatus.QUEUED or job.spec is None:
                return False
            attempt = job.attempts + 1
            extra: dict[str, Any] = {}
            spec = JobSpec.model_validate(job.spec, strict=False)
            message = f"Job started on the cluster (attempt {attempt})"
            if concurrent_trials is not None and spec.search is not None:
                search = spec.search.model_copy(update={"max_concurrent_trials": concurrent_trials})
                spec = spec.model_copy(update={"search": search})
                extra["search"] = search.model_dump()
                message += f", up to {concurrent_trials} trials at once"
            if cpus_per_worker is not None:
                resources = spec.resources.model_copy(update={"cpus_per_worker": cpus_per_worker})
                spec = spec.model_copy(update={"resources": resources})
                extra["resources"] = {**(job.resources or {}), "cpus_per_worker": cpus_per_worker}
                message += f", {cpus_per_worker:g} CPUs per worker"
            if extra:
                extra["spec"] = spec.model_dump(mode="json")
            spec_key = f"{job.tenant_id}/jobs/{job_id}/spec.json"
            self.store.write_bytes(spec_key, spec.model_dump_json().encode())
            # Tracker credentials go beside the spec, never in it (`workers.trackers`).
            write_job_secrets(s, self.store, spec)
            # A resumed job's old pause request would stop the new run at its first step.
            withdraw_pause(job)
            if not jobs.start(
                job_id,
                message,
                {"attempt": attempt, "submission_id": submission_id(job_id, attempt)},
                attempts=attempt,
                **extra,
            ):
                return False
            s.commit()
        crash_point(self.settings.fault_crash_at, "dispatch.after_commit")
        self.submitting.add(job_id)
        try:
            self.backend.submit(
                submission_id(job_id, attempt),
                self.entrypoint(job_id, self.store.uri_for(spec_key)),
                self.env(),
            )
        except Exception as exc:
            self.submitting.discard(job_id)
            log.warning("submitting %s to the cluster failed: %s", job_id, exc)
            self._submit_failed(job_id, attempt, str(exc))
            return False
        try:
            self._submitted(job_id, attempt)
        except Exception:
            log.warning("could not note the submission of %s", job_id, exc_info=True)
        finally:
            self.submitting.discard(job_id)
        crash_point(self.settings.fault_crash_at, "dispatch.after_submit")
        self.submit_failures.pop(job_id, None)
        return True

    def _submitted(self, job_id: str, attempt: int) -> None:
        """The grace a dispatched job has to show up on Ray counts from here, not from the
        database commit before a submission that may have been slow."""
        with new_session(self.engine) as s:
            JobLifecycle(s).submitted(job_id, attempt, time.time())
            s.commit()

    def _submit_failed(self, job_id: str, attempt: int, why: str) -> None:
        """Ray refused or did not answer: the job never ran, so this is no attempt. It goes
        back to the queue and waits an exponentially growing while before the next try."""
        failures = self.submit_failures.get(job_id, 0) + 1
        self.submit_failures[job_id] = failures
        with new_session(self.engine) as s:
            jobs = JobLifecycle(s)
            if failures >= MAX_SUBMIT_FAILURES:
                jobs.fail(
                    job_id,
                    "dispatch_failed",
                    why,
                    message=f"Ray refused the job {failures} times; last: {why}",
                )
                s.commit()
                self.submit_failures.pop(job_id, None)
                return
            delay = min(2.0**failures, 60.0)
            self.retry_at[job_id] = time.monotonic() + delay
            job = jobs.requeue(
                job_id,
                f"Ray did not take the job ({why}); retrying in {delay:.0f} s",
                attempts=attempt - 1,
            )
            s.commit()
            if job is not None:
                enqueue(self.queue, job)

    def backing_off(self, job_id: str) -> bool:
        return self.retry_at.get(job_id, 0.0) > time.monotonic()

    def requeue_or_fail(
        self, job_id: str, tenant_id: str, attempt: int, why: str, resumes: int = 0
    ) -> None:
        """`resumes`: how many of the `attempt`s began with a resume (no retry)."""
        tries = attempt - resumes
        with new_session(self.engine) as s:
            jobs = JobLifecycle(s)
            if tries < self.settings.max_attempts:
                job = jobs.requeue(
                    job_id,
                    f"{why}; the job is queued again (attempt {tries} of "
                    f"{self.settings.max_attempts})",
                )
                s.commit()
                if job is not None:
                    enqueue(self.queue, job)
            else:
                jobs.fail(
                    job_id,
                    "dispatch_failed",
                    why,
                    message=f"{why}; giving up after {tries} attempts",
                    expected=(JobStatus.RUNNING, JobStatus.CANCELLING),
                )
                s.commit()


@dataclass(eq=False)
class Scheduler:
    engine: Engine
    queue: FairQueue
    capacity: CapacitySource
    dispatcher: Dispatcher
    settings: Settings
    token: str
    # Serve on the same cluster: the cores its replicas hold are no job's to take. None
    # where nothing serves (the scheduler tests' clusters).
    serving: ServeBackend | None = None
    drr: DeficitRoundRobin = field(default_factory=DeficitRoundRobin, init=False)
    is_leader: bool = field(default=False, init=False)
    _tenants_at: float = field(default=-1e9, init=False)
    _tenant_cache: tuple[dict[str, float], dict[str, Quotas]] = field(default=({}, {}), init=False)
    _serve_held: Capacity = field(default=Capacity(0.0, 0.0), init=False)

    def _tenants(self) -> tuple[dict[str, float], dict[str, Quotas]]:
        # Weights and quotas change by admin action, rarely: re-read them once a second,
        # not once per decision.
        if time.monotonic() - self._tenants_at > TENANT_CACHE_S:
            weights: dict[str, float] = {}
            quotas: dict[str, Quotas] = {}
            with new_session(self.engine) as s:
                for tenant in TenantRepository(s).all():
                    weights[tenant.id] = tenant.weight
                    quotas[tenant.id] = effective_quotas(tenant, self.settings)
            self._tenant_cache = (weights, quotas)
            self._tenants_at = time.monotonic()
        return self._tenant_cache

    def view(self) -> ClusterView:
        total = (
            self.capacity.total_capacity()
            - Capacity(self.settings.reserved_cpus, 0)
            - self.serve_held()
        )
        weights, quotas = self._tenants()
        view = ClusterView(
            free=total, weights=weights, quotas=quotas, reserved_cpus=self.settings.reserved_cpus
        )
        with new_session(self.engine) as s:
            for job_id, tenant_id, resources, search in JobLifecycle(s).holdings():
                cpus, gpus = cost_of(resources, search)
                view.hold(QueuedJob(job_id, tenant_id, cpus, gpus))
        return view

    def serve_held(self) -> Capacity:
        """What Serve's replicas hold now. Ray's own free figure would count them, but
        also the passing tasks of jobs' data preparation (what `reserved_cpus` is for) and
        not the jobs just started and not yet placed: the scheduler counts its jobs from
        the database and asks Serve only for Serve. Where Serve's status cannot be read,
        the last figure stands: training does not wait on Serve's API."""
        if self.serving is None:
            return Capacity(0.0, 0.0)
        try:
            self._serve_held = serve_held(self.serving.serve_status().values())
        except Exception as exc:
            log.warning("could not read what Serve holds (%s); using the last figure", exc)
        return self._serve_held

    def tick(self) -> list[str]:
        """Start every job that fits now, fairly; returns the ids started."""
        self.is_leader = self.queue.acquire_leader(
            self.token, int(self.settings.leader_ttl_s * 1000)
        )
        if not self.is_leader:
            return []
        heads = self.queue.heads()
        if not heads:
            return []
        view = self.view()
        started: list[str] = []
        while heads:
            job = self.drr.pick(
                heads,
                view.weights,
                lambda j: view.eligible(j) and not self.dispatcher.backing_off(j.job_id),
            )
            if job is None:
                break
            slots = view.trial_slots(job) if job.auto_trials else None
            per_worker = (
                view.cpu_share(job, self.settings.max_auto_cpus_per_worker)
                if job.auto_cpus
                else None
            )
            if self.dispatcher.start(
                job.job_id, concurrent_trials=slots, cpus_per_worker=per_worker
            ):
                n = slots or 1
                cpus = job.cpus * (per_worker or 1.0)
                view.hold(replace(job, cpus=cpus * n, gpus=job.gpus * n))
                started.append(job.job_id)
            # Started, or no longer queued (cancelled, started by another replica): either
            # way it leaves the queue. A failed submit re-enqueues it itself.
            if not self._is_queued(job.job_id):
                self.queue.remove(job.job_id, job.tenant_id)
            head = self.queue.head(job.tenant_id)
            if head is None:
                heads.pop(job.tenant_id, None)
            elif head.job_id == job.job_id:
                heads.pop(job.tenant_id, None)  # still queued after a failed submit: next tick
            else:
                heads[job.tenant_id] = head
        return started

    def _is_queued(self, job_id: str) -> bool:
        with new_session(self.engine) as s:
            return JobLifecycle(s).is_queued(job_id)

    def resign(self) -> None:
        self.queue.release_leader(self.token)
        self.is_leader = False
