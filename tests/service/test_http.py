"""Every error is in OpenAI's shape, FastAPI's own included; ops endpoints answer."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient

from tests.factories import make_tenant


def _is_openai_error(body: dict[str, object]) -> bool:
    err = body.get("error")
    return isinstance(err, dict) and set(err) == {"message", "type", "param", "code"}


def test_framework_errors_have_the_openai_shape(client: TestClient) -> None:
    t = make_tenant(client)
    r = client.get("/v1/nothing-here", headers=t.headers)
    assert r.status_code == 404 and _is_openai_error(r.json())
    r = client.put("/v1/files", headers=t.headers)
    assert r.status_code == 405 and _is_openai_error(r.json())
    r = client.post(
        "/v1/fine_tuning/jobs",
        content=b"{not json",
        headers={**t.headers, "content-type": "application/json"},
    )
    assert r.status_code == 400 and _is_openai_error(r.json())
    r = client.post("/v1/fine_tuning/jobs", json=[1, 2], headers=t.headers)
    assert r.status_code == 400 and _is_openai_error(r.json())
    r = client.get("/v1/fine_tuning/jobs", params={"limit": "lots"}, headers=t.headers)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"


def test_oversized_json_body_is_413(client: TestClient) -> None:
    t = make_tenant(client)
    big = b'{"model": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    r = client.post(
        "/v1/fine_tuning/jobs",
        content=big,
        headers={**t.headers, "content-type": "application/json"},
    )
    assert r.status_code == 413 and _is_openai_error(r.json())


def test_ops_endpoints_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"
    schema = client.get("/openapi.json").json()
    assert "/v1/fine_tuning/jobs" in schema["paths"]
    assert "/v1/files" in schema["paths"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_oversized_body_without_content_length_is_413_while_it_streams(
    client: TestClient,
) -> None:
    t = make_tenant(client)

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "'
        for _ in range(40):
            yield b"x" * 64 * 1024  # 2.5 MiB in all, past the 1 MiB JSON limit
        yield b'"}'

    r = client.post(
        "/v1/fine_tuning/jobs",
        content=chunks(),
        headers={**t.headers, "content-type": "application/json"},
    )
    assert r.status_code == 413 and _is_openai_error(r.json())
    assert client.get("/healthz").status_code == 200
