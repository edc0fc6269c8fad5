"""Every OpenAI operation Tuneplane serves answers as OpenAI's published document says.

Real answers of the running app are checked against the schemas of `openai-openapi.json`
(see openai_contract.py): files, fine-tuning jobs with their events and checkpoints,
models, chat completions and completions (whole and each streamed chunk), and error
bodies. The control plane's own operations run in-process on both databases; a job that
really trained and its model served by Ray Serve come from the session's `live_job`.
Our extensions (trials, metrics, deployments, classifications, admin) are not OpenAI's
and are not checked here; the extra fields we add to OpenAI's objects are allowed.

One amendment, on purpose: a job's `status` may also be "paused". OpenAI's document
lists validating_files | queued | running | succeeded | failed | cancelled for
FineTuningJob.status, yet its own example answer of POST /fine_tuning/jobs/{id}/pause
(pauseFineTuningJob) is a job whose status is "paused". Nothing else is amended (how
completion stream chunks are read is the loader's, see `OpenAIContract.completion_chunk`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx
import pytest
from fastapi.testclient import TestClient

from service.models.status import JobStatus
from tests.contract.openai_contract import SchemaCheck, extend_enum, load
from tests.factories import (
    ADMIN,
    add_model,
    chat_records,
    create_job_ok,
    jsonl,
    make_tenant,
    upload,
    upload_ok,
)
from tests.fixtures.live_stack import LiveJob
from tests.fixtures.ray_cluster import RayCluster, shut_down_serve
from workers.serving.engine import Delta
from workers.serving.openai_api import Completion, Kind, sse_events

CONTRACT = load(extend_enum("FineTuningJob", "status", "paused"))
JOB = CONTRACT.schema("FineTuningJob")


class Answer(Protocol):
    """An HTTP answer, of httpx or of the TestClient (which has an httpx of its own)."""

    @property
    def status_code(self) -> int: ...

    @property
    def text(self) -> str: ...

    def json(self) -> Any: ...


def ok(r: Answer, check: SchemaCheck) -> Any:
    """The JSON of a 200 answer, checked against `check`."""
    assert r.status_code == 200, r.text
    body = r.json()
    check.check(body)
    return body


def refused(r: Answer, status: int) -> dict[str, Any]:
    """The error of an answer that must be `status`, checked as OpenAI's ErrorResponse."""
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    CONTRACT.error.check(body)
    return body["error"]


def sse_data(text: str) -> list[Any]:
    """The `data:` objects of a Server-Sent Events body, which must end with [DONE]."""
    data = [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]
    assert data and data[-1] == "[DONE]", text[-500:]
    return [json.loads(d) for d in data[:-1]]


# ------------------------------------------------------------------ the validator itself


def test_a_drifted_type_fails_the_contract() -> None:
    good = {
        "id": "file-abc",
        "object": "file",
        "bytes": 120,
        "created_at": 1_700_000_000,
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "status": "processed",
        # Ours: allowed beside OpenAI's fields.
        "format": "chat",
    }
    check = CONTRACT.operation("retrieveFile")
    assert check.errors(good) == []
    drifted = check.errors({**good, "created_at": "1700000000"})
    assert drifted == ["$.created_at: '1700000000' is not of type 'integer'"]
    # null where OpenAI wants a typed value or no field at all.
    assert check.errors({**good, "expires_at": None}) == [
        "$.expires_at: None is not of type 'integer'"
    ]
    with pytest.raises(AssertionError, match=r"\$\.bytes"):
        check.check({**good, "bytes": 1.5})
    # Deep inside a list, through $refs.
    listed = CONTRACT.response("get", "/files")
    page = {"object": "list", "data": [good], "first_id": "file-abc", "last_id": "file-abc"}
    assert listed.errors({**page, "has_more": False}) == []
    assert listed.errors({**page, "has_more": False, "data": [{**good, "object": "File"}]}) == [
        "$.data[0].object: 'File' is not one of ['file']"
    ]


