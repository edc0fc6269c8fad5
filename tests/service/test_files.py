from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.files.service import clean_filename
from tests.factories import (
    chat_records,
    classification_records,
    create_job_ok,
    jsonl,
    make_tenant,
    prompt_completion_records,
    text_records,
    upload,
    upload_ok,
)
from tests.fixtures.app import UPLOAD_LIMIT


@pytest.mark.parametrize(
    ("records", "fmt"),
    [
        (chat_records(3), "chat"),
        (prompt_completion_records(3), "prompt_completion"),
        (text_records(3), "text"),
        (classification_records(3), "classification"),
    ],
)
def test_each_format_is_accepted(client: TestClient, records: list[Any], fmt: str) -> None:
    t = make_tenant(client)
    r = upload(client, t, jsonl(records))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "file"
    assert body["purpose"] == "fine-tune"
    assert body["status"] == "processed"
    assert body["format"] == fmt
    assert body["examples"] == 3
    assert body["bytes"] == len(jsonl(records))


def _lines(*lines: str) -> bytes:
    return ("\n".join(lines) + "\n").encode()


CHAT_OK = json.dumps(chat_records(1)[0])
BAD_FILES: list[tuple[str, bytes, str]] = [
    ("not_json", _lines(CHAT_OK, "{not json"), "line 2: not valid JSON"),
    ("empty", b"", "file is empty"),
    ("only_blank_lines", b"\n\n  \n", "file is empty"),
    ("missing_completion", _lines('{"prompt": "hi"}'), "line 1: missing field 'completion'"),
    (
        "wrong_role",
        _lines(CHAT_OK, '{"messages": [{"role": "bot", "content": "x"}]}'),
        "line 2: messages[0].role 'bot' is not one of",
    ),
    (
        "empty_content",
        _lines(
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": " "},
                    ]
                }
            )
        ),
        "line 1: messages[1].content is empty",
    ),
    (
        "no_assistant",
        _lines('{"messages": [{"role": "user", "content": "hi"}]}'),
        "line 1: no assistant message",
    ),
    (
        "missing_label",
        _lines(
            '{"text": "a", "label": "x"}',
            '{"text": "b", "label": "y"}',
            '{"text": "c", "label": null}',
        ),
        "line 3: missing field 'label'",
    ),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary data"),
    ("bad_utf8", _lines('{"text": "ok"}') + b'{"text": "\xff\xfe"}\n', "line 2: not valid UTF-8"),
    ("not_an_object", _lines("[1, 2, 3]"), "line 1: expected a JSON object"),
    ("unknown_shape", _lines('{"question": "a", "answer": "b"}'), "line 1: no known format"),
    (
        "mixed_formats",
        _lines('{"text": "hello"}', '{"prompt": "a", "completion": "b"}'),
        "line 2: this line is in format 'prompt_completion' but the file is in format 'text'",
    ),
    ("empty_text", _lines('{"text": "   "}'), "line 1: 'text' is empty"),
    ("bool_label", _lines('{"text": "a", "label": true}'), "line 1: 'label' must be a string"),
    (
        "one_label_only",
        _lines('{"text": "a", "label": 1}', '{"text": "b", "label": 1}'),
        "two distinct labels",
    ),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_are_refused_naming_the_line(
    client: TestClient, name: str, content: bytes, message: str
) -> None:
    t = make_tenant(client)
    r = upload(client, t, content)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "invalid_file"
    assert err["param"] == "file"
    assert message in err["message"]
    # Nothing half-written is visible.
    assert client.get("/v1/files", headers=t.headers).json()["data"] == []


