"""The /ui dashboard in a real headless Chromium (Debian's, driven by Playwright) against a
real control plane that ran a real job on the session's Ray cluster.

The screenshot of the job page lands in test-artifacts/ (git-ignored) for a human to look
at; the assertions are on the DOM."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import create_engine
from sqlmodel import Session

from service.common import now
from service.jobs.state import add_event
from service.models import Trial
from tests.factories import jsonl, prompt_completion_records
from tests.fixtures.live_stack import LIVE_JOB_STEPS, LiveJob, LiveStack

ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("chromium is not installed: run `make setup` (scripts/ensure_chromium.sh)")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Chromium's sandbox needs user namespaces, which a root container does not give.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_binary(), headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.set_default_timeout(30_000)
    yield pg
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"


def sign_in(page: Page, stack: LiveStack, key: str) -> None:
    page.goto(f"{stack.url}/ui/")
    page.fill("#api-key", key)
    page.click("#signin-form button[type=submit]")


def test_the_page_is_locked_down(api_only_stack: LiveStack) -> None:
    r = httpx.get(f"{api_only_stack.url}/ui/")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert httpx.get(f"{api_only_stack.url}/ui/static/..%2Frouter.py").status_code == 404


def test_a_wrong_key_is_refused(page: Page, api_only_stack: LiveStack) -> None:
    sign_in(page, api_only_stack, "tp-not-a-key")
    page.wait_for_selector("#signin-error:has-text('refused')")
    assert page.is_visible("#signin")
    assert page.evaluate("sessionStorage.getItem('tuneplane.apiKey')") is None


@pytest.mark.ray
def test_sign_in_and_see_a_finished_job_with_its_loss_curves(page: Page, live_job: LiveJob) -> None:
    assert live_job.wait_finished() == "succeeded"
    stack = live_job.stack
    sign_in(page, stack, stack.api_key)
    row = page.locator("#jobs-table tr", has=page.locator(f"a:text-is('{live_job.job_id}')"))
    row.wait_for()
    assert "succeeded" in row.inner_text()
    # The key lives in this tab only.
    assert page.evaluate("sessionStorage.getItem('tuneplane.apiKey')") == stack.api_key
    assert page.evaluate("localStorage.length") == 0

    row.locator("a").first.click()
    page.wait_for_url(f"**/ui/#/jobs/{live_job.job_id}")
    chart = page.locator("#loss-chart")
    chart.locator("circle.train").first.wait_for()
    # One training-loss point per step, validation points every 2 steps, drawn as lines.
    assert chart.locator("circle.train").count() == LIVE_JOB_STEPS
    assert chart.get_attribute("data-train-points") == str(LIVE_JOB_STEPS)
    assert chart.locator("circle.eval").count() >= LIVE_JOB_STEPS // 2
    assert chart.locator("polyline.series-train").get_attribute("points")
    assert chart.locator("polyline.series-eval").get_attribute("points")
    page.locator("#events-table").get_by_text("successfully completed").wait_for()
    fine_tuned = f"ft:tiny-gpt2:{stack.tenant_name}:live:{live_job.job_id}"
    details = page.locator("dl.fields")
    assert details.locator("dt:text-is('Fine-tuned model') + dd").inner_text() == fine_tuned
    assert "n_epochs" in details.locator("dt:text-is('Hyperparameters') + dd").inner_text()
    assert page.locator(".toolbar .badge").inner_text() == "succeeded"
    assert page.locator("#cancel-job").count() == 0  # nothing to cancel once it ended
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-job.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.click("nav a[data-page=models]")
    models = page.locator("#models-table")
    models.wait_for()
    models.get_by_text(fine_tuned).wait_for()

    page.click("nav a[data-page=deployments]")
    page.locator("h1:text-is('Deployments')").wait_for()

    page.click("#signout")
    page.locator("#signin").wait_for()
    assert page.evaluate("sessionStorage.getItem('tuneplane.apiKey')") is None


def metric(s: Session, job_id: str, tenant_id: str, kind: str, step: int, loss: float,
           trial: str) -> None:  # fmt: skip
    """A per-step metrics event as the event consumer stores it."""
    key = "train_loss" if kind == "metrics" else "eval_loss"
    data = {"kind": kind, "step": step, key: loss, "trial_id": trial}
    add_event(s, job_id, tenant_id, f"Step {step}: {key}={loss}", type_="metrics", data=data)


HOSTILE = '<img src=x onerror="window.__xss=1">'


def test_a_search_shows_its_trials_and_untrusted_text_stays_text(
    page: Page, api_only_stack: LiveStack
) -> None:
    """The API-only stack queues the search without running it; its trials and an event
    carrying markup are written as the event consumer would write them."""
    stack = api_only_stack
    with stack.client() as c:
        ids = []
        for name in ("t.jsonl", "v.jsonl"):
            files = {"file": (name, jsonl(prompt_completion_records(8)), "application/jsonl")}
            r = c.post("/v1/files", files=files, data={"purpose": "fine-tune"})
            ids.append(r.json()["id"])
        search = {
            "space": {"learning_rate": {"type": "grid", "values": [0.001, 0.01]}},
            "algorithm": "grid",
            "metric": "eval_loss",
            "mode": "min",
        }
        r = c.post(
            "/v1/fine_tuning/jobs",
            json={"model": "tiny-gpt2", "training_file": ids[0], "validation_file": ids[1],
                  "search": search},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
    engine = create_engine(stack.database_url)
    with Session(engine) as s:
        for i, (lr, best) in enumerate(((0.001, 1.25), (0.01, 0.75))):
            s.add(
                Trial(
                    id=f"fttrial-{job_id}-{i}",
                    job_id=job_id,
                    tenant_id=stack.tenant_id,
                    trial_id=f"trial_{i}",
                    status="terminated",
                    params={"learning_rate": lr},
                    metrics={"eval_loss": best},
                    best_metric=best,
                    iterations=4,
                    created_at=now(),
                    updated_at=now(),
                )
            )
        add_event(s, job_id, stack.tenant_id, f"line 3 of your file: {HOSTILE}", level="warn")
        for trial in ("trial_0", "trial_1"):
            for step in (1, 2):
                metric(s, job_id, stack.tenant_id, "metrics", step, 2.0 / step, trial)
            metric(s, job_id, stack.tenant_id, "eval", 2, 1.5, trial)
        s.commit()

    sign_in(page, stack, stack.api_key)
    page.locator("#jobs-table").wait_for()
    page.goto(f"{stack.url}/ui/#/jobs/{job_id}")
    trials = page.locator("#trials-table tbody tr")
    trials.nth(1).wait_for()
    assert trials.count() == 2
    assert "0.7500" in trials.nth(1).inner_text() and "0.01" in trials.nth(1).inner_text()
    assert "Best eval_loss" in (page.locator("#trials-table thead").text_content() or "")
    events = page.locator("#events-table")
    events.get_by_text(HOSTILE, exact=False).wait_for()
    assert events.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None

    # One training and one validation curve per trial, each in the trial's colour.
    chart = page.locator("#loss-chart")
    assert chart.locator("polyline.trial").count() == 4
    colours = {chart.locator(f"polyline.series-train[data-trial={t}]").get_attribute("stroke")
               for t in ("trial_0", "trial_1")}  # fmt: skip
    assert len(colours) == 2
    assert chart.locator("circle.train").count() == 4
    # The page is live: a new step shows up without a reload.
    with Session(engine) as s:
        metric(s, job_id, stack.tenant_id, "metrics", 3, 0.5, "trial_1")
        s.commit()
    engine.dispose()
    chart.locator("circle.train").nth(4).wait_for()
    assert chart.locator("circle.train").count() == 5
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-search.png"), full_page=True)

    # A queued job can be cancelled from its page.
    page.click("#cancel-job")
    page.locator(".toolbar .badge:text-is('cancelled')").wait_for()
