"""Job metadata: OpenAI's limits on create, and `GET /v1/fine_tuning/jobs?metadata[k]=v`
as OpenAI's Python client sends it (on SQLite and on PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from pydantic import ValidationError

from service.errors import BadRequest
from service.jobs.schemas import JobCreate, metadata_filter
from tests.factories import TenantHandle, create_job, create_job_ok, make_tenant, upload_ok

JOBS = "/v1/fine_tuning/jobs"


def _query(metadata: dict[str, str], **params: Any) -> str:
    """The query string OpenAI's client builds for `jobs.list(metadata=..., ...)`."""
    client = OpenAI(api_key="unused", base_url="http://unused/v1")
    return str(client.qs.stringify({"metadata": metadata, **params}))


def _listed(client: TestClient, t: TenantHandle, query: str) -> list[str]:
    r = client.get(f"{JOBS}?{query}", headers=t.headers)
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()["data"]]


LIMITS: list[tuple[str, Any, str, str]] = [
    ("17_pairs", {f"k{i}": "v" for i in range(17)}, "metadata", "at most 16 key-value pairs"),
    ("key_of_65", {"k" * 65: "v"}, "metadata", "keys are at most 64"),
    ("value_of_513", {"team": "v" * 513}, "metadata.team", "at most 512 characters"),
    ("number_value", {"team": 3}, "metadata.team", "valid string"),
    ("null_value", {"team": None}, "metadata.team", "valid string"),
    ("not_an_object", ["team"], "metadata", "valid dictionary"),
]


@pytest.mark.parametrize(("name", "metadata", "param", "says"), LIMITS, ids=[c[0] for c in LIMITS])
def test_metadata_beyond_openais_limits_is_refused_naming_the_param(
    client: TestClient, name: str, metadata: Any, param: str, says: str
) -> None:
    t = make_tenant(client)
    r = create_job(client, t, metadata=metadata)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["type"]) == (param, "invalid_request_error"), err
    assert says in err["message"], err
    assert client.get(JOBS, headers=t.headers).json()["data"] == []


def test_metadata_at_the_limits_is_kept() -> None:
    at_limits = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    body = JobCreate.model_validate({"model": "m", "training_file": "f", "metadata": at_limits})
    assert body.metadata == at_limits
    with pytest.raises(ValidationError, match="keys are at most 64"):
        JobCreate.model_validate({"model": "m", "training_file": "f", "metadata": {"k" * 65: ""}})


def test_the_filter_is_read_as_openais_client_writes_it() -> None:
    query = [("limit", "2"), ("metadata[team]", "a b"), ("metadata[x[y]]", "1&2")]
    found = metadata_filter(query)
    assert found.pairs == {"team": "a b", "x[y]": "1&2"} and not found.no_metadata
    assert metadata_filter([("metadata", "null")]).no_metadata
    assert metadata_filter([("after", "x")]).pairs == {}
    refused = [
        ([("metadata", "team")], "metadata"),
        ([("metadata", "null"), ("metadata[a]", "b")], "metadata"),
        ([("metadata[a]", "1"), ("metadata[a]", "2")], "metadata[a]"),
        ([("metadata[a", "1")], "metadata[a"),
        ([("metadata[" + "k" * 65 + "]", "1")], "metadata[" + "k" * 65 + "]"),
        ([("metadata[a]", "v" * 513)], "metadata[a]"),
        ([(f"metadata[k{i}]", "v") for i in range(17)], "metadata"),
    ]
    for query, param in refused:
        with pytest.raises(BadRequest) as caught:
            metadata_filter(query)
        assert caught.value.param == param, query


