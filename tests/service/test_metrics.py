"""GET /metrics: Prometheus text with the queue, job, dispatch and inference series."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.config import Settings
from service.main import create_app
from tests.factories import ADMIN, create_job_ok, make_tenant
from tests.fixtures.app import ADMIN_KEY
from tests.fixtures.live_stack import LiveJob
from tests.fixtures.redis_server import RedisServer

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels`."""
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert found, f"no series {name}{labels}"
    return sum(found)


@pytest.mark.ray
def test_a_scrape_after_a_real_job_has_its_series(live_job: LiveJob) -> None:
    assert live_job.wait_finished() == "succeeded"
    stack = live_job.stack
    # Prometheus scrapes with a bearer token (here the admin key; or TUNEPLANE_METRICS_TOKEN).
    r = httpx.get(f"{stack.url}/metrics", headers=ADMIN, timeout=30)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = parse(r.text)
    with stack.client() as c:
        job = c.get(f"/v1/fine_tuning/jobs/{live_job.job_id}").json()

    mine = {"tenant": stack.tenant_name, "tenant_id": stack.tenant_id}
    assert value(samples, "tuneplane_jobs", status="succeeded", **mine) == 1
    assert value(samples, "tuneplane_jobs", status="running", **mine) == 0
    assert value(samples, "tuneplane_queue_depth", **mine) == 0
    assert value(samples, "tuneplane_state_scrape_ok", source="db") == 1
    assert value(samples, "tuneplane_state_scrape_ok", source="redis") == 1

    # The job was dispatched once and ended once; its times agree with the API's.
    assert value(samples, "tuneplane_dispatch_latency_seconds_count") == 1
    waited = value(samples, "tuneplane_dispatch_latency_seconds_sum")
    total = value(samples, "tuneplane_job_duration_seconds_sum", status="succeeded")
    ran = value(samples, "tuneplane_job_run_seconds_sum", status="succeeded")
    assert value(samples, "tuneplane_job_duration_seconds_count", status="succeeded") == 1
    assert 0 <= waited <= total and 0 < ran <= total
    assert abs(total - (job["finished_at"] - job["created_at"])) <= 2  # API times are whole s
    # Histogram buckets are cumulative and end at the count.
    assert value(samples, "tuneplane_job_run_seconds_bucket", status="succeeded", le="+Inf") == 1

    # Process metrics, and the inference families are declared even before any request.
    assert value(samples, "process_resident_memory_bytes") > 0
    for family in ("tuneplane_inference_requests", "tuneplane_inference_latency_seconds",
                   "tuneplane_inference_tokens", "tuneplane_adapter_load_seconds"):  # fmt: skip
        assert f"# TYPE {family}" in r.text


@pytest.fixture
def queue_settings(settings: Settings, redis_server: RedisServer) -> Iterator[Settings]:
    yield settings.model_copy(update={"redis_url": redis_server.url})
    redis.Redis.from_url(redis_server.url).flushdb()


def test_queue_depth_and_jobs_by_state_are_read_at_scrape_time(queue_settings: Settings) -> None:
    # No scheduler runs here, so submitted jobs stay in the tenant's Redis queue.
    with TestClient(create_app(queue_settings)) as client:
        a, b = make_tenant(client), make_tenant(client)
        jobs = [create_job_ok(client, a)["id"] for _ in range(3)]
        create_job_ok(client, b)
        client.post(f"/v1/fine_tuning/jobs/{jobs[0]}/cancel", headers=a.headers)
        samples = parse(client.get("/metrics", headers=ADMIN).text)
    assert value(samples, "tuneplane_queue_depth", tenant=a.name, tenant_id=a.id) == 2
    assert value(samples, "tuneplane_queue_depth", tenant=b.name) == 1
    assert value(samples, "tuneplane_jobs", tenant=a.name, status="queued") == 2
    assert value(samples, "tuneplane_jobs", tenant=a.name, status="cancelled") == 1
    assert value(samples, "tuneplane_jobs", tenant=b.name, status="queued") == 1
    assert value(samples, "tuneplane_jobs", tenant=b.name, status="succeeded") == 0


