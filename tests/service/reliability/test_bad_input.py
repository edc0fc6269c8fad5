"""Bad input to every endpoint answers a 4xx in OpenAI's error shape, and the service
stays healthy: wrong types, huge bodies, deep nesting, unicode edge cases, NaN and huge
numbers, invalid cursors and ids, unknown fields. Runs on SQLite and PostgreSQL (which
refuses some values SQLite stores, such as a NUL character)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.factories import ADMIN, TenantHandle, create_job_ok, make_tenant, upload, upload_ok

# How many bad requests were sent, by status (the run's tally; -s prints it).
TALLY: Counter[int] = Counter()

NUL = "a\u0000b"
LONE_SURROGATE_JSON = b'"\\ud800"'
BAD_BODIES: dict[str, bytes] = {
    "not_json": b"{not json",
    "empty": b"",
    "array": b"[1, 2]",
    "string": b'"a string"',
    "number": b"123",
    "null": b"null",
    "deep_arrays": b"[" * 100_000 + b"]" * 100_000,
    "deep_objects": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "nan_literal": b'{"model": NaN, "name": NaN, "weight": NaN, "min_replicas": NaN}',
    "infinity_literal": b'{"model": Infinity, "weight": -Infinity, "priority": Infinity}',
    "huge_int": b'{"model": "m", "seed": ' + b"9" * 4000 + b', "weight": ' + b"9" * 4000 + b"}",
    "huge_float": b'{"model": "m", "weight": 1e400, "priority": -1e400}',
    "lone_surrogate": b'{"model": '
    + LONE_SURROGATE_JSON
    + b', "name": '
    + LONE_SURROGATE_JSON
    + b"}",
    "nul_chars": json.dumps({"model": NUL, "name": NUL, "training_file": NUL}).encode(),
    "invalid_utf8": b'{"model": "\xff\xfe", "name": "\xc0\xaf"}',
    "utf16": '{"model": "m"}'.encode("utf-16"),
    "bom_prefix": b'\xef\xbb\xbf{"model": "m"}',
    "rtl_and_zero_width": json.dumps({"model": "\u202egpt\u200b", "name": "\u202e"}).encode(),
    "unknown_fields_only": b'{"zzz_unknown": 1, "__proto__": {"admin": true}}',
    "wrong_types": b'{"model": 1, "name": 2, "training_file": [], "weight": "1", "messages": 3}',
    "too_large": b'{"model": "' + b"x" * (2 * 1024 * 1024) + b'"}',
}


@pytest.fixture(scope="module", autouse=True)
def _print_tally() -> Iterator[None]:
    yield
    print(f"\nbad-input requests: {sum(TALLY.values())}, by status: {dict(sorted(TALLY.items()))}")


def _is_openai_error(r: Any) -> bool:
    try:
        err = r.json().get("error")
    except ValueError:
        return False
    # Every 4xx names a code (clients branch on it; null told them nothing).
    return (
        isinstance(err, dict)
        and set(err) == {"message", "type", "param", "code"}
        and isinstance(err["code"], str)
    )


def _send(client: TestClient, method: str, url: str, body: Any, headers: dict[str, str]) -> Any:
    """JSON with NaN and Infinity written as literals (httpx's `json=` refuses them)."""
    content = json.dumps(body).encode()
    return client.request(
        method, url, content=content, headers={**headers, "content-type": "application/json"}
    )


def _refused(r: Any, what: object) -> None:
    TALLY[r.status_code] += 1
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
    assert _is_openai_error(r), (what, r.text[:300])


@pytest.fixture
def world(client: TestClient) -> Iterator[dict[str, Any]]:
    a = make_tenant(client, "bad-input")
    file_id = upload_ok(client, a)
    job_id = create_job_ok(client, a, training_file=file_id)["id"]
    yield {"tenant": a, "file": file_id, "job": job_id}
    # Still healthy, and still working for a normal request.
    assert client.get("/healthz").status_code == 200
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}", headers=a.headers).status_code == 200