def test_openapi_3_0_forms_read_as_json_schema_2020_12() -> None:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    # `nullable: true` on an enum and on a $ref (usage).
    assert CONTRACT.chat_chunk.errors({**chunk, "usage": None}) == []
    assert CONTRACT.chat_chunk.errors({**chunk, "usage": {"prompt_tokens": 1}}) != []
    # Boolean exclusiveMinimum: learning_rate_multiplier must be above 0, not at it.
    job = {
        "id": "ftjob-1",
        "object": "fine_tuning.job",
        "created_at": 1,
        "error": None,
        "fine_tuned_model": None,
        "finished_at": None,
        "hyperparameters": {"learning_rate_multiplier": 0.5},
        "model": "m",
        "organization_id": "org",
        "result_files": [],
        "status": "paused",
        "trained_tokens": None,
        "training_file": "file-1",
        "validation_file": None,
        "seed": 1,
    }
    assert JOB.errors(job) == []
    zero = {**job, "hyperparameters": {"learning_rate_multiplier": 0}}
    assert any("learning_rate_multiplier" in e for e in JOB.errors(zero))
    # The amendment is "paused" alone, and only where this module asks for it.
    assert JOB.errors({**job, "status": "cancelling"}) != []
    assert load().schema("FineTuningJob").errors(job) != []
    # A whole completion gives its finish_reason; a stream chunk may not know it yet.
    text = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "text": "a", "logprobs": None, "finish_reason": None}],
    }
    assert CONTRACT.completion_chunk.errors(text) == []
    assert CONTRACT.operation("createCompletion").errors(text) != []


# ------------------------------------------------------------------ a replica's answers


async def _replica_answers(kind: Kind, include_usage: bool) -> tuple[dict[str, Any], str]:
    """A Serve replica's whole answer for three decode steps, and its stream of them."""

    async def steps() -> AsyncIterator[Delta]:
        yield Delta("Hel", None, 5, 1)
        yield Delta("lo", None, 5, 2)
        yield Delta("", "length", 5, 3)

    whole = Completion(kind, "ft:m")
    async for delta in steps():
        whole.add(delta)
    streamed = Completion(kind, "ft:m", include_usage)
    raw = b"".join([part async for part in sse_events(streamed, steps())]).decode()
    return whole.final(), raw


@pytest.mark.parametrize("include_usage", [False, True])
@pytest.mark.parametrize("kind", ["chat", "text"])
def test_a_replicas_answers_whole_and_streamed(kind: Kind, include_usage: bool) -> None:
    """Fast, without Ray: the objects workers/serving/openai_api.py builds (the served
    ones are checked end to end below)."""
    whole, raw = asyncio.run(_replica_answers(kind, include_usage))
    check_whole = CONTRACT.operation(
        "createChatCompletion" if kind == "chat" else "createCompletion"
    )
    check_whole.check(whole)
    _check_stream(
        sse_data(raw),
        CONTRACT.chat_chunk if kind == "chat" else CONTRACT.completion_chunk,
        include_usage,
    )
    if not include_usage:
        # The control plane's token meter reads the usage from a comment clients skip.
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        assert raw.endswith(
            f": {json.dumps({'usage': usage}, separators=(',', ':'))}\n\n" + "data: [DONE]\n\n"
        )


# ------------------------------------------------------------------ the control plane


def test_files(client: TestClient) -> None:
    t = make_tenant(client)
    h = t.headers
    empty = ok(client.get("/v1/files", headers=h), CONTRACT.operation("listFiles"))
    assert empty["data"] == [] and empty["has_more"] is False

    content = jsonl(chat_records(3))
    first = ok(upload(client, t, content), CONTRACT.operation("createFile"))
    second = ok(upload(client, t), CONTRACT.operation("createFile"))
    assert first["purpose"] == "fine-tune" and first["bytes"] == len(content)

    listed = ok(client.get("/v1/files", headers=h), CONTRACT.operation("listFiles"))
    assert [f["id"] for f in listed["data"]] == [second["id"], first["id"]]
    assert (listed["first_id"], listed["last_id"]) == (second["id"], first["id"])
    # OpenAI's `order` and its `limit` of up to 10,000 (more is served as 10,000).
    oldest = ok(
        client.get("/v1/files", params={"order": "asc", "limit": 1}, headers=h),
        CONTRACT.operation("listFiles"),
    )
    assert [f["id"] for f in oldest["data"]] == [first["id"]] and oldest["has_more"] is True
    many = client.get("/v1/files", params={"limit": 50_000}, headers=h)
    assert len(ok(many, CONTRACT.operation("listFiles"))["data"]) == 2

    got = ok(client.get(f"/v1/files/{first['id']}", headers=h), CONTRACT.operation("retrieveFile"))
    assert got == first
    r = client.get(f"/v1/files/{first['id']}/content", headers=h)
    assert r.status_code == 200
    # OpenAI's document gives the file's content as a string.
    CONTRACT.operation("downloadFile").check(r.text)
    assert r.content == content

    gone = client.delete(f"/v1/files/{first['id']}", headers=h)
    assert ok(gone, CONTRACT.operation("deleteFile")) == {
        "id": first["id"],
        "object": "file",
        "deleted": True,
    }


