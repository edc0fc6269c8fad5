"""The /ui dashboard's read-only pages in a real headless Chromium against a real control
plane that ran a real job on the session's Ray cluster (and an API-only one whose jobs
stay queued, their steps written as the event consumer writes them)."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import create_engine
from sqlmodel import Session

from service.common import now
from service.jobs.state import add_event, transition
from service.models import FineTunedModel, Job, Trial
from service.models.status import JobStatus
from tests.factories import classification_records, jsonl, prompt_completion_records
from tests.fixtures.live_stack import LIVE_JOB_EPOCHS, LIVE_JOB_STEPS, LiveJob, LiveStack
from tests.service.ui.browser import ARTIFACTS, check_layout, sign_in


def test_the_page_is_locked_down(api_only_stack: LiveStack) -> None:
    r = httpx.get(f"{api_only_stack.url}/ui/")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert httpx.get(f"{api_only_stack.url}/ui/static/..%2Frouter.py").status_code == 404


def test_a_wrong_key_is_refused(page: Page, api_only_stack: LiveStack) -> None:
    sign_in(page, api_only_stack, "tp-not-a-key", wait=False)
    page.wait_for_selector("#signin-error:has-text('refused')")
    check_layout(page, "signin", ready="#signin h1")
    assert page.is_visible("#signin")
    assert not page.is_visible("#nav")  # signed out: no way into the pages
    assert page.evaluate("sessionStorage.getItem('tuneplane.apiKey')") is None


@pytest.mark.ray
def test_sign_in_and_see_a_finished_job_with_its_loss_curves(page: Page, live_job: LiveJob) -> None:
    assert live_job.wait_finished() == "succeeded"
    stack = live_job.stack
    sign_in(page, stack, stack.api_key)
    row = page.locator("#jobs-table tr", has=page.locator(f"[data-id='{live_job.job_id}']"))
    row.wait_for()
    assert "succeeded" in row.inner_text()
    # The id is shortened in the table; the whole id is on hover.
    link = row.locator("td:first-child a")
    assert link.get_attribute("title") == live_job.job_id
    assert len(link.inner_text()) < len(live_job.job_id)
    check_layout(page, "jobs", ready="#jobs-table")
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
    # The run's final validation loss; no accuracy for a language model; a CPU job.
    final_eval = details.locator("dt:text-is('Validation loss') + dd").inner_text()
    assert re.fullmatch(r"\d+\.\d{4}( \(step \d+\))?", final_eval), final_eval
    assert page.locator("#accuracy-chart").count() == 0
    assert details.locator("dt:text-is('Validation accuracy')").count() == 0
    assert "gpus_per_worker" not in details.locator("dt:text-is('Resources') + dd").inner_text()
    # Hyperparameters as key/value pairs, not JSON; the learning rate's own chart.
    assert page.locator("#job-hyperparameters dt:text-is('n_epochs') + dd").inner_text() == str(
        LIVE_JOB_EPOCHS
    )
    lr = page.locator("#learning-rate-chart")
    assert lr.get_attribute("data-train-points") == str(LIVE_JOB_STEPS)
    first_rate = (lr.locator("circle title").first.text_content() or "").split()[-1]
    assert re.fullmatch(r"\d\.\d{3}e[-+]\d+", first_rate), first_rate
    # Every other metric it reports, one at a time: tokens per second first, then a pick.
    assert page.locator("#more-metric").input_value() == "tokens_per_second"
    more = page.locator("#more-chart")
    assert more.get_attribute("data-train-points") == str(LIVE_JOB_STEPS)
    page.select_option("#more-metric", "trained_tokens")
    page.locator("#more-chart[aria-label='trained_tokens by step']").wait_for()
    # Its kept checkpoints, each a model to try: "Try" opens the playground on it.
    with stack.client() as c:
        kept = c.get(f"/v1/fine_tuning/jobs/{live_job.job_id}/checkpoints").json()["data"]
    assert kept, "the job kept checkpoints"
    rows = page.locator("#checkpoints-table tbody tr")
    assert rows.count() == len(kept)
    newest = kept[0]["fine_tuned_model_checkpoint"]
    first = rows.first
    assert first.locator("td").first.inner_text() == str(kept[0]["step_number"])
    assert first.locator(f"a[data-model='{newest}']").count() == 1
    assert "train_loss" in first.inner_text()
    check_layout(page, "job", ready="#loss-chart")
    first.locator("a:text-is('Try')").click()
    page.locator("#pg-model").wait_for()
    assert page.locator("#pg-model").input_value() == newest
    page.go_back()
    page.locator("#loss-chart").wait_for()
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
    check_layout(page, "models", ready="#models-table")
    models.locator(f"a[data-model='{fine_tuned}']").first.click()
    page.locator("#deploy-model").wait_for()
    check_layout(page, "model", ready="#deploy-model")

    page.click("nav a[data-page=deployments]")
    page.locator("h1:text-is('Deployments')").wait_for()
    check_layout(page, "deployments")

    page.click("#signout")
    page.locator("#signin").wait_for()
    assert page.evaluate("sessionStorage.getItem('tuneplane.apiKey')") is None


def metric(s: Session, job_id: str, tenant_id: str, kind: str, step: int, loss: float,
           trial: str) -> None:  # fmt: skip
    """A per-step metrics event as the event consumer stores it."""
    key = "train_loss" if kind == "metrics" else "eval_loss"
    data = {"kind": kind, "step": step, key: loss, "trial_id": trial}
    add_event(s, job_id, tenant_id, f"Step {step}: {key}={loss}", type_="metrics", data=data)


def point(s: Session, job_id: str, tenant_id: str, **data: object) -> None:
    """A metrics event (data: kind, step and its numbers) as the event consumer stores it."""
    add_event(s, job_id, tenant_id, f"step {data['step']}", type_="metrics", data=data)


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
    check_layout(page, "job-search", ready="#trials-table")

    # An id shortened on the page is copied whole.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.locator(".toolbar button.copy").click()
    page.locator(".toolbar button.copy .copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == job_id
    training = page.locator("dt:text-is('Training file') + dd .id")
    assert training.get_attribute("data-id") == ids[0]
    assert training.locator("span[title]").get_attribute("title") == ids[0]
    training.locator("button.copy").click()
    training.locator(".copied").wait_for()
    assert page.evaluate("navigator.clipboard.readText()") == ids[0]
    # Times read "just now", the absolute time on hover.
    created = page.locator("dt:text-is('Created') + dd time")
    assert created.inner_text() == "just now"
    assert created.get_attribute("title")

    # A queued job can be cancelled from its page.
    page.click("#cancel-job")
    page.locator(".toolbar .badge:text-is('cancelled')").wait_for()


def test_a_classification_job_shows_validation_loss_and_accuracy(
    page: Page, api_only_stack: LiveStack
) -> None:
    """Validation loss next to training loss, validation accuracy in a chart of its own and
    the latest validation metrics in the details; a CPU job shows no GPU fields."""
    stack = api_only_stack
    with stack.client() as c:
        ids = []
        for name, n in (("ct.jsonl", 8), ("cv.jsonl", 4)):
            files = {"file": (name, jsonl(classification_records(n)), "application/jsonl")}
            r = c.post("/v1/files", files=files, data={"purpose": "fine-tune"})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        r = c.post(
            "/v1/fine_tuning/jobs",
            json={"model": "tiny-bert", "training_file": ids[0], "validation_file": ids[1],
                  "resources": {"num_workers": 1, "use_gpu": False}},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        job = r.json()
        assert job["task"] == "sequence_classification"
        assert "gpus_per_worker" not in job["resources"]  # a CPU job has no GPU fields
        r = c.post(
            "/v1/fine_tuning/jobs",
            json={"model": "tiny-gpt2", "training_file": lm_training_file(c),
                  "resources": {"num_workers": 1, "use_gpu": True, "gpus_per_worker": 2}},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        gpu_job_id = r.json()["id"]
    engine = create_engine(stack.database_url)
    with Session(engine) as s:
        for step in (1, 2, 3, 4):
            point(s, job["id"], stack.tenant_id, kind="metrics", step=step, train_loss=1.0 / step)
        point(s, job["id"], stack.tenant_id, kind="eval", step=2, eval_loss=0.9, eval_accuracy=0.5)
        point(s, job["id"], stack.tenant_id, kind="eval", step=4, eval_loss=0.6125,
              eval_accuracy=0.75)  # fmt: skip
        s.commit()
    engine.dispose()

    sign_in(page, stack, stack.api_key)
    page.locator("#jobs-table").wait_for()
    page.goto(f"{stack.url}/ui/#/jobs/{job['id']}")
    accuracy = page.locator("#accuracy-chart")
    accuracy.locator("circle.eval").nth(1).wait_for()
    assert accuracy.locator("circle.eval").count() == 2
    assert accuracy.get_attribute("data-eval-points") == "2"
    assert accuracy.get_attribute("data-train-points") == "0"
    assert accuracy.locator("polyline.series-eval").get_attribute("points")
    # Its y axis is 0..1 whatever the values; its steps line up with the loss chart's.
    ticks = accuracy.locator("text.tick").all_text_contents()
    assert "0.00" in ticks and "1.00" in ticks and "1" in ticks, ticks
    titles = accuracy.locator("circle.eval title").all_text_contents()
    assert "step 4: validation accuracy 0.7500" in titles, titles
    assert "validation accuracy" in page.locator("#accuracy .legend").inner_text()
    loss = page.locator("#loss-chart")
    assert loss.locator("circle.train").count() == 4
    assert loss.locator("circle.eval").count() == 2
    assert loss.locator("polyline.series-eval").get_attribute("points")
    assert "validation loss" in page.locator(".legend").first.inner_text()
    details = page.locator("dl.fields")
    assert details.locator("dt:text-is('Validation loss') + dd").inner_text() == "0.6125 (step 4)"
    assert details.locator("dt:text-is('Validation accuracy') + dd").inner_text() == (
        "0.7500 (step 4)"
    )
    resources = details.locator("dt:text-is('Resources') + dd").inner_text()
    assert "cpus_per_worker" in resources and "gpus_per_worker" not in resources, resources
    # No stray "null" text where an optional part of the page was left out.
    stray = "[...document.querySelectorAll('#view div')].some((d) => [...d.childNodes]"
    stray += ".some((n) => n.nodeType === Node.TEXT_NODE && n.textContent === 'null'))"
    assert page.evaluate(stray) is False
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-classification.png"), full_page=True)

    # A GPU job shows its GPUs; a language model has no accuracy chart, and no validation
    # metrics before any validation pass.
    page.goto(f"{stack.url}/ui/#/jobs/{gpu_job_id}")
    page.locator(f".toolbar h1:text-is('{gpu_job_id}')").wait_for()
    gpus = page.locator("#job-resources dt:text-is('gpus_per_worker') + dd")
    assert gpus.inner_text() == "2"
    assert page.locator("#accuracy-chart").count() == 0
    assert details.locator("dt:text-is('Validation loss')").count() == 0


def lm_training_file(c: httpx.Client) -> str:
    """A prompt/completion training file's id."""
    files = {"file": ("lm.jsonl", jsonl(prompt_completion_records(4)), "application/jsonl")}
    r = c.post("/v1/files", files=files, data={"purpose": "fine-tune"})
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_a_running_job_shows_its_metadata_as_text_and_its_estimated_finish(
    page: Page, api_only_stack: LiveStack
) -> None:
    """The job is set running and its steps written as the event consumer would."""
    stack = api_only_stack
    metadata = {"team": "search", "note": HOSTILE}
    with stack.client() as c:
        r = c.post(
            "/v1/fine_tuning/jobs",
            json={"model": "tiny-gpt2", "training_file": lm_training_file(c), "metadata": metadata},
        )
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
    engine = create_engine(stack.database_url)
    started = now() - 30
    with Session(engine) as s:
        assert transition(s, job_id, JobStatus.RUNNING, started_at=started)
        for step in (1, 2, 3):  # 10 s a step, 7 of 10 steps left: about 70 s from now
            add_event(s, job_id, stack.tenant_id, f"step {step}", type_="metrics",
                      data={"kind": "metrics", "step": step, "train_loss": 1.0,
                            "total_steps": 10}, created_at=started + 10 * step)  # fmt: skip
        s.commit()
    engine.dispose()
    with stack.client() as c:
        eta = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()["estimated_finish"]
    assert eta is not None and 60 <= eta - now() <= 80, eta

    sign_in(page, stack, stack.api_key)
    page.locator("#jobs-table").wait_for()
    page.goto(f"{stack.url}/ui/#/jobs/{job_id}")
    shown = page.locator("#job-eta")
    shown.wait_for()
    assert re.fullmatch(r"in 1m [01]\ds", shown.inner_text()), shown.inner_text()
    pairs = page.locator("#job-metadata")
    assert pairs.locator("dt:text-is('team') + dd").inner_text() == "search"
    assert pairs.locator("dt:text-is('note') + dd").inner_text() == HOSTILE
    assert pairs.locator("img").count() == 0
    assert page.evaluate("window.__xss") is None
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-running.png"), full_page=True)

    # Pause and resume as its state allows: a running job offers Pause; once the run has
    # paused (written as the event consumer writes it) it offers Resume, which queues it.
    badge = page.locator(".toolbar .badge")
    assert page.locator("#resume-job").count() == 0
    page.click("#pause-job")
    expect(badge).to_have_text("pausing")
    assert page.locator("#pause-job").count() == 0 and page.locator("#cancel-job").count() == 1
    with Session(engine) as s:
        assert transition(s, job_id, JobStatus.PAUSED)
        s.commit()
    engine.dispose()
    expect(badge).to_have_text("paused")
    page.click("#resume-job")
    expect(badge).to_have_text("queued")
    assert page.locator("#resume-job").count() == 0


