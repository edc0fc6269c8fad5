"""Fine-tuning on the shared local Ray cluster (CPU), with the tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures.ray_cluster import RayCluster
from tests.workers.factories import (
    chat_rows,
    classification_rows,
    make_spec,
    prompt_completion_rows,
    write_jsonl,
)
from tests.workers.training import Run, fit
from workers.checkpoints import PROBE_FILE
from workers.data import TokenizeOptions, collate, load_tokenizer, tokenize_record
from workers.faults import FaultInjection
from workers.modeling import causal_lm_loss_sum
from workers.sources import resolve_model_source

pytestmark = pytest.mark.ray

PROBE = "red -> cat dog"


def base_eval_loss(tmp: Path, models_dir: Path, source: str, rows: list[dict[str, str]]) -> float:
    """The untouched base model's token-level loss, computed here without Ray."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(source, str(models_dir))
    options = TokenizeOptions(source, str(models_dir), "prompt_completion", "causal_lm", 64)
    tokenized = [tokenize_record(tokenizer, row, options) for row in rows]
    import numpy as np

    batch = collate(
        {
            "input_ids": np.array([np.array(r["input_ids"]) for r in tokenized if r], dtype=object),
            "labels": np.array([np.array(r["labels"]) for r in tokenized if r], dtype=object),
        },
        tokenizer.pad_token_id,
        "causal_lm",
    )
    model = AutoModelForCausalLM.from_pretrained(resolve_model_source(source, models_dir))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = (batch["labels"][:, 1:] != -100).sum()
    return float(causal_lm_loss_sum(logits, batch["labels"]) / targets)


def assert_learned(run: Run, base_loss: float | None = None, margin: float = 0.5) -> None:
    losses = [loss for _, loss in run.series("metrics", "train_loss")]
    assert len(losses) == run.plan.total_steps
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - margin, f"training loss did not fall: {losses}"
    evals = run.series("eval", "eval_loss")
    assert evals[0][0] == 0, "the base model is evaluated before the first step"
    if base_loss is not None:
        assert evals[0][1] == pytest.approx(base_loss, rel=1e-4)
    assert evals[-1][0] == run.plan.total_steps
    assert evals[-1][1] < evals[0][1] - margin, f"validation loss did not fall: {evals}"


@pytest.fixture(scope="module")
def lora_run(
    ray_cluster: RayCluster, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Run, float]:
    tmp = tmp_path_factory.mktemp("lora-gpt2")
    validation = prompt_completion_rows(32, seed=1)
    spec = make_spec(
        tmp,
        validation_file_uri=write_jsonl(tmp / "validation.jsonl", validation),
        resources={"num_workers": 2},
        training={
            "n_epochs": 3,
            "batch_size": 16,
            "learning_rate": 3e-2,
            "max_length": 64,
            "eval_every_steps": 6,
            "eval_at_start": True,
        },
    )
    base = base_eval_loss(tmp, models_dir, "tiny:tiny-gpt2", validation)
    return fit(spec, models_dir, tmp / "events.jsonl", probe_text=PROBE), base


def test_two_worker_lora_fine_tune_learns(lora_run: tuple[Run, float]) -> None:
    run, base = lora_run
    # 96 examples, 2 workers x 8 per step: 6 steps per epoch.
    assert run.plan.total_steps == 18
    assert_learned(run, base_loss=base)
    assert run.result.metrics["step"] == 18
    assert run.result.metrics["eval_loss"] < base - 0.5
    model_dir = run.checkpoint_dir / "model"
    assert (model_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "model.safetensors").exists(), "LoRA saves the adapter only"
    tokens = [e.data["tokens_per_second"] for e in run.of_type("metrics")]
    assert all(t > 0 for t in tokens)


def test_saved_adapter_reloads_with_the_logits_of_the_end_of_training(
    lora_run: tuple[Run, float], models_dir: Path
) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _ = lora_run
    expected = load_file(str(run.checkpoint_dir / PROBE_FILE))["logits"]
    source = resolve_model_source("tiny:tiny-gpt2", models_dir)
    tokenizer = AutoTokenizer.from_pretrained(source)
    inputs = tokenizer(PROBE, return_tensors="pt")
    base = AutoModelForCausalLM.from_pretrained(source).eval()
    with torch.no_grad():
        base_logits = base(**inputs).logits
        model = PeftModel.from_pretrained(base, str(run.checkpoint_dir / "model")).eval()
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert (base_logits - expected).abs().max() > 0.1, "the adapter changed nothing"