def test_jobs_events_and_checkpoints(client: TestClient) -> None:
    t = make_tenant(client)
    h = t.headers
    r = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "tiny-gpt2",
            "training_file": upload_ok(client, t),
            "validation_file": upload_ok(client, t),
            "suffix": "contract",
            "seed": 3,
            "metadata": {"team": "a"},
            "method": {
                "type": "supervised",
                "supervised": {"hyperparameters": {"n_epochs": 2, "learning_rate_multiplier": 2}},
            },
        },
        headers=h,
    )
    job = ok(r, CONTRACT.operation("createFineTuningJob"))
    path = f"/v1/fine_tuning/jobs/{job['id']}"
    ok(client.get(path, headers=h), CONTRACT.operation("retrieveFineTuningJob"))
    other = create_job_ok(client, t)
    JOB.check(other)

    jobs = CONTRACT.operation("listPaginatedFineTuningJobs")
    page = ok(client.get("/v1/fine_tuning/jobs", params={"limit": 1}, headers=h), jobs)
    assert [j["id"] for j in page["data"]] == [other["id"]] and page["has_more"] is True
    # No maximum in OpenAI's document: a large limit is served, as large a page as we serve.
    everything = ok(client.get("/v1/fine_tuning/jobs", params={"limit": 1000}, headers=h), jobs)
    assert [j["id"] for j in everything["data"]] == [other["id"], job["id"]]

    # Cancelled while queued (no cluster here): a running job's cancel passes through
    # "cancelling", which the job's status shows once the lead's status change lands.
    cancelled = ok(
        client.post(f"{path}/cancel", headers=h), CONTRACT.operation("cancelFineTuningJob")
    )
    assert cancelled["status"] == JobStatus.CANCELLED

    events_of = CONTRACT.operation("listFineTuningEvents")
    events = ok(client.get(f"{path}/events", params={"limit": 1000}, headers=h), events_of)
    assert len(events["data"]) == 2 and events["has_more"] is False
    # A status change is a message whose data names the status.
    assert [(e["type"], e["data"].get("status")) for e in events["data"]] == [
        ("message", JobStatus.CANCELLED),
        ("message", JobStatus.QUEUED),
    ]
    one = ok(client.get(f"{path}/events", params={"limit": 1}, headers=h), events_of)
    assert one["has_more"] is True

    checkpoints = CONTRACT.operation("listFineTuningJobCheckpoints")
    none = ok(client.get(f"{path}/checkpoints", params={"limit": 500}, headers=h), checkpoints)
    assert none["data"] == [] and none["has_more"] is False


def test_models(client: TestClient) -> None:
    t = make_tenant(client)
    h = t.headers
    job = create_job_ok(client, t)
    model_id = f"ft:tiny-gpt2:{t.name}:contract:{job['id']}"
    add_model(client.app.state.engine, t, job["id"], model_id)  # type: ignore[attr-defined]

    listed = ok(client.get("/v1/models", headers=h), CONTRACT.operation("listModels"))
    assert {"tiny-gpt2", model_id} <= {m["id"] for m in listed["data"]}
    retrieve = CONTRACT.operation("retrieveModel")
    assert ok(client.get("/v1/models/tiny-gpt2", headers=h), retrieve)["id"] == "tiny-gpt2"
    assert ok(client.get(f"/v1/models/{model_id}", headers=h), retrieve)["id"] == model_id
    deleted = ok(
        client.delete(f"/v1/models/{model_id}", headers=h), CONTRACT.operation("deleteModel")
    )
    assert deleted["deleted"] is True and deleted["id"] == model_id
    assert refused(client.get(f"/v1/models/{model_id}", headers=h), 404)["param"] == "model"


