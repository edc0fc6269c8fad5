"""The dashboard's playground in a real headless Chromium against real control planes: on
the session's Ray cluster, a fine-tune and its base answering side by side, streamed (a
real classifier's label scores: test_dashboard_forms, whose form makes one); on the
API-only stack (no Serve), the choices the page offers and refuses, and the API's errors
in the columns."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import Page
from sqlalchemy import create_engine
from sqlmodel import Session

from service.common import now
from service.models import FineTunedModel, Job
from tests.factories import classification_records, jsonl
from tests.fixtures.live_stack import LiveJob, LiveStack
from tests.fixtures.ray_cluster import RayCluster, shut_down_serve
from tests.fixtures.stack import wait_for
from tests.service.ui.browser import check_layout, new_tenant, sign_in

# The live job's training prompts look like this one.
MESSAGE = "Count after 3:"
# The first request to a model waits for Serve to start its replica.
SERVED_MS = 240_000


@pytest.fixture
def free_serve(ray_cluster: RayCluster) -> Iterator[None]:
    """Frees the shared cluster's CPUs the test's model replicas hold."""
    yield
    shut_down_serve(ray_cluster)


def api(stack: LiveStack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=300
    )


def answered(page: Page, side: str) -> None:
    """Waits for the column's request to end, and says why if it failed."""
    column = page.locator(f"#pg-answer-{side}")
    page.locator(
        f"#pg-answer-{side}:is([data-state=done], [data-state=error], [data-state=stopped])"
    ).wait_for(timeout=SERVED_MS)
    assert column.get_attribute("data-state") == "done", column.inner_text()


@pytest.mark.ray
@pytest.mark.usefixtures("free_serve")
def test_a_fine_tune_and_its_base_stream_their_answers_side_by_side(
    page: Page, live_job: LiveJob
) -> None:
    assert live_job.wait_finished() == "succeeded"
    stack = live_job.stack
    fine_tuned = f"ft:tiny-gpt2:{stack.tenant_name}:live:{live_job.job_id}"
    sign_in(page, stack)
    page.goto(f"{stack.url}/ui/#/playground?{urlencode({'model': fine_tuned})}")
    page.locator("#pg-answer-b").wait_for()
    # A fine-tune is compared with its base unless the link says otherwise.
    assert page.locator("#pg-model").input_value() == fine_tuned
    assert page.locator("#pg-compare").input_value() == "tiny-gpt2"
    assert page.locator("#pg-answer-a h2").text_content() == fine_tuned
    assert page.locator("#pg-answer-b h2").text_content() == "tiny-gpt2"
    assert page.locator("#pg-temperature").input_value() == "0"
    assert page.locator("#pg-max-tokens").input_value() == "64"
    page.fill("#pg-message", MESSAGE)
    page.fill("#pg-max-tokens", "8")
    page.click("#pg-send")
    answered(page, "a")
    answered(page, "b")

    # Greedy decoding: the streamed pieces, joined, are the whole answer a plain request
    # gets, and the stream's usage chunk is that request's usage.
    with api(stack) as c:
        for side, model in (("a", fine_tuned), ("b", "tiny-gpt2")):
            r = c.post(
                "/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": MESSAGE}],
                      "max_tokens": 8, "temperature": 0},
            )  # fmt: skip
            assert r.status_code == 200, r.text
            whole = r.json()
            expected = whole["choices"][0]["message"]["content"]
            assert expected, whole
            assert page.locator(f"#pg-text-{side}").text_content() == expected, model
            usage = whole["usage"]
            stats = page.locator(f"#pg-stats-{side}").inner_text()
            tokens = f"{usage['completion_tokens']} tokens (prompt {usage['prompt_tokens']})"
            assert stats.startswith(tokens), stats
            assert " s" in stats
    assert page.locator("#pg-send").is_enabled()
    assert page.locator("#pg-stop").is_hidden()
    check_layout(page, "playground", ready="#pg-answer-a")

    # The usage page: today's bar is the day's tokens, trained and served, as the API
    # sums them; the table has the job's training and the fine-tune's requests.
    with api(stack) as c:

        def today() -> dict[str, dict[str, int]] | None:
            body = c.get("/v1/usage", params={"group_by": ["model", "kind"], "limit": 1}).json()
            rows = {f"{r['model']} {r['kind']}": r for r in body["data"][-1]["results"]}
            served = rows.get(f"{fine_tuned} inference")
            # The meter writes its batch every half second.
            return rows if served and served["num_model_requests"] >= 2 else None

        rows = wait_for(today, 10, "the playground's requests in the usage")
    page.goto(f"{stack.url}/ui/#/usage")
    bars = page.locator("#usage-chart g.day")
    bars.last.wait_for()
    assert bars.count() == 7
    total = sum(
        r[k] for r in rows.values() for k in ("trained_tokens", "input_tokens", "output_tokens")
    )
    assert int(bars.last.get_attribute("data-total") or 0) == total
    table = page.locator("#usage-table").inner_text()
    assert "tiny-gpt2" in table and "training" in table and "inference" in table
    assert rows["tiny-gpt2 training"]["trained_tokens"] > 0
    check_layout(page, "usage", ready="#usage-chart")


