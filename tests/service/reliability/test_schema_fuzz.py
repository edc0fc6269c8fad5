"""Schemathesis over the OpenAPI schema: generated requests, valid and invalid, to every
/v1 operation as a tenant and as the admin. No answer may be a 5xx, and every answer must
match what the schema documents (status code, body shape, content type)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import positive_data_acceptance

from service.config import Settings
from service.main import create_app
from tests.factories import ADMIN, create_job_ok, make_tenant, upload_ok
from tests.fixtures.app import ADMIN_KEY, UPLOAD_LIMIT

EXAMPLES = 12
# A schema-valid request may still be refused on the service's rules (a model not in the
# catalog, a cursor that is no object's id, max_replicas below min_replicas): a 400 there
# is the correct answer, not a failure. Every other check of schemathesis runs.
EXCLUDED: list[Any] = [positive_data_acceptance]
# What the generated requests got, by status class: the run's tally (-s prints it).
TALLY: Counter[str] = Counter()


@dataclass
class FuzzTarget:
    app: FastAPI
    headers: dict[str, dict[str, str]]


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    settings_ = Settings(
        data_dir=tmp_path_factory.mktemp("fuzz"),
        admin_key=ADMIN_KEY,
        max_upload_bytes=UPLOAD_LIMIT,
    )
    app = create_app(settings_)
    with TestClient(app) as client:  # runs the migrations
        t = make_tenant(client, "fuzz")
        # Something to find: a file and a job of the tenant.
        create_job_ok(client, t, training_file=upload_ok(client, t))
        yield FuzzTarget(app, {"tenant": t.headers, "admin": ADMIN})
    print(
        f"\nschemathesis: {sum(TALLY.values())} requests, by status: {dict(sorted(TALLY.items()))}"
    )


def test_no_5xx_and_every_answer_matches_the_schema(fuzz_target: FuzzTarget) -> None:
    # Driven by hand rather than through `schema.parametrize()`: schemathesis's lazy pytest
    # integration sets a private pytest attribute that pytest 9 no longer has.
    api = schemathesis.openapi.from_asgi("/openapi.json", fuzz_target.app).include(
        path_regex="^/v1/"
    )
    failures: dict[str, str] = {}
    operations = 0
    for result in api.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err raises here: fine
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def run(case: schemathesis.Case) -> None:
                for role in ("tenant", "admin"):
                    response = case.call_and_validate(
                        headers=fuzz_target.headers[role], excluded_checks=EXCLUDED
                    )
                    TALLY[f"{response.status_code // 100}xx"] += 1

            try:
                run()
            except Unsatisfiable:
                # Only a negative run may find nothing to make invalid: an operation
                # whose only inputs are unconstrained strings (ids in the path), or none.
                # A positive run must always generate.
                if mode is not GenerationMode.NEGATIVE:
                    raise
            except (AssertionError, FailureGroup) as exc:
                lines = [ln for ln in str(exc).splitlines() if ln.strip()]
                failures[f"{operation.method.upper()} {operation.path} ({mode.value})"] = "\n".join(
                    lines[:12]
                )
    assert operations >= 20, "the schema lists the API's operations"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