def _operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    schema = client.get("/openapi.json").json()
    return [
        (method.upper(), path, op)
        for path, item in schema["paths"].items()
        if path.startswith("/v1/")
        for method, op in item.items()
    ]


def _fill(path: str, world: dict[str, Any]) -> str:
    t: TenantHandle = world["tenant"]
    ids = {
        "tenant_id": t.id,
        "file_id": world["file"],
        "job_id": world["job"],
        "model_id": "tiny-gpt2",
        "key_id": "key-0",
        "deployment_id": "dep-0",
        "webhook_id": "wh-0",
        "secret_name": "SOME_SECRET",
    }
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value).replace("{" + name + ":path}", value)
    assert "{" not in path, f"no id to put into {path}"
    return path


def _headers(path: str, world: dict[str, Any]) -> dict[str, str]:
    return ADMIN if path.startswith("/v1/admin/") else world["tenant"].headers


def test_bad_json_bodies_to_every_endpoint_that_takes_one(
    client: TestClient, world: dict[str, Any]
) -> None:
    sent = 0
    for method, path, op in _operations(client):
        content = op.get("requestBody", {}).get("content", {})
        if "application/json" not in content:
            continue
        url = _fill(path, world)
        optional = not op["requestBody"].get("required", False)
        for name, body in BAD_BODIES.items():
            if optional and name in ("empty", "null"):
                continue  # no body is a valid request there
            headers = {**_headers(path, world), "content-type": "application/json"}
            _refused(client.request(method, url, content=body, headers=headers), (path, name))
            sent += 1
    assert sent >= 8 * len(BAD_BODIES), "jobs, tenants, keys, deployments, inference"