def test_the_playground_refuses_mixed_kinds_and_shows_the_apis_errors(
    page: Page, api_only_stack: LiveStack
) -> None:
    """The API-only stack has no Serve: every answer is the API's 503, which each column
    shows; its classifier is registered as the event consumer registers a job's model."""
    stack = api_only_stack
    name, key = new_tenant(stack, "playground")
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as c:
        files = {"file": ("labels.jsonl", jsonl(classification_records(8)), "application/jsonl")}
        r = c.post("/v1/files", files=files, data={"purpose": "fine-tune"})
        assert r.status_code == 200, r.text
        r = c.post(
            "/v1/fine_tuning/jobs", json={"model": "tiny-bert", "training_file": r.json()["id"]}
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
    classifier = f"ft:tiny-bert:{name}:clf:{job_id}"
    engine = create_engine(stack.database_url)
    with Session(engine) as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.add(FineTunedModel.of_job(job, id=classifier, artifact_uri="file:///nowhere",
                                    created_at=now()))  # fmt: skip
        s.commit()
    engine.dispose()

    sign_in(page, stack, key)
    # The newest fine-tune opens the page; its base encoder, which cannot classify, is not
    # offered to compare it with.
    page.goto(f"{stack.url}/ui/#/playground")
    page.locator("#pg-answer-a").wait_for()
    assert page.locator("#pg-model").input_value() == classifier
    assert page.locator("#pg-compare").input_value() == ""
    assert page.locator("#pg-answer-b").count() == 0
    assert page.locator("#pg-compare option[value='tiny-bert']").count() == 0
    assert "tiny-bert" in page.locator("#pg-form .hint").first.inner_text()
    page.select_option("#pg-compare", "tiny-gpt2")
    note = page.locator("#pg-note")
    assert "cannot answer the same request" in note.inner_text()
    assert page.locator("#pg-send").is_disabled()
    page.select_option("#pg-compare", label="none")
    assert note.is_hidden()
    assert page.locator("#pg-send").is_enabled()
    page.click("#pg-send")  # nothing typed: said at the field, nothing sent
    assert page.locator(".field-error[data-param=input]").inner_text() == "Type a text to classify."
    assert page.locator("#pg-answer-a").get_attribute("data-state") == "idle"
    page.fill("#pg-message", "review 9: great")
    page.click("#pg-send")
    error = page.locator("#pg-answer-a .error")
    error.wait_for()
    assert "Serving is not configured" in error.inner_text()
    assert page.locator("#pg-send").is_enabled()

    # Two text models, by link: each column shows the error body of its refused stream.
    query = urlencode({"model": "tiny-gpt2", "compare": "tiny-llama"})
    page.goto(f"{stack.url}/ui/#/playground?{query}")
    page.locator("#pg-answer-b[data-model='tiny-llama']").wait_for()
    assert page.locator("label[for=pg-message]").inner_text() == "Message"
    page.fill("#pg-max-tokens", "0")
    page.fill("#pg-message", "Say hi.")
    page.click("#pg-send")
    limit = page.locator(".field-error[data-param=max_tokens]")
    assert limit.inner_text() == "A whole number from 1 to 4096."
    page.fill("#pg-max-tokens", "8")
    page.press("#pg-message", "Control+Enter")
    for side in "ab":
        shown = page.locator(f"#pg-answer-{side} .error")
        shown.wait_for()
        assert "Serving is not configured" in shown.inner_text()
    assert limit.is_hidden()
    check_layout(page, "playground-errors", ready="#pg-answer-b .error")
