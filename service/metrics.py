"""Prometheus metrics for `GET /metrics`.

Two kinds, because the control plane can run as N replicas:

- Events counted where they happen (dispatch latency, job durations, inference requests,
  adapter loads) live in this process's registry; Prometheus scrapes every replica and
  sums them (`sum by (...) (rate(...))`).
- State (queue depth per tenant, jobs by state) is read from Redis and the database at
  scrape time by `StateCollector`, so every replica reports the same, true figures (use
  `max by (...)` across replicas, not `sum`).

Job metrics are observed only once the transaction that changed the job commits: a
rolled-back transition never counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from service.models.status import TERMINAL, JobStatus

log = logging.getLogger(__name__)

# Seconds: from a fraction of a second (a dispatch) to a day (a long training job).
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
_INFERENCE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# This process's counters. Not the prometheus_client default registry: Ray and other
# libraries register their own collectors there, which are no business of this endpoint.
# The *_created series double the output and no dashboard needs them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

DISPATCH_LATENCY = Histogram(
    "tuneplane_dispatch_latency_seconds",
    "Time a job waited in the queue before the scheduler started it (queued -> running).",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOB_RUN_SECONDS = Histogram(
    "tuneplane_job_run_seconds",
    "Time from a job's start on the cluster to its end, by final status.",
    ["status"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
JOB_TOTAL_SECONDS = Histogram(
    "tuneplane_job_duration_seconds",
    "Time from a job's submission to its end (queueing included), by final status.",
    ["status"],
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
INFERENCE_REQUESTS = Counter(
    "tuneplane_inference_requests",
    "Inference requests answered, by tenant, endpoint, model and HTTP status.",
    ["tenant", "endpoint", "model", "status"],
    registry=REGISTRY,
)
INFERENCE_LATENCY = Histogram(
    "tuneplane_inference_latency_seconds",
    "Inference request latency as the control plane saw it.",
    ["tenant", "endpoint", "model"],
    buckets=_INFERENCE_BUCKETS,
    registry=REGISTRY,
)
INFERENCE_TOKENS = Counter(
    "tuneplane_inference_tokens",
    "Tokens processed by inference, by kind (prompt or completion).",
    ["tenant", "endpoint", "model", "kind"],
    registry=REGISTRY,
)
ADAPTER_LOADS = Histogram(
    "tuneplane_adapter_load_seconds",
    "Time to load a fine-tuned adapter onto a serving replica, by base model.",
    ["base_model"],
    buckets=_LOAD_BUCKETS,
    registry=REGISTRY,
)


def record_inference(
    *,
    tenant: str,
    endpoint: str,
    model: str,
    status: int,
    latency_s: float,
    prompt_tokens: int,
    completion_tokens: int,
) -> None:
    """One answered inference request (any status, errors included)."""
    INFERENCE_REQUESTS.labels(tenant, endpoint, model, str(status)).inc()
    INFERENCE_LATENCY.labels(tenant, endpoint, model).observe(max(latency_s, 0.0))
    if prompt_tokens > 0:
        INFERENCE_TOKENS.labels(tenant, endpoint, model, "prompt").inc(prompt_tokens)
    if completion_tokens > 0:
        INFERENCE_TOKENS.labels(tenant, endpoint, model, "completion").inc(completion_tokens)


def record_adapter_load(*, base_model: str, seconds: float) -> None:
    """One adapter loaded onto a replica (the histogram's _count is the number of loads)."""
    ADAPTER_LOADS.labels(base_model).observe(max(seconds, 0.0))


# -- job metrics, observed after commit ---------------------------------------------------

_PENDING = "tuneplane_metrics_pending"


def on_commit(session: Session, observe: Callable[[], None]) -> None:
    """Run `observe` once `session`'s transaction commits; drop it on rollback."""
    session.info.setdefault(_PENDING, []).append(observe)


@event.listens_for(Session, "after_commit")
def _flush_pending(session: Session) -> None:
    for observe in session.info.pop(_PENDING, []):
        try:
            observe()
        except Exception:  # a metric never breaks a request
            log.exception("recording a metric failed")


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


def job_transitioned(
    session: Session,
    to: JobStatus,
    at: float,
    *,
    created_at: float,
    queued_since: float | None,
    started_at: float | None,
) -> None:
    """Called by the state machine for a transition that happened (not yet committed)."""
    if to == JobStatus.RUNNING and queued_since is not None:
        wait = max(at - queued_since, 0.0)
        on_commit(session, lambda: DISPATCH_LATENCY.observe(wait))
    elif to in TERMINAL:
        total = max(at - created_at, 0.0)
        run = max(at - started_at, 0.0) if started_at is not None else None

        def observe() -> None:
            JOB_TOTAL_SECONDS.labels(to).observe(total)
            if run is not None:
                JOB_RUN_SECONDS.labels(to).observe(run)

        on_commit(session, observe)


# -- state read at scrape time ------------------------------------------------------------


class StateCollector(Collector):
    """Queue depth per tenant (Redis: what the scheduler sees) and jobs by state per tenant
    (the database: the truth). Read on every scrape, so any replica reports the same."""

    def __init__(self, engine: Engine, redis_client: Any | None) -> None:
        self.engine = engine
        self.redis = redis_client

    def collect(self) -> Iterator[Metric]:
        from service.db import new_session
        from service.jobs.repository import JobStore
        from service.queue import queue_key
        from service.tenants.repository import TenantRepository

        labels = ["tenant_id", "tenant"]
        jobs = GaugeMetricFamily(
            "tuneplane_jobs",
            "Jobs by tenant and status (from the database).",
            labels=[*labels, "status"],
        )
        depth = GaugeMetricFamily(
            "tuneplane_queue_depth",
            "Jobs waiting in a tenant's scheduler queue (Redis).",
            labels=labels,
        )
        up = GaugeMetricFamily(
            "tuneplane_state_scrape_ok",
            "1 if the database (source=db) or Redis (source=redis) answered this scrape.",
            labels=["source"],
        )
        tenants: dict[str, str] = {}
        counts: dict[tuple[str, str], int] = {}
        try:
            with new_session(self.engine) as s:
                tenants = TenantRepository(s).names()
                counts = JobStore(s).counts()
            up.add_metric(["db"], 1)
        except Exception as exc:
            log.warning("metrics: reading job counts failed: %s", exc)
            up.add_metric(["db"], 0)
        for tenant_id, name in sorted(tenants.items()):
            for status in JobStatus:
                jobs.add_metric([tenant_id, name, status], counts.get((tenant_id, status), 0))
        if self.redis is not None:
            try:
                pipe = self.redis.pipeline(transaction=False)
                order = sorted(tenants)
                for tenant_id in order:
                    pipe.zcard(queue_key(tenant_id))
                for tenant_id, n in zip(order, pipe.execute(), strict=True):
                    depth.add_metric([tenant_id, tenants[tenant_id]], int(n))
                up.add_metric(["redis"], 1)
            except Exception as exc:
                log.warning("metrics: reading queue depths failed: %s", exc)
                up.add_metric(["redis"], 0)
        yield jobs
        yield depth
        yield up


def render(state: StateCollector | None) -> tuple[bytes, str]:
    """The exposition text: this process's counters, then the state read now."""
    body = generate_latest(REGISTRY)
    if state is not None:
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(state)
        body += generate_latest(scrape)
    return body, CONTENT_TYPE_LATEST
