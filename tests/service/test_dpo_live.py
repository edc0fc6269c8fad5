"""SFT, then DPO on the SFT model, driven by the official `openai` client against a real
control plane, Redis and Ray. A control plane of its own: the session's live stack holds
exactly one job, which its metrics and dashboard tests count on."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import openai
import pytest

from service.config import Settings
from tests.contract.test_openai_contract import CONTRACT, JOB
from tests.factories import jsonl, prompt_completion_records
from tests.fixtures.live_stack import LiveStack, start_control_plane
from tests.fixtures.stack import wait_for

pytestmark = pytest.mark.ray

PAIRS = [
    {
        "input": {"messages": [{"role": "user", "content": f"Count after {i}:"}]},
        "preferred_output": [{"role": "assistant", "content": f" {i + 1}"}],
        "non_preferred_output": [{"role": "assistant", "content": f" {i + 7}"}],
    }
    for i in range(12)
]


def _finished(sdk: openai.OpenAI, job_id: str, log: Path) -> Any:
    return wait_for(
        lambda: (
            (j := sdk.fine_tuning.jobs.retrieve(job_id)).status
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        300,
        f"job {job_id} to end (log: {log})",
        1.0,
    )


def test_dpo_on_the_sft_model_through_the_openai_client(
    stack_settings: Settings, tmp_path: Path
) -> None:
    proc, stack = start_control_plane(stack_settings, tmp_path / "control-plane.log")
    try:
        _sft_then_dpo(stack)
    finally:
        proc.stop()


def _sft_then_dpo(stack: LiveStack) -> None:
    sdk = openai.OpenAI(api_key=stack.api_key, base_url=f"{stack.url}/v1", max_retries=0)
    data = sdk.files.create(
        file=("sft.jsonl", io.BytesIO(jsonl(prompt_completion_records(16)))),
        purpose="fine-tune",
    )
    sft = _finished(
        sdk,
        sdk.fine_tuning.jobs.create(
            model="tiny-gpt2",
            training_file=data.id,
            hyperparameters={"n_epochs": 2, "batch_size": 4},
        ).id,
        stack.log,
    )
    assert sft.status == "succeeded", sft.error
    assert sft.fine_tuned_model
    pairs = sdk.files.create(file=("pairs.jsonl", io.BytesIO(jsonl(PAIRS))), purpose="fine-tune")

    hyperparameters: dict[str, Any] = {
        "beta": 0.1,
        "n_epochs": 2,
        "batch_size": 4,
        # Tuneplane's own: evaluate the starting model too.
        "eval_at_start": True,
    }
    job = sdk.fine_tuning.jobs.create(
        model=sft.fine_tuned_model,
        training_file=pairs.id,
        validation_file=pairs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": hyperparameters}},  # type: ignore[arg-type]
    )
    assert job.model == sft.fine_tuned_model
    assert job.method is not None and job.method.type == "dpo"
    assert job.method.dpo is not None and job.method.dpo.hyperparameters is not None
    assert job.method.dpo.hyperparameters.beta == 0.1
    with stack.client() as c:
        JOB.check(c.get(f"/v1/fine_tuning/jobs/{job.id}").json())

    done = _finished(sdk, job.id, stack.log)
    assert done.status == "succeeded", done.error
    with stack.client() as c:
        points = c.get(f"/v1/fine_tuning/jobs/{job.id}/metrics", params={"limit": 1000}).json()
        evals = [p["metrics"] for p in points["data"] if p["kind"] == "eval"]
        steps = [p["metrics"] for p in points["data"] if p["kind"] == "train"]
        # The reference is the SFT model the job starts from: before a step they agree.
        assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
        assert "eval_reward_accuracy" in evals[-1]
        assert {"train_loss", "train_reward_accuracy", "train_reward_margin"} <= set(steps[-1])
        model = c.get(f"/v1/models/{done.fine_tuned_model}")
        CONTRACT.operation("retrieveModel").check(model.json())
        shown = model.json()
    assert done.fine_tuned_model.startswith("ft:tiny-gpt2:")
    assert shown["parent"] == sft.fine_tuned_model
    assert shown["lineage"] == ["tiny-gpt2", sft.fine_tuned_model]
