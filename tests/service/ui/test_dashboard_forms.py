"""The dashboard's forms in a real headless Chromium against real control planes: uploading
files (chosen or dropped) and deleting them, and creating a job, with the API's errors
shown next to the field they name; then a classifier made from the form, trained on Ray
and tried in the playground."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import FilePayload, Locator, Page, expect

from tests.factories import classification_records, jsonl, prompt_completion_records
from tests.fixtures.live_stack import LiveStack
from tests.fixtures.ray_cluster import RayCluster, shut_down_serve
from tests.service.ui.browser import check_layout, new_tenant, sign_in

JOB_URL = re.compile(r"#/jobs/(ftjob-[0-9a-f]+)$")


def open_files(page: Page, stack: LiveStack) -> None:
    """The files page, its list loaded (after any navigation the sign-in started)."""
    page.goto(f"{stack.url}/ui/#/files")
    page.locator("#files-table, #files-empty").first.wait_for()


def upload_through_input(page: Page, name: str, content: bytes) -> None:
    payload: FilePayload = {"name": name, "mimeType": "application/jsonl", "buffer": content}
    page.set_input_files("#upload-file", files=[payload])
    page.click("#upload-button")


def file_row(page: Page, filename: str) -> Locator:
    return page.locator(
        "#files-table tbody tr", has=page.locator(f".filename:text-is('{filename}')")
    )


def field_error(page: Page, input_id: str) -> Locator:
    """The error element of the form field that holds the input `input_id`."""
    return page.locator(".field", has=page.locator(f"#{input_id}")).locator(".field-error")


def submit_job_form(page: Page) -> None:
    page.click("#job-submit")
    expect(page.locator("#job-submit")).to_be_enabled()


def created_job_id(page: Page) -> str:
    page.wait_for_url(JOB_URL)
    found = JOB_URL.search(page.url)
    assert found is not None, page.url
    job_id = found.group(1)
    page.locator(f".toolbar h1:has-text('{job_id}')").wait_for()
    return job_id


def test_upload_files_and_create_a_job_with_the_apis_errors_by_their_fields(
    page: Page, api_only_stack: LiveStack
) -> None:
    stack = api_only_stack
    _, key = new_tenant(stack, "forms")
    sign_in(page, stack, key)
    page.goto(f"{stack.url}/ui/#/files")
    expect(page.locator("#files-list")).to_have_text("No files yet.")
    # No file, no form: the page says where to get one.
    page.click("#files-new-job")
    page.locator("#job-no-files").wait_for()
    assert page.locator("#job-form").count() == 0
    page.click("#job-no-files a[href='#/files']")
    page.locator("#drop-zone").wait_for()

    # The validator's verdict names the line at fault; nothing is stored.
    bad = jsonl(prompt_completion_records(2)) + b'{"prompt": oops\n'
    upload_through_input(page, "bad.jsonl", bad)
    error = page.locator("#upload-error")
    expect(error).to_contain_text("line 3")
    assert (error.text_content() or "").startswith("bad.jsonl: ")
    assert error.get_attribute("role") == "alert"
    expect(page.locator("#files-list")).to_have_text("No files yet.")

    upload_through_input(page, "train.jsonl", jsonl(prompt_completion_records(8)))
    file_row(page, "train.jsonl").wait_for()
    expect(page.locator("#upload-status")).to_have_text(
        "Uploaded train.jsonl: prompt_completion, 8 examples."
    )
    expect(error).to_be_hidden()
    row = file_row(page, "train.jsonl")
    assert "prompt_completion" in row.inner_text() and re.search(r"\d+ B\b", row.inner_text())
    train_id = row.locator("[data-id]").first.get_attribute("data-id")
    assert train_id and train_id.startswith("file-")

    # A file dropped on the drop zone is uploaded as a chosen one is.
    dropped = jsonl(prompt_completion_records(3)).decode()
    transfer = page.evaluate_handle(
        """(text) => {
          const dt = new DataTransfer();
          dt.items.add(new File([text], "dropped.jsonl", { type: "application/jsonl" }));
          return dt;
        }""",
        dropped,
    )
    page.dispatch_event("#drop-zone", "dragover", {"dataTransfer": transfer})
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    file_row(page, "dropped.jsonl").wait_for()
    assert "3" in file_row(page, "dropped.jsonl").locator("td").nth(3).inner_text()
    check_layout(page, "files", ready="#files-table")

    # Deleting asks first; a dismissed question deletes nothing.
    page.once("dialog", lambda dialog: dialog.dismiss())
    file_row(page, "dropped.jsonl").locator("button.danger").click()
    page.wait_for_timeout(300)
    assert file_row(page, "dropped.jsonl").count() == 1
    page.once("dialog", lambda dialog: dialog.accept())
    file_row(page, "dropped.jsonl").locator("button.danger").click()
    file_row(page, "dropped.jsonl").wait_for(state="detached")
    with stack.client(key) as c:
        assert [f["filename"] for f in c.get("/v1/files").json()["data"]] == ["train.jsonl"]

    # "New job" on a file's row: the form with that file chosen.
    row.locator("a.new-job").click()
    page.locator("#job-form").wait_for()
    assert page.locator("#job-training-file").input_value() == train_id
    assert page.locator("#job-method").input_value() == "supervised"
    expect(page.locator("#job-beta")).to_be_hidden()
    base = page.locator("#job-model optgroup[label='Base models'] option[value='tiny-gpt2']")
    assert base.inner_text() == "tiny-gpt2 (causal_lm)"
    page.select_option("#job-model", "tiny-gpt2")
    check_layout(page, "new-job", ready="#job-form")

    # Each of the API's errors lands next to the field its `param` names.
    general = page.locator("#job-form-error")
    epochs = field_error(page, "job-n-epochs")
    assert epochs.get_attribute("data-param") == "hyperparameters.n_epochs"
    page.fill("#job-n-epochs", "0")
    submit_job_form(page)
    expect(epochs).to_have_text("Input should be greater than or equal to 1")
    expect(general).to_have_text("")
    page.fill("#job-n-epochs", "x")
    submit_job_form(page)
    expect(epochs).to_have_text("Input should be a valid integer")

    page.fill("#job-n-epochs", "1")
    page.fill("#job-suffix", "a:b")
    submit_job_form(page)
    expect(field_error(page, "job-suffix")).to_contain_text("should match pattern")
    expect(epochs).to_have_text("")

    # DPO: a beta field, the hyperparameters named under method.dpo, a preference file.
    page.fill("#job-suffix", "form")
    page.select_option("#job-method", "dpo")
    expect(page.locator("#job-beta")).to_be_visible()
    assert epochs.get_attribute("data-param") == "method.dpo.hyperparameters.n_epochs"
    page.fill("#job-beta", "5")
    submit_job_form(page)
    expect(field_error(page, "job-beta")).to_have_text("Input should be less than or equal to 2")
    page.fill("#job-beta", "")
    page.fill("#job-n-epochs", "0")
    submit_job_form(page)
    expect(epochs).to_have_text("Input should be greater than or equal to 1")
    page.fill("#job-n-epochs", "1")
    submit_job_form(page)
    expect(field_error(page, "job-training-file")).to_contain_text("DPO trains on preference files")
    page.select_option("#job-method", "supervised")
    assert epochs.get_attribute("data-param") == "hyperparameters.n_epochs"

    # A metadata value's error ("metadata.<key>") shows under the metadata.
    page.click("#job-metadata-add")
    page.fill("#job-metadata .metadata-key", "team")
    page.fill("#job-metadata .metadata-value", "v" * 600)
    submit_job_form(page)
    expect(field_error(page, "job-metadata")).to_contain_text("metadata.team")
    expect(general).to_have_text("")

    page.fill("#job-metadata .metadata-value", "forms")
    page.fill("#job-batch-size", "4")
    page.fill("#job-lr-multiplier", "0.5")
    page.click("#job-submit")
    job_id = created_job_id(page)
    with stack.client(key) as c:
        job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["model"] == "tiny-gpt2" and job["training_file"] == train_id
    assert job["validation_file"] is None
    assert job["suffix"] == "form" and job["metadata"] == {"team": "forms"}
    assert job["method"]["type"] == "supervised"
    hp = job["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate_multiplier"]) == (1, 4, 0.5)

    # A model the list lacks (a link's ?model=) is kept; the API refuses it at `model`.
    page.goto(f"{stack.url}/ui/#/new-job?model=no-such-model&training_file={train_id}")
    page.locator("#job-form").wait_for()
    assert page.locator("#job-model").input_value() == "no-such-model"
    submit_job_form(page)
    expect(field_error(page, "job-model")).to_contain_text("is not available for fine-tuning")
    expect(general).to_have_text("")

    # A file a job uses cannot go: the API's reason on the page, the file still listed.
    page.goto(f"{stack.url}/ui/#/files")
    page.once("dialog", lambda dialog: dialog.accept())
    file_row(page, "train.jsonl").locator("button.danger").click()
    expect(page.locator("#files-error")).to_contain_text(job_id)
    assert file_row(page, "train.jsonl").count() == 1


@pytest.mark.ray
def test_a_classifier_made_in_the_form_trains_and_answers_in_the_playground(
    page: Page, work_stack: LiveStack, ray_cluster: RayCluster
) -> None:
    """A new user's whole path: upload labelled data, create a job from the form, watch it
    finish, then try the fine-tuned classifier in the playground."""
    stack = work_stack
    sign_in(page, stack, stack.api_key)
    open_files(page, stack)
    records = classification_records(8)
    upload_through_input(page, "labels.jsonl", jsonl(records))
    expect(page.locator("#upload-status")).to_contain_text("Uploaded labels.jsonl")
    row = file_row(page, "labels.jsonl")
    row.wait_for()
    row.locator("a.new-job").click()
    page.locator("#job-form").wait_for()
    page.select_option("#job-model", "tiny-bert")
    page.fill("#job-n-epochs", "1")
    page.fill("#job-batch-size", "4")
    page.fill("#job-suffix", "form")
    page.click("#job-submit")
    job_id = created_job_id(page)
    ended = re.compile(r"^(succeeded|failed|cancelled)$")
    expect(page.locator(".toolbar .badge")).to_have_text(ended, timeout=300_000)
    with stack.client() as c:
        job = c.get(f"/v1/fine_tuning/jobs/{job_id}").json()
    assert job["status"] == "succeeded", f"{json.dumps(job)[:2000]} (log: {stack.log})"
    assert job["hyperparameters"]["n_epochs"] == 1 and job["hyperparameters"]["batch_size"] == 4
    model = f"ft:tiny-bert:{stack.tenant_name}:form:{job_id}"
    assert job["fine_tuned_model"] == model
    details = page.locator("dl.fields")
    expect(details.locator("dt:text-is('Fine-tuned model') + dd")).to_have_text(model)

    # From the job to its model's page, and from there to the playground.
    details.locator("dt:text-is('Fine-tuned model') + dd a").click()
    page.locator("#deploy-model").wait_for()
    page.locator("#view a.button:text-is('Playground')").click()
    page.locator("#pg-answer-a").wait_for()
    assert page.locator("#pg-model").input_value() == model
    # Its base encoder has no head to classify with: not offered, nothing to compare.
    assert page.locator("#pg-compare").input_value() == ""
    assert page.locator("#pg-model option[value='tiny-bert']").count() == 0
    assert page.locator("label[for=pg-message]").inner_text() == "Text to classify"
    assert page.locator("#pg-system").is_hidden()
    text = "review 9: great"
    page.fill("#pg-message", text)
    try:
        page.click("#pg-send")
        done = "#pg-answer-a:is([data-state=done], [data-state=error])"
        page.locator(done).wait_for(timeout=240_000)  # Serve starts the model's replica
        column = page.locator("#pg-answer-a")
        assert column.get_attribute("data-state") == "done", column.inner_text()
        with stack.client() as c:
            r = c.post("/v1/classifications", json={"model": model, "input": text})
            assert r.status_code == 200, r.text
            expected = r.json()["data"][0]
    finally:
        shut_down_serve(ray_cluster)  # the replica would hold a CPU for minutes
    rows = page.locator("#pg-scores-a tbody tr")
    labels = rows.locator("td:first-child").all_text_contents()
    cells = rows.locator("td[data-score]").evaluate_all("(c) => c.map((n) => n.dataset.score)")
    scores = [float(v) for v in cells]
    assert sorted(labels) == sorted({r["label"] for r in records})
    assert scores == sorted(scores, reverse=True)
    assert sum(scores) == pytest.approx(1.0, abs=1e-4)
    assert dict(zip(labels, scores, strict=True)) == pytest.approx(expected["scores"], abs=1e-5)
    # The top label, highlighted, is the model's answer.
    assert "top" in (rows.first.get_attribute("class") or "")
    assert rows.first.locator("td:first-child strong").inner_text() == expected["label"]
    check_layout(page, "playground-classifier", ready="#pg-scores-a")