PREFERENCE_PAIRS = [
    {
        "input": {"messages": [{"role": "user", "content": f"Name colour {i}."}]},
        "preferred_output": [{"role": "assistant", "content": f"Colour {i} is red."}],
        "non_preferred_output": [{"role": "assistant", "content": "No."}],
    }
    for i in range(4)
]


def register_model(s: Session, job_id: str, model_id: str) -> None:
    """The job's fine-tuned model, registered as the event consumer registers a succeeded
    job's (its parent comes from the job)."""
    job = s.get(Job, job_id)
    assert job is not None
    s.add(FineTunedModel.of_job(job, id=model_id, artifact_uri="file:///nowhere", created_at=now()))


def test_a_dpo_job_on_a_fine_tuned_model_shows_its_method_parent_and_reward_charts(
    page: Page, api_only_stack: LiveStack
) -> None:
    """SFT, then DPO on the SFT model: the DPO job's page, its model's parent in the models
    list, and the lineage on the model's page. Steps and models are written as the event
    consumer writes them."""
    stack = api_only_stack
    engine = create_engine(stack.database_url)
    with stack.client() as c:
        r = c.post("/v1/fine_tuning/jobs",
                   json={"model": "tiny-gpt2", "training_file": lm_training_file(c)})  # fmt: skip
        assert r.status_code == 200, r.text
        sft_id = r.json()["id"]
        parent = f"ft:tiny-gpt2:{stack.tenant_name}:sft:{sft_id}"
        with Session(engine) as s:
            register_model(s, sft_id, parent)
            s.commit()
        files = {"file": ("pairs.jsonl", jsonl(PREFERENCE_PAIRS), "application/jsonl")}
        pairs = c.post("/v1/files", files=files, data={"purpose": "fine-tune"}).json()["id"]
        r = c.post(
            "/v1/fine_tuning/jobs",
            json={"model": parent, "training_file": pairs, "validation_file": pairs,
                  "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25}}}},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
    child = f"ft:tiny-gpt2:{stack.tenant_name}:dpo:{job_id}"
    with Session(engine) as s:
        register_model(s, job_id, child)
        for step, accuracy, margin in ((1, 0.5, 0.0), (2, 0.75, 0.5)):
            point(s, job_id, stack.tenant_id, kind="metrics", step=step, train_loss=0.69,
                  train_reward_accuracy=accuracy, train_reward_margin=margin)  # fmt: skip
        point(s, job_id, stack.tenant_id, kind="eval", step=2, eval_loss=0.6,
              eval_reward_accuracy=0.75, eval_reward_margin=0.375)  # fmt: skip
        s.commit()
    engine.dispose()

    sign_in(page, stack, stack.api_key)
    page.locator("#jobs-table").wait_for()
    page.goto(f"{stack.url}/ui/#/jobs/{job_id}")
    rewards = page.locator("#reward-accuracy-chart")
    rewards.locator("circle.eval").first.wait_for()
    assert rewards.get_attribute("data-train-points") == "2"
    assert rewards.get_attribute("data-eval-points") == "1"
    ticks = rewards.locator("text.tick").all_text_contents()
    assert "0.00" in ticks and "1.00" in ticks, ticks
    titles = rewards.locator("circle title").all_text_contents()
    assert "step 2: validation reward accuracy 0.7500" in titles, titles
    assert "step 1: training reward accuracy 0.5000" in titles, titles
    margins = page.locator("#reward-margin-chart")
    assert margins.get_attribute("data-train-points") == "2"
    assert margins.get_attribute("data-eval-points") == "1"
    assert "validation reward margin" in page.locator("#reward-margin .legend").inner_text()
    assert page.locator("#loss-chart circle.train").count() == 2
    assert page.locator("#accuracy-chart").count() == 0  # no classification accuracy here
    details = page.locator("dl.fields")
    assert details.locator("dt:text-is('Method') + dd").inner_text() == "dpo (beta 0.25)"
    assert details.locator("dt:text-is('Base model') + dd").inner_text() == "tiny-gpt2"
    assert details.locator("dt:text-is('Validation reward accuracy') + dd").inner_text() == (
        "0.7500 (step 2)"
    )
    assert details.locator("dt:text-is('Validation reward margin') + dd").inner_text() == (
        "0.3750 (step 2)"
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-dpo.png"), full_page=True)
    check_layout(page, "job-dpo", ready="#reward-margin-chart")

    # "Continues" links to the parent's page: its lineage is its base model.
    details.locator("dt:text-is('Continues') + dd a").click()
    # Model ids may wrap only after a colon (<wbr>), so they are matched by their text.
    page.locator("h1.name", has_text=parent).wait_for()
    assert page.locator("h1.name").inner_text() == parent
    assert page.locator("#model-lineage li").all_inner_texts() == ["tiny-gpt2", parent]

    page.click("nav a[data-page=models]")
    row = page.locator(
        "#models-table tr", has=page.locator(f"td:first-child a[data-model='{child}']")
    )
    row.wait_for()
    assert parent in row.inner_text()
    row.locator("td:first-child a").click()
    lineage = page.locator("#model-lineage li")
    lineage.first.wait_for()
    assert lineage.all_inner_texts() == ["tiny-gpt2", parent, child]
    parent_field = page.locator("dt:text-is('Parent') + dd")
    assert parent_field.inner_text() == parent

    # Deploy from the model's page: the deployment is listed with its model.
    page.click("#deploy-model")
    page.locator("#deploy-result a").wait_for()
    assert "Deploy failed" not in page.locator("#deploy-result").inner_text()
    page.click("#deploy-result a")
    deployments = page.locator("#deployments-table")
    deployments.wait_for()
    assert deployments.locator(f"a[data-model='{child}']").count() == 1
    check_layout(page, "deployments-one", ready="#deployments-table")