def test_errors(client: TestClient) -> None:
    t = make_tenant(client)
    h = t.headers
    assert refused(client.get("/v1/files/file-nope", headers=h), 404)["code"] == "not_found"
    refused(client.get("/v1/fine_tuning/jobs/ftjob-nope/events", headers=h), 404)
    refused(client.get("/v1/no/such/endpoint", headers=h), 404)
    bad = client.post(
        "/v1/fine_tuning/jobs", json={"model": "gpt-unknown", "training_file": "x"}, headers=h
    )
    assert refused(bad, 400)["param"] == "model"
    assert refused(client.get("/v1/files", params={"limit": 0}, headers=h), 400)["param"] == (
        "limit"
    )
    assert refused(upload(client, t, b"not json\n"), 400)["param"] == "file"
    inference = client.post("/v1/chat/completions", json={"model": "m", "messages": []}, headers=h)
    assert refused(inference, 400)["param"] == "messages"
    wrong_key = {"Authorization": "Bearer sk-wrong"}
    assert refused(client.get("/v1/models", headers=wrong_key), 401)["type"]
    refused(client.get("/v1/files"), 401)
    # The admin key is not a tenant's.
    assert client.get("/v1/files", headers=ADMIN).status_code in (401, 403)
    CONTRACT.error.check(client.get("/v1/files", headers=ADMIN).json())


# ------------------------------------------------------------------ pause and resume


def validate_pause_resume(
    http: httpx.Client | TestClient,
    job_id: str,
    until_paused: Callable[[], object] = lambda: None,
) -> None:
    """Pause `job_id` (a running job of `http`'s tenant), then resume it, checking both
    answers against pauseFineTuningJob and resumeFineTuningJob, the job as it is between
    them and after, and its events.

    For the tests of the pause operations, called with a job they have running;
    `until_paused` returns once the run has stopped (a pause waits for the next step)."""
    path = f"/v1/fine_tuning/jobs/{job_id}"
    paused = ok(http.post(f"{path}/pause"), CONTRACT.operation("pauseFineTuningJob"))
    assert paused["id"] == job_id
    until_paused()
    ok(http.get(path), CONTRACT.operation("retrieveFineTuningJob"))
    resumed = ok(http.post(f"{path}/resume"), CONTRACT.operation("resumeFineTuningJob"))
    assert resumed["id"] == job_id and resumed["status"] != "paused"
    ok(http.get(path), CONTRACT.operation("retrieveFineTuningJob"))
    ok(
        http.get(f"{path}/events", params={"limit": 100}),
        CONTRACT.operation("listFineTuningEvents"),
    )


def test_pause_and_resume_of_a_queued_job_are_refused_in_openais_shape(
    client: TestClient,
) -> None:
    """Nothing runs to pause, nothing is paused to resume: each a 400 in OpenAI's error
    shape, and the job unchanged. A running job's pause and resume are
    `validate_pause_resume`'s (tests/service/scheduling/test_pause_rules.py)."""
    t = make_tenant(client)
    path = f"/v1/fine_tuning/jobs/{create_job_ok(client, t)['id']}"
    for op in ("pause", "resume"):
        refused(client.post(f"{path}/{op}", headers=t.headers), 400)
        job = ok(client.get(path, headers=t.headers), CONTRACT.operation("retrieveFineTuningJob"))
        assert job["status"] == "queued"


# ------------------------------------------------------------------ a job that ran, served


def _finished(live_job: LiveJob) -> dict[str, Any]:
    assert live_job.wait_finished() == "succeeded"
    with live_job.stack.client() as c:
        return dict(c.get(f"/v1/fine_tuning/jobs/{live_job.job_id}").json())


@pytest.mark.ray
def test_a_job_that_ran(live_job: LiveJob) -> None:
    job = _finished(live_job)
    JOB.check(job)
    assert job["fine_tuned_model"] and job["trained_tokens"]
    path = f"/v1/fine_tuning/jobs/{live_job.job_id}"
    with live_job.stack.client() as c:
        ok(c.get(path), CONTRACT.operation("retrieveFineTuningJob"))
        ok(c.get("/v1/fine_tuning/jobs"), CONTRACT.operation("listPaginatedFineTuningJobs"))
        events = ok(
            c.get(f"{path}/events", params={"limit": 1000}),
            CONTRACT.operation("listFineTuningEvents"),
        )
        types = {e["type"] for e in events["data"]}
        assert types == {"message", "metrics"}, types
        statuses = [e["data"]["status"] for e in events["data"] if "status" in e["data"]]
        assert statuses[0] == JobStatus.SUCCEEDED and JobStatus.RUNNING in statuses
        checkpoints = ok(
            c.get(f"{path}/checkpoints", params={"limit": 1000}),
            CONTRACT.operation("listFineTuningJobCheckpoints"),
        )
        assert checkpoints["data"], "the job saved checkpoints"
        ok(c.get(f"/v1/files/{live_job.training_file}"), CONTRACT.operation("retrieveFile"))
        models = ok(c.get("/v1/models"), CONTRACT.operation("listModels"))
        assert job["fine_tuned_model"] in {m["id"] for m in models["data"]}
        ok(c.get(f"/v1/models/{job['fine_tuned_model']}"), CONTRACT.operation("retrieveModel"))


