"""A job's tracker integrations (validated into its spec) and the tenant secrets that hold
the trackers' credentials (write-only), without running a job."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from service.jobs.integrations import integrations_out
from service.models import Job
from service.secrets.schemas import MAX_SECRETS
from service.secrets.service import write_job_secrets
from tests.factories import create_job, create_job_ok, make_tenant
from workers.spec import JobSpec
from workers.trackers import TRACKER_SECRETS_FILE

MLFLOW = {"type": "mlflow", "mlflow": {"tracking_uri": "http://127.0.0.1:5000"}}
WANDB = {"type": "wandb", "wandb": {"project": "p", "name": "run", "tags": ["a", "b"]}}

BAD_INTEGRATIONS: list[tuple[str, Any, str]] = [
    ("unknown_type", {"type": "comet"}, "integrations[0].type"),
    ("no_type", {"wandb": {"project": "p"}}, "integrations[0].type"),
    ("wandb_missing", {"type": "wandb"}, "integrations[0].wandb"),
    (
        "wandb_no_project",
        {"type": "wandb", "wandb": {"name": "x"}},
        "integrations[0].wandb.project",
    ),
    (
        "wandb_empty_project",
        {"type": "wandb", "wandb": {"project": ""}},
        "integrations[0].wandb.project",
    ),
    (
        "wandb_long_tag",
        {"type": "wandb", "wandb": {"project": "p", "tags": ["ok", "x" * 65]}},
        "integrations[0].wandb.tags[1]",
    ),
    (
        "wandb_unknown_field",
        {"type": "wandb", "wandb": {"project": "p", "api_key": "k"}},
        "integrations[0].wandb.api_key",
    ),
    ("mlflow_missing", {"type": "mlflow"}, "integrations[0].mlflow"),
    (
        "mlflow_file_uri",
        {"type": "mlflow", "mlflow": {"tracking_uri": "file:///etc"}},
        "integrations[0].mlflow.tracking_uri",
    ),
    (
        "mlflow_sqlite_uri",
        {"type": "mlflow", "mlflow": {"tracking_uri": "sqlite:///x.db"}},
        "integrations[0].mlflow.tracking_uri",
    ),
    (
        "mlflow_credentials_in_uri",
        {"type": "mlflow", "mlflow": {"tracking_uri": "https://me:pw@mlflow.example"}},
        "integrations[0].mlflow.tracking_uri",
    ),
    (
        "mlflow_experiment_type",
        {"type": "mlflow", "mlflow": {"tracking_uri": "http://h", "experiment": 3}},
        "integrations[0].mlflow.experiment",
    ),
]


@pytest.mark.parametrize(
    ("name", "integration", "param"), BAD_INTEGRATIONS, ids=[b[0] for b in BAD_INTEGRATIONS]
)
def test_bad_integrations_are_refused_naming_the_field(
    client: TestClient, name: str, integration: Any, param: str
) -> None:
    t = make_tenant(client)
    r = create_job(client, t, integrations=[integration])
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    assert err["type"] == "invalid_request_error" and err["message"]


def test_the_second_integration_is_named_by_its_index(client: TestClient) -> None:
    t = make_tenant(client)
    r = create_job(client, t, integrations=[WANDB, {"type": "mlflow", "mlflow": {}}])
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "integrations[1].mlflow.tracking_uri"


def _row(client: TestClient, job_id: str) -> Job:
    with Session(client.app.state.engine) as s:  # type: ignore[attr-defined]
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        return job


def test_integrations_go_into_the_spec_with_the_model_id(client: TestClient) -> None:
    t = make_tenant(client)
    job = create_job_ok(client, t, integrations=[WANDB, MLFLOW], suffix="tracked")
    row = _row(client, job["id"])
    spec = JobSpec.model_validate(row.spec, strict=False)
    assert [i.type for i in spec.integrations] == ["wandb", "mlflow"]
    assert spec.fine_tuned_model == f"ft:tiny-gpt2:{t.name}:tracked:{job['id']}"
    shown = integrations_out(row.spec)
    assert shown == [
        {"type": "wandb", "wandb": {"project": "p", "name": "run", "entity": None,
                                    "tags": ["a", "b"], "run_id": job["id"]}},
        {"type": "mlflow", "mlflow": {"tracking_uri": "http://127.0.0.1:5000",
                                      "experiment": "tuneplane", "name": None,
                                      "run_id": job["id"]}},
    ]  # fmt: skip


def test_a_job_without_integrations_has_none(client: TestClient) -> None:
    t = make_tenant(client)
    job = create_job_ok(client, t)
    row = _row(client, job["id"])
    assert integrations_out(row.spec) == []
    assert JobSpec.model_validate(row.spec, strict=False).fine_tuned_model is None


# ---------------------------------------------------------------------------- secrets

VALUE = "s3cr3t-value-9b1e4d"


def test_secrets_are_written_listed_by_name_and_never_shown(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    t = make_tenant(client)
    answers = []
    r = client.put("/v1/secrets/WANDB_API_KEY", json={"value": VALUE}, headers=t.headers)
    assert r.status_code == 200, r.text
    answers.append(r.text)
    body = r.json()
    assert body["object"] == "secret" and body["name"] == "WANDB_API_KEY"
    assert set(body) == {"id", "object", "name", "created_at", "updated_at"}
    r = client.put("/v1/secrets/WANDB_API_KEY", json={"value": VALUE + "2"}, headers=t.headers)
    answers.append(r.text)
    assert r.json()["created_at"] == body["created_at"]
    client.put("/v1/secrets/MLFLOW_TRACKING_TOKEN", json={"value": VALUE}, headers=t.headers)
    r = client.get("/v1/secrets", headers=t.headers)
    answers.append(r.text)
    assert [s["name"] for s in r.json()["data"]] == ["MLFLOW_TRACKING_TOKEN", "WANDB_API_KEY"]
    r = client.delete("/v1/secrets/MLFLOW_TRACKING_TOKEN", headers=t.headers)
    answers.append(r.text)
    assert r.json() == {"id": "MLFLOW_TRACKING_TOKEN", "object": "secret", "deleted": True}
    assert client.delete("/v1/secrets/MLFLOW_TRACKING_TOKEN", headers=t.headers).status_code == 404
    assert [s["name"] for s in client.get("/v1/secrets", headers=t.headers).json()["data"]] == [
        "WANDB_API_KEY"
    ]
    for text in [*answers, caplog.text]:
        assert VALUE not in text


def test_secrets_are_the_tenants_own(client: TestClient) -> None:
    a, b = make_tenant(client), make_tenant(client)
    client.put("/v1/secrets/WANDB_API_KEY", json={"value": VALUE}, headers=a.headers)
    assert client.get("/v1/secrets", headers=b.headers).json()["data"] == []
    assert client.delete("/v1/secrets/WANDB_API_KEY", headers=b.headers).status_code == 404
    assert len(client.get("/v1/secrets", headers=a.headers).json()["data"]) == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/secrets/1ABC", {"value": "x"}),
        ("/v1/secrets/has-dash", {"value": "x"}),
        ("/v1/secrets/" + "A" * 129, {"value": "x"}),
        ("/v1/secrets/OK", {"value": ""}),
        ("/v1/secrets/OK", {"value": 5}),
        ("/v1/secrets/OK", {"value": "x", "other": 1}),
        ("/v1/secrets/OK", {"value": "x" * 8193}),
    ],
)
def test_bad_secret_names_and_values_are_refused(
    client: TestClient, path: str, body: dict[str, Any]
) -> None:
    t = make_tenant(client)
    r = client.put(path, json=body, headers=t.headers)
    assert r.status_code == 400, r.text
    assert "x" * 100 not in r.text
    assert client.get("/v1/secrets", headers=t.headers).json()["data"] == []


def test_a_starting_job_gets_only_the_secrets_its_trackers_use(
    client: TestClient, tmp_path: Path
) -> None:
    t = make_tenant(client)
    for name in ("MLFLOW_TRACKING_TOKEN", "WANDB_API_KEY", "UNRELATED"):
        client.put(f"/v1/secrets/{name}", json={"value": f"{VALUE}-{name}"}, headers=t.headers)
    job = create_job_ok(client, t, integrations=[MLFLOW])
    plain = create_job_ok(client, t)
    store = client.app.state.store  # type: ignore[attr-defined]
    with Session(client.app.state.engine) as s:  # type: ignore[attr-defined]
        for job_id in (job["id"], plain["id"]):
            row = s.get(Job, job_id)
            assert row is not None
            write_job_secrets(s, store, JobSpec.model_validate(row.spec, strict=False))
    root = Path(store.uri_for("").removeprefix("file://"))
    written = json.loads((root / t.id / "jobs" / job["id"] / TRACKER_SECRETS_FILE).read_text())
    assert written == {"MLFLOW_TRACKING_TOKEN": f"{VALUE}-MLFLOW_TRACKING_TOKEN"}
    assert not (root / t.id / "jobs" / plain["id"] / TRACKER_SECRETS_FILE).exists()
    assert VALUE not in json.dumps(_row(client, job["id"]).spec)


def test_a_tenant_holds_a_bounded_number_of_secrets(client: TestClient) -> None:
    t = make_tenant(client)
    for i in range(MAX_SECRETS):
        r = client.put(f"/v1/secrets/S{i}", json={"value": "v"}, headers=t.headers)
        assert r.status_code == 200, r.text
    r = client.put("/v1/secrets/ONE_MORE", json={"value": "v"}, headers=t.headers)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "too_many_secrets"
    # Replacing one is no new secret.
    assert client.put("/v1/secrets/S0", json={"value": "w"}, headers=t.headers).status_code == 200