# Field by field on the richest bodies: each value is wrong for its field.
JOB_FIELD_CASES: list[tuple[str, Any]] = [
    ("seed", True),
    ("seed", -1),
    ("seed", 2**31),
    ("seed", 1.5),
    ("seed", "7"),
    ("priority", 101),
    ("priority", -101),
    ("suffix", "../../etc"),
    ("suffix", "a:b"),
    ("suffix", "x" * 65),
    ("suffix", NUL),
    ("metadata", {"k": 1}),
    ("metadata", {str(i): "v" for i in range(17)}),
    ("metadata", ["a"]),
    ("hyperparameters", {"n_epochs": 0}),
    ("hyperparameters", {"n_epochs": 10**12}),
    ("hyperparameters", {"n_epochs": "three"}),
    ("hyperparameters", {"n_epochs": True}),
    ("hyperparameters", {"batch_size": -4}),
    ("hyperparameters", {"learning_rate": -1e-3}),
    ("hyperparameters", {"learning_rate": 0}),
    ("hyperparameters", {"learning_rate_multiplier": "lots"}),
    ("hyperparameters", {"bogus": 1}),
    ("method", {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": -1}}}),
    ("method", {"type": "unsupervised"}),
    ("adapter", {"type": "lora", "r": 0}),
    ("adapter", {"type": "lora", "r": 10**9}),
    ("adapter", {"type": "lora", "dropout": 1.0}),
    ("adapter", {"type": "lora", "target_modules": []}),
    ("adapter", {"type": "dora"}),
    ("adapter", {"type": "lora", "bogus": 1}),
    ("resources", {"num_workers": 0}),
    ("resources", {"num_workers": 10**6}),
    ("resources", {"cpus_per_worker": -1}),
    ("resources", {"use_gpu": "yes"}),
    ("resources", {"bogus": 1}),
    ("task", "generation"),
    ("search", {"space": {}}),
    ("search", {"space": {"learning_rate": {"type": "uniform", "low": 1, "high": 0}}}),
    ("search", {"space": {"learning_rate": {"type": "loguniform", "low": -1, "high": 1}}}),
    ("search", {"space": {"learning_rate": {"type": "choice", "values": [True]}}}),
    ("search", {"space": {"rm -rf": {"type": "choice", "values": [1]}}}),
    ("search", {"space": {"learning_rate": {"type": "choice", "values": [0.1]}}, "num_trials": 0}),
    ("training_file", "x" * 65),
    ("training_file", ""),
    ("model", "x" * 257),
    ("integrations", [{"type": "wandb"}]),
    ("zzz_unknown", 1),
]
# Python's json writes NaN and Infinity literals, which the service's parser accepts.
for _field in ("seed", "priority"):
    JOB_FIELD_CASES += [(_field, float("nan")), (_field, float("inf"))]
JOB_FIELD_CASES += [
    ("hyperparameters", {"learning_rate": float("nan")}),
    ("hyperparameters", {"learning_rate_multiplier": float("inf")}),
    ("resources", {"cpus_per_worker": float("nan")}),
    ("search", {"space": {"learning_rate": {"type": "uniform", "low": float("nan"), "high": 1}}}),
]


def test_every_job_field_refuses_wrong_values_naming_it(
    client: TestClient, world: dict[str, Any]
) -> None:
    t: TenantHandle = world["tenant"]
    base = {"model": "tiny-gpt2", "training_file": world["file"]}
    for field, value in JOB_FIELD_CASES:
        r = _send(client, "POST", "/v1/fine_tuning/jobs", {**base, field: value}, t.headers)
        _refused(r, (field, value))
        param = r.json()["error"]["param"]
        assert param is None or param.split(".")[0].split("[")[0] in (field, "spec"), (
            field,
            value,
            r.text,
        )
    # The OpenAI client's own default, "auto", is a value, not an error.
    auto = {"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}
    r = client.post(
        "/v1/fine_tuning/jobs", json={**base, "hyperparameters": auto}, headers=t.headers
    )
    assert r.status_code == 200, r.text


ADMIN_CASES: list[dict[str, Any]] = [
    {"name": NUL},
    {"name": "../x"},
    {"name": "a b"},
    {"name": "x" * 65},
    {"name": "ok1", "weight": 0},
    {"name": "ok2", "weight": -1},
    {"name": "ok3", "weight": float("nan")},
    {"name": "ok4", "weight": float("inf")},
    {"name": "ok5", "weight": "1"},
    {"name": "ok6", "quotas": {"max_gpus": True}},
    {"name": "ok7", "quotas": {"max_running_jobs": -1}},
    {"name": "ok8", "quotas": {"max_queued_jobs": 10**30}},
    {"name": "ok9", "quotas": {"max_jobs_typo": 3}},
    {"name": "ok10", "quotas": [1]},
    {"name": "ok11", "bogus": 1},
]


def test_admin_bodies_refuse_wrong_values(client: TestClient, world: dict[str, Any]) -> None:
    for body in ADMIN_CASES:
        _refused(_send(client, "POST", "/v1/admin/tenants", body, ADMIN), body)
    tenant = world["tenant"].id
    for body in ({"weight": float("nan")}, {"quotas": {"max_gpus": "2"}}, {"name": "rename"}):
        r = _send(client, "PATCH", f"/v1/admin/tenants/{tenant}", body, ADMIN)
        _refused(r, body)
    for body in ({"name": "x" * 129}, {"name": 5}, {"name": NUL}, {"scope": "admin"}):
        r = _send(client, "POST", f"/v1/admin/tenants/{tenant}/api_keys", body, ADMIN)
        _refused(r, body)
    assert [t["name"] for t in client.get("/v1/admin/tenants", headers=ADMIN).json()["data"]] == [
        "bad-input"
    ]


BAD_CURSORS = ["nope", NUL, "../../etc/passwd", "x" * 4000, "\u202e\ufeff", "' OR 1=1 --", "%00"]
BAD_LIMITS = ["-1", "0", "1e9", "NaN", "lots", "1.5", ""]
# OpenAI's lists set no maximum: a larger limit than we serve gets our largest page.
SHARED_LISTS = (
    "/v1/files",
    "/v1/fine_tuning/jobs",
    "/v1/fine_tuning/jobs/{job_id}/events",
    "/v1/fine_tuning/jobs/{job_id}/checkpoints",
)


def test_invalid_cursors_and_limits_on_every_list(
    client: TestClient, world: dict[str, Any]
) -> None:
    lists = [
        (path, op)
        for method, path, op in _operations(client)
        if method == "GET"
        and any(p["name"] in ("after", "limit") for p in op.get("parameters", []))
    ]
    assert len(lists) >= 4, [p for p, _ in lists]
    for path, op in lists:
        url = _fill(path, world)
        names = {p["name"] for p in op["parameters"]}
        headers = _headers(path, world)
        if "after" in names:
            for cursor in BAD_CURSORS:
                _refused(client.get(url, params={"after": cursor}, headers=headers), (path, cursor))
        if "limit" in names:
            for limit in BAD_LIMITS:
                _refused(client.get(url, params={"limit": limit}, headers=headers), (path, limit))
        if path in SHARED_LISTS:
            r = client.get(url, params={"limit": str(10**30)}, headers=headers)
            assert r.status_code == 200, (path, r.text)
    assert {p for p, _ in lists} >= set(SHARED_LISTS)


BAD_IDS = [
    "nope",
    "%00",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e",
    "x" * 2000,
    "%E2%80%AE%EF%BB%BF",
    "%F0%9F%92%A9",
    "%FF%FE",
    "'%20OR%201=1",
]


def test_unknown_and_malformed_ids_are_404_on_every_endpoint_that_takes_one(
    client: TestClient, world: dict[str, Any]
) -> None:
    t: TenantHandle = world["tenant"]
    with_ids = [(m, p) for m, p, _ in _operations(client) if "{" in p and m in ("GET", "DELETE")]
    assert len(with_ids) >= 10
    for method, path in with_ids:
        for bad in BAD_IDS:
            url = path.split("{")[0] + bad + path.split("}", 1)[1]
            if "{" in url:  # a second id (a tenant's key): the first one is real
                url = _fill(url, world)
            headers = ADMIN if path.startswith("/v1/admin/") else t.headers
            r = client.request(method, url, headers=headers)
            _refused(r, (method, url[:80]))
            assert r.status_code in (400, 404), (method, url[:80], r.text[:200])


def test_bad_uploads(client: TestClient, world: dict[str, Any]) -> None:
    t: TenantHandle = world["tenant"]
    for filename in [
        "../../../etc/passwd",
        "/abs/x.jsonl",
        "C:\\win\\x.jsonl",
        NUL,
        "\u202e.jsonl",
    ]:
        r = upload(client, t, filename=filename)
        assert r.status_code == 200, r.text
        assert "/" not in r.json()["filename"] and "\\" not in r.json()["filename"]
        assert "\x00" not in r.json()["filename"]
    cases: list[dict[str, Any]] = [
        {"content": b'{"file": "x"}', "headers": {"content-type": "application/json"}},
        {"data": {"purpose": "fine-tune"}},
        {"files": {"file": ("a.jsonl", b'{"text": "a"}\n', "text/plain")}},
        {"files": {"file": ("a.jsonl", b'{"text": "a"}\n')}, "data": {"purpose": "x" * 5000}},
        {"files": {"file": ("a.jsonl", b'{"text": "a"}\n')}, "data": {"purpose": NUL}},
        {
            "content": b"--b\r\nbroken",
            "headers": {"content-type": "multipart/form-data; boundary=b"},
        },
        {"files": {"file": ("a.jsonl", b"\x00" * 1000)}, "data": {"purpose": "fine-tune"}},
    ]
    for case in cases:
        headers = {**t.headers, **case.pop("headers", {})}
        _refused(client.post("/v1/files", headers=headers, **case), case)