def _stream(c: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    with c.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        return sse_data(r.read().decode())


def _check_stream(chunks: list[Any], check: SchemaCheck, usage: bool) -> None:
    for chunk in chunks:
        check.check(chunk)
    assert any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)
    if not usage:
        # Not asked for: no usage chunk, and no usage on the others.
        assert all(c["choices"] and c.get("usage") is None for c in chunks), chunks
        return
    # Asked for: one more chunk, with no choices and the usage; none before it (a chat
    # chunk says `"usage": null`, as OpenAI's do).
    *pieces, last = chunks
    assert last["choices"] == [] and last["usage"]["total_tokens"] > 0, last
    assert all(c["choices"] and c.get("usage") is None for c in pieces), pieces
    if last["object"] == "chat.completion.chunk":
        assert all("usage" in c for c in pieces), pieces


@pytest.mark.ray
def test_chat_completions_and_completions_served(
    live_job: LiveJob, ray_cluster: RayCluster
) -> None:
    model = _finished(live_job)["fine_tuned_model"]
    stack = live_job.stack
    # The first request waits for Serve to start the model's replica.
    http = httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=300
    )
    chat = {"model": model, "messages": [{"role": "user", "content": "Count after 3:"}]}
    chat |= {"max_tokens": 4, "temperature": 0}
    text = {"model": model, "prompt": "Count after 3:", "max_tokens": 4, "temperature": 0}
    include = {"stream_options": {"include_usage": True}}
    try:
        whole = ok(
            http.post("/v1/chat/completions", json=chat), CONTRACT.operation("createChatCompletion")
        )
        assert whole["choices"][0]["message"]["refusal"] is None and whole["usage"]
        _check_stream(_stream(http, "/v1/chat/completions", chat), CONTRACT.chat_chunk, False)
        chunks = _stream(http, "/v1/chat/completions", chat | include)
        _check_stream(chunks, CONTRACT.chat_chunk, True)
        assert chunks[-1]["usage"] == whole["usage"], "greedy: the same tokens either way"

        done = ok(http.post("/v1/completions", json=text), CONTRACT.operation("createCompletion"))
        assert done["usage"]["completion_tokens"] > 0
        _check_stream(_stream(http, "/v1/completions", text), CONTRACT.completion_chunk, False)
        pieces = _stream(http, "/v1/completions", text | include)
        _check_stream(pieces, CONTRACT.completion_chunk, True)
        assert pieces[-1]["usage"] == done["usage"]

        # Refused by the model's replica itself (the prompt is past the context).
        long = {**text, "prompt": "one two three " * 2000}
        assert refused(http.post("/v1/completions", json=long), 400)["param"] == "prompt"
    finally:
        http.close()
        shut_down_serve(ray_cluster)


def test_a_dpo_job_continuing_a_model_and_its_lineage(client: TestClient) -> None:
    t = make_tenant(client)
    h = t.headers
    parent_job = create_job_ok(client, t)
    parent = f"ft:tiny-gpt2:{t.name}::{parent_job['id']}"
    add_model(client.app.state.engine, t, parent_job["id"], parent)  # type: ignore[attr-defined]
    pairs = {
        "input": {"messages": [{"role": "user", "content": "Say hi."}]},
        "preferred_output": [{"role": "assistant", "content": "Hi!"}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    r = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": parent,
            "training_file": upload_ok(client, t, jsonl([pairs] * 4)),
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1}}},
        },
        headers=h,
    )
    job = ok(r, CONTRACT.operation("createFineTuningJob"))
    assert job["model"] == parent
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    shown = ok(client.get(f"/v1/models/{parent}", headers=h), CONTRACT.operation("retrieveModel"))
    assert shown["lineage"] == ["tiny-gpt2"] and shown["parent"] is None