def test_inference_and_adapter_series_count_what_was_recorded(tmp_path: Path) -> None:
    # The counters are this process's: compare a scrape before and after.
    labels = {"tenant": "t-metrics", "endpoint": "chat.completions", "model": "ft:x:y:z:w"}
    with TestClient(create_app(Settings(data_dir=tmp_path, admin_key=ADMIN_KEY))) as client:
        before = parse(client.get("/metrics", headers=ADMIN).text)
        for status, latency in ((200, 0.2), (200, 0.4), (429, 0.001)):
            metrics.record_inference(
                **labels, status=status, latency_s=latency, prompt_tokens=10, completion_tokens=5
            )
        metrics.record_adapter_load(base_model="tiny-metrics", seconds=1.5)
        after = parse(client.get("/metrics", headers=ADMIN).text)

    def grew(name: str, **more: str) -> float:
        had = value(before, name, **labels, **more) if _has(before, name, **labels, **more) else 0.0
        return value(after, name, **labels, **more) - had

    assert grew("tuneplane_inference_requests_total", status="200") == 2
    assert grew("tuneplane_inference_requests_total", status="429") == 1
    assert grew("tuneplane_inference_latency_seconds_count") == 3
    assert grew("tuneplane_inference_latency_seconds_sum") == pytest.approx(0.601)
    # Cumulative buckets: 0.001 s is under 0.01; 0.001 and 0.2 are under 0.25.
    assert grew("tuneplane_inference_latency_seconds_bucket", le="0.01") == 1
    assert grew("tuneplane_inference_latency_seconds_bucket", le="0.25") == 2
    assert grew("tuneplane_inference_tokens_total", kind="prompt") == 30
    assert grew("tuneplane_inference_tokens_total", kind="completion") == 15
    loads = value(after, "tuneplane_adapter_load_seconds_count", base_model="tiny-metrics")
    if _has(before, "tuneplane_adapter_load_seconds_count", base_model="tiny-metrics"):
        loads -= value(before, "tuneplane_adapter_load_seconds_count", base_model="tiny-metrics")
    assert loads == 1


def _has(samples: Samples, name: str, **labels: str) -> bool:
    want = set(labels.items())
    return any(n == name and want <= ls for (n, ls) in samples)


def test_a_metrics_token_guards_the_endpoint(settings: Settings) -> None:
    guarded = settings.model_copy(update={"metrics_token": "scrape-me"})
    with TestClient(create_app(guarded)) as client:
        assert client.get("/metrics").status_code == 401
        tenant = make_tenant(client)
        assert client.get("/metrics", headers=tenant.headers).status_code == 401
        ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200 and "tuneplane_jobs" in ok.text
        assert client.get("/metrics", headers=ADMIN).status_code == 200


def test_metrics_are_never_open_to_anonymous_scrapes_or_tenants(client: TestClient) -> None:
    # The series name every tenant: without a metrics token only the admin key reads them.
    tenant = make_tenant(client)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=tenant.headers).status_code == 401
    assert client.get("/metrics", headers=ADMIN).status_code == 200


def test_a_rolled_back_transition_is_not_counted(settings: Settings) -> None:
    from sqlmodel import Session

    from service.jobs.state import transition
    from service.models.status import JobStatus

    before = parse(metrics.render(None)[0].decode())
    count = "tuneplane_job_duration_seconds_count"
    prior = sum(v for (n, ls), v in before.items() if n == count)
    with TestClient(create_app(settings)) as client:
        tenant = make_tenant(client)
        job_id = create_job_ok(client, tenant)["id"]
        engine = client.app.state.engine  # type: ignore[attr-defined]
        with Session(engine) as s:
            assert transition(s, job_id, JobStatus.CANCELLED, expected=(JobStatus.QUEUED,))
            s.rollback()
        after = parse(metrics.render(None)[0].decode())
        assert sum(v for (n, ls), v in after.items() if n == count) == prior
        with Session(engine) as s:
            assert transition(s, job_id, JobStatus.CANCELLED, expected=(JobStatus.QUEUED,))
            s.commit()
        after = parse(metrics.render(None)[0].decode())
        assert value(after, count, status="cancelled") >= 1
        assert sum(v for (n, ls), v in after.items() if n == count) == prior + 1