def test_full_fine_tune_learns_and_resumes(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    validation = prompt_completion_rows(32, seed=1)
    spec = make_spec(
        tmp_path,
        adapter={"type": "full"},
        validation_file_uri=write_jsonl(tmp_path / "validation.jsonl", validation),
        training={
            "n_epochs": 2,
            "batch_size": 16,
            "learning_rate": 3e-3,
            "max_length": 64,
            "max_failures": 1,
            "eval_at_start": True,
        },
    )
    # The only worker dies after the end-of-epoch checkpoint: the whole model, not an
    # adapter, must come back from it.
    fault = FaultInjection(rank=0, after_step=6, marker=str(tmp_path / "fault-injected"))
    run = fit(spec, models_dir, tmp_path / "events.jsonl", fault=fault)
    assert_learned(run)
    resumed = [
        e.data["resumed_from_step"] for e in run.of_type("message") if "resumed_from_step" in e.data
    ]
    assert resumed == [6]
    model_dir = run.checkpoint_dir / "model"
    assert (model_dir / "model.safetensors").is_file()
    assert not (model_dir / "adapter_model.safetensors").exists()


def test_tiny_llama_lora_on_chat_data(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path,
        base_model={"name": "tiny-llama", "source": "tiny:tiny-llama"},
        data_format="chat",
        training_file_uri=write_jsonl(tmp_path / "train.jsonl", chat_rows(64, seed=0)),
        validation_file_uri=write_jsonl(tmp_path / "validation.jsonl", chat_rows(24, seed=1)),
        training={
            "n_epochs": 3,
            "batch_size": 8,
            "learning_rate": 3e-2,
            "max_length": 64,
            "eval_at_start": True,
        },
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    assert_learned(run)
    config = (run.checkpoint_dir / "model" / "adapter_config.json").read_text()
    assert '"q_proj"' in config and '"v_proj"' in config


def test_tiny_bert_classification_accuracy_rises(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    labels = ["animal", "color", "fruit", "number"]
    spec = make_spec(
        tmp_path,
        base_model={"name": "tiny-bert", "source": "tiny:tiny-bert"},
        task="sequence_classification",
        data_format="classification",
        labels=labels,
        training_file_uri=write_jsonl(tmp_path / "train.jsonl", classification_rows(128, 0)),
        validation_file_uri=write_jsonl(tmp_path / "val.jsonl", classification_rows(48, 1)),
        training={
            "n_epochs": 6,
            "batch_size": 16,
            "learning_rate": 2e-2,
            "max_length": 32,
            "checkpoint_every_steps": 1000,
            "eval_at_start": True,
        },
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    accuracy = run.series("eval", "eval_accuracy")
    assert accuracy[0][0] == 0
    base, final = accuracy[0][1], accuracy[-1][1]
    # Four balanced classes: guessing scores 0.25.
    assert base <= 0.4, accuracy
    assert final >= base + 0.3, accuracy
    assert run.result.metrics["eval_accuracy"] == final


def test_lost_worker_resumes_from_the_last_checkpoint(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "fault-injected"
    spec = make_spec(
        tmp_path,
        resources={"num_workers": 2},
        training={
            "n_epochs": 2,
            "batch_size": 16,
            "learning_rate": 3e-2,
            "max_length": 64,
            "checkpoint_every_steps": 4,
            "num_checkpoints_to_keep": 2,
            "max_failures": 1,
        },
    )
    fault = FaultInjection(rank=1, after_step=8, marker=str(marker))
    run = fit(spec, models_dir, tmp_path / "events.jsonl", fault=fault)

    assert marker.read_text() == "8", "worker 1 was killed after the checkpoint at step 8"
    total = run.plan.total_steps
    assert total == 12
    assert run.result.metrics["step"] == total
    resumed = [e for e in run.of_type("message") if "resumed_from_step" in e.data]
    assert [e.data["resumed_from_step"] for e in resumed] == [8]
    # Every step ran exactly once: the second attempt began at step 9, not at step 1.
    steps = [step for step, _ in run.series("metrics", "train_loss")]
    assert steps == list(range(1, total + 1))
    resume_at = run.events.index(resumed[0])
    after = [e.data["step"] for e in run.events[resume_at:] if e.type == "metrics"]
    assert after == list(range(9, total + 1))
    failed_ranks = {e.data["rank"] for e in run.of_type("message") if "rank" in e.data}
    assert 1 in failed_ranks, "the lost worker is reported to the user"
    # The optimizer state came back too: the learning rate continues the schedule.
    rates = dict(run.series("metrics", "learning_rate"))
    assert rates[9] < rates[8]


def test_a_run_whose_validation_loss_never_improves_says_so(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    validation = prompt_completion_rows(16, seed=1)
    spec = make_spec(
        tmp_path,
        validation_file_uri=write_jsonl(tmp_path / "validation.jsonl", validation),
        training_file_uri=write_jsonl(tmp_path / "train.jsonl", prompt_completion_rows(32, 0)),
        # Far too small a rate to move anything: the loss stays where it started.
        training={
            "n_epochs": 1,
            "batch_size": 16,
            "learning_rate": 1e-12,
            "max_length": 64,
            "eval_at_start": True,
        },
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    warnings = [e for e in run.of_type("message") if "never improved" in e.message]
    assert len(warnings) == 1 and warnings[0].level == "warn"
    assert warnings[0].data["final_eval_loss"] >= warnings[0].data["first_eval_loss"]


def test_every_epoch_is_shuffled_from_the_seed(
    ray_cluster: RayCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray.data

    from workers.checkpoints import TrainerState
    from workers.data import StepPlan
    from workers.train import FineTuneRecipe

    # As a job's driver sets it (workers.data.read_tokenized) and its trainers' ingest
    # inherits it: blocks reach the shuffle buffer in order. Without it the order depends
    # on which block arrives first, and this test on which tests ran before it.
    options = ray.data.DataContext.get_current().execution_options
    monkeypatch.setattr(options, "preserve_order", True)

    def orders(seed: int) -> list[list[int]]:
        recipe = FineTuneRecipe.__new__(FineTuneRecipe)
        recipe.spec = make_spec(tmp_path, seed=seed)
        recipe.plan = StepPlan(8, 64, 8, 8, 16)
        recipe.state = TrainerState()
        recipe.train_shard = ray.data.range(64).iterator()
        epochs = []
        for epoch in range(2):
            recipe.state.epoch = epoch
            epochs.append([int(i) for b in recipe._micro_batches() for i in b["id"]])
        return epochs

    first, second = orders(seed=3)
    # Every example once per epoch, in another order each epoch, not in file order.
    assert sorted(first) == sorted(second) == list(range(64))
    assert first != second and first != list(range(64))
    # The same seed gives the same orders (a resumed run skips what it trained on).
    assert orders(seed=3) == [first, second]
    assert orders(seed=4) != [first, second]