def test_list_filters_on_metadata_pairs_and_pages(client: TestClient) -> None:
    t = make_tenant(client)
    other = make_tenant(client)
    file_id = upload_ok(client, t)

    def job(**metadata: str) -> str:
        return create_job_ok(client, t, training_file=file_id, metadata=metadata or None)["id"]

    plain = job()
    search_a = [job(team="search", run=str(i)) for i in range(3)]
    ads = job(team="ads", run="0")
    odd = job(**{'quote"d': "é", "dotted.key": "x[0]"})
    empty = create_job_ok(client, t, training_file=file_id, metadata={})["id"]
    create_job_ok(client, other, metadata={"team": "search"})  # another tenant's

    # One pair; newest first, as every list.
    assert _listed(client, t, _query({"team": "search"})) == search_a[::-1]
    # Two pairs AND together.
    assert _listed(client, t, _query({"team": "search", "run": "1"})) == [search_a[1]]
    assert _listed(client, t, _query({"run": "0"})) == [ads, search_a[0]]
    # No match; a value is matched exactly, as a string.
    assert _listed(client, t, _query({"team": "nobody"})) == []
    assert _listed(client, t, _query({"team": "Search"})) == []
    assert _listed(client, t, _query({"team": "search", "run": "9"})) == []
    # Keys that a JSON path would have to quote or escape.
    assert _listed(client, t, _query({'quote"d': "é"})) == [odd]
    assert _listed(client, t, _query({"dotted.key": "x[0]"})) == [odd]
    # No filter, and the jobs without metadata.
    assert len(_listed(client, t, _query({}))) == 7
    assert _listed(client, t, "metadata=null") == [plain]
    assert empty not in _listed(client, t, "metadata=null")

    # Pages of a filtered list: `after` and `limit` as without a filter.
    seen: list[str] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        r = client.get(f"{JOBS}?{_query({'team': 'search'}, **params)}", headers=t.headers)
        page = r.json()
        seen += [j["id"] for j in page["data"]]
        assert all(j["metadata"]["team"] == "search" for j in page["data"])
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == search_a[::-1]
    # A cursor that is a job outside the filter still pages from where it stands.
    assert _listed(client, t, _query({"team": "search"}, after=ads)) == search_a[::-1]
    assert _listed(client, t, _query({"team": "search"}, after=search_a[1])) == [search_a[0]]


def test_a_malformed_filter_is_a_400_naming_it(client: TestClient) -> None:
    t = make_tenant(client)
    for query, param in (
        ("metadata=team", "metadata"),
        ("metadata=null&metadata[a]=b", "metadata"),
        ("metadata[a]=1&metadata[a]=2", "metadata[a]"),
        (f"metadata[{'k' * 65}]=v", f"metadata[{'k' * 65}]"),
    ):
        r = client.get(f"{JOBS}?{query}", headers=t.headers)
        assert r.status_code == 400, (query, r.text)
        assert r.json()["error"]["param"] == param, r.json()


def test_the_openai_sdk_creates_and_filters_on_metadata(client: TestClient) -> None:
    t = make_tenant(client)
    sdk = OpenAI(api_key=t.key, base_url="http://testserver/v1", http_client=client, max_retries=0)
    file_id = upload_ok(client, t)
    made = [
        sdk.fine_tuning.jobs.create(
            model="tiny-gpt2", training_file=file_id, metadata={"team": team, "n": str(i)}
        )
        for i, team in enumerate(["search", "ads", "search", "search"])
    ]
    assert made[0].metadata == {"team": "search", "n": "0"}
    assert sdk.fine_tuning.jobs.retrieve(made[1].id).metadata == {"team": "ads", "n": "1"}
    # The SDK's auto-pagination keeps the filter on every page it follows.
    found = sdk.fine_tuning.jobs.list(metadata={"team": "search"}, limit=1)
    assert [j.id for j in found] == [made[3].id, made[2].id, made[0].id]
    both = sdk.fine_tuning.jobs.list(metadata={"team": "search", "n": "2"})
    assert [j.id for j in both.data] == [made[2].id]
    assert all(j.estimated_finish is None for j in found)  # none of them runs
