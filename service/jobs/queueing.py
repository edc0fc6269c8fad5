"""How a job sits in the Redis queue: its place (priority, age) and what it will hold."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from service.models import Job
from service.queue import FairQueue

log = logging.getLogger(__name__)

# In a job's stored resources: cpus_per_worker was left to the scheduler ("auto"); until it
# starts, the job's cpus_per_worker is the least it needs (1).
AUTO_CPUS = "auto_cpus"


def cost_of(
    resources: Mapping[str, Any] | None, search: Mapping[str, Any] | None
) -> tuple[float, float]:
    """CPUs and GPUs a job holds while it runs (a search holds its concurrent trials)."""
    res = resources or {}
    workers = int(res.get("num_workers", 1))
    cpus = workers * float(res.get("cpus_per_worker", 1.0))
    gpus = workers * float(res.get("gpus_per_worker", 1.0)) if res.get("use_gpu") else 0.0
    if search:
        concurrent = int(search.get("max_concurrent_trials") or 1)
        cpus, gpus = cpus * concurrent, gpus * concurrent
    return cpus, gpus


def enqueue(queue: FairQueue, job: Job) -> None:
    search = job.search or {}
    if search and not search.get("max_concurrent_trials"):
        # The scheduler picks the concurrency at start; queue the cost of one trial.
        cpus, gpus = cost_of(job.resources, None)
        auto = int(search.get("num_trials", 1))
    else:
        cpus, gpus = cost_of(job.resources, job.search)
        auto = 0
    auto_cpus = bool((job.resources or {}).get(AUTO_CPUS)) and not search
    if auto_cpus:
        # Queued again after a start, the job's resources hold what it got then; it needs
        # only one CPU a worker to start, and gets what is free at its next start.
        cpus = float(int((job.resources or {}).get("num_workers", 1)))
    queue.enqueue(job.id, job.tenant_id, job.priority, job.created_at, cpus, gpus, auto, auto_cpus)


def enqueue_quietly(queue: FairQueue, job: Job) -> None:
    """After a commit: a Redis outage must not fail a request whose job is already stored;
    the reconciler enqueues queued jobs that Redis lacks."""
    try:
        enqueue(queue, job)
    except Exception:
        log.warning("could not enqueue %s in Redis; the reconciler will", job.id, exc_info=True)


def dequeue_quietly(queue: FairQueue, job: Job) -> None:
    try:
        queue.remove(job.id, job.tenant_id)
    except Exception:
        log.warning("could not dequeue %s from Redis; the reconciler will", job.id, exc_info=True)