def test_file_over_the_size_limit_is_refused(client: TestClient) -> None:
    t = make_tenant(client)
    line = json.dumps({"text": "x" * 1000}) + "\n"
    big = (line * (UPLOAD_LIMIT // len(line) + 2)).encode()
    r = upload(client, t, big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] in ("payload_too_large",)
    assert client.get("/v1/files", headers=t.headers).json()["data"] == []
    # Far over the limit: refused from the declared length, before the body is read.
    r = upload(client, t, big * 3)
    assert r.status_code == 413


def test_list_retrieve_content_delete(client: TestClient) -> None:
    t = make_tenant(client)
    content = jsonl(text_records(5))
    r = upload(client, t, content, filename="../../etc/passwd.jsonl")
    assert r.status_code == 200
    file = r.json()
    assert file["filename"] == "passwd.jsonl"
    assert client.get(f"/v1/files/{file['id']}", headers=t.headers).json() == file
    got = client.get(f"/v1/files/{file['id']}/content", headers=t.headers)
    assert got.status_code == 200
    assert got.content == content
    listed = client.get("/v1/files", headers=t.headers).json()
    assert [f["id"] for f in listed["data"]] == [file["id"]]
    r = client.delete(f"/v1/files/{file['id']}", headers=t.headers)
    assert r.json() == {"id": file["id"], "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file['id']}", headers=t.headers).status_code == 404
    assert client.get(f"/v1/files/{file['id']}/content", headers=t.headers).status_code == 404


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("..\\..\\win.jsonl", "win.jsonl"),
        ("/abs/path/a.jsonl", "a.jsonl"),
        ("bell\x07\x00.jsonl", "bell.jsonl"),
        ("..", "upload.jsonl"),
        (None, "upload.jsonl"),
        ("x" * 400, "x" * 255),
    ],
)
def test_filenames_are_reduced_to_a_safe_display_name(raw: str | None, clean: str) -> None:
    assert clean_filename(raw) == clean


def test_files_paginate(client: TestClient) -> None:
    t = make_tenant(client)
    ids = [upload_ok(client, t) for _ in range(5)]
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = client.get("/v1/files", params=params, headers=t.headers).json()
        seen += [f["id"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == list(reversed(ids))


def test_unsupported_purpose_is_refused(client: TestClient) -> None:
    t = make_tenant(client)
    r = upload(client, t, purpose="assistants")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "purpose"


def test_file_in_use_by_a_queued_job_cannot_be_deleted(client: TestClient) -> None:
    t = make_tenant(client)
    file_id = upload_ok(client, t)
    job = create_job_ok(client, t, training_file=file_id)
    r = client.delete(f"/v1/files/{file_id}", headers=t.headers)
    assert r.status_code == 409
    assert r.json()["error"]["code"] == "file_in_use"
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel", headers=t.headers)
    assert client.delete(f"/v1/files/{file_id}", headers=t.headers).status_code == 200


def test_upload_retry_with_idempotency_key_returns_the_same_file(client: TestClient) -> None:
    t = make_tenant(client)
    first = upload(client, t, headers={"Idempotency-Key": "up-1"})
    again = upload(client, t, headers={"Idempotency-Key": "up-1"})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert len(client.get("/v1/files", headers=t.headers).json()["data"]) == 1


def _preference(preferred: str, non_preferred: str) -> dict[str, Any]:
    return {
        "input": {
            "messages": [
                {"role": "system", "content": "Answer with one animal."},
                {"role": "user", "content": "Which animal is red?"},
            ]
        },
        "preferred_output": [{"role": "assistant", "content": preferred}],
        "non_preferred_output": [{"role": "assistant", "content": non_preferred}],
    }


def test_preference_files_are_checked_at_upload(client: TestClient) -> None:
    t = make_tenant(client)
    good = [_preference("The cat.", "The dog."), _preference("A fox.", "A cow.")]
    bad = [*good, {**_preference("The cat.", "The dog."), "prefered_output": []}]
    r = upload(client, t, jsonl(bad))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("invalid_file", "file")
    assert "line 3: unknown field 'prefered_output'" in err["message"]
    same = [_preference("The cat.", "The cat.")]
    r = upload(client, t, jsonl(same))
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "line 1: preferred_output[0].content and non_preferred_output[0].content" in message
    assert client.get("/v1/files", headers=t.headers).json()["data"] == []
    r = upload(client, t, jsonl(good))
    assert r.status_code == 200, r.text
    assert (r.json()["format"], r.json()["examples"]) == ("preference", 2)
    stored = client.get(f"/v1/files/{r.json()['id']}", headers=t.headers).json()
    assert stored["format"] == "preference"
