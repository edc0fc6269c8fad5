"""DPO's loss and its reference models, and jobs that continue a fine-tuned model."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.fixtures.ray_cluster import RayCluster
from tests.workers.factories import chat_rows, make_spec, preference_rows, write_jsonl
from tests.workers.training import Run, fit
from workers.data import TokenizeOptions, tokenize_batch
from workers.modeling import apply_lora, load_base_model
from workers.objectives import (
    AdapterDisabled,
    Dpo,
    FrozenCopy,
    StartingAdapter,
    dpo_loss,
)
from workers.preference_data import collate_preference
from workers.sources import resolve_model_source

PARENT_ID = "ft:tiny-gpt2:tenant-test::ftjob-parent"


def test_dpo_loss_matches_a_hand_computed_value() -> None:
    losses, chosen, rejected = dpo_loss(
        policy_chosen=torch.tensor([-2.0, -3.0]),
        policy_rejected=torch.tensor([-2.5, -1.0]),
        reference_chosen=torch.tensor([-2.2, -2.8]),
        reference_rejected=torch.tensor([-2.4, -1.5]),
        beta=0.5,
    )
    # Pair 1: 0.5 * ((-2.0 + 2.2) - (-2.5 + 2.4)) = 0.15, and -log(sigmoid(0.15))
    # = log(1 + e^-0.15) = 0.620957. Pair 2: 0.5 * ((-3.0 + 2.8) - (-1.0 + 1.5)) = -0.35,
    # and log(1 + e^0.35) = 0.883382.
    assert losses.tolist() == pytest.approx([0.620957, 0.883382], abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, -0.1], abs=1e-6)
    assert rejected.tolist() == pytest.approx([-0.05, 0.25], abs=1e-6)


def _pairs(models_dir: Path) -> dict[str, torch.Tensor]:
    """Two preference pairs, tokenized and padded as training does."""
    options = TokenizeOptions(
        model_source="tiny:tiny-gpt2",
        models_dir=str(models_dir),
        data_format="preference",
        task="causal_lm",
        max_length=64,
    )
    lines = np.array([json.dumps(r) for r in preference_rows(2, seed=3)], dtype=object)
    batch = tokenize_batch({"text": lines}, options)
    assert len(batch["input_ids"]) == 2
    return collate_preference(batch, 0)


def _by_hand(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each row's summed log-probability of its label tokens, written out plainly."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    sums = []
    for row in range(logits.shape[0]):
        total = 0.0
        for t in range(1, logits.shape[1]):
            label = int(batch["labels"][row, t])
            if label != -100:
                total += float(torch.log_softmax(logits[row, t - 1].double(), -1)[label])
        sums.append(total)
    return torch.tensor(sums, dtype=torch.float64)


def _lora_model(models_dir: Path, tmp_path: Path) -> torch.nn.Module:
    spec = make_spec(tmp_path)
    base = load_base_model(spec, resolve_model_source("tiny:tiny-gpt2", models_dir))
    model = apply_lora(base, spec, spec.adapter)  # type: ignore[arg-type]
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: LoRA's B starts at zero
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    return model.eval()


def test_dpo_objective_computes_the_loss_of_its_summed_log_probabilities(
    models_dir: Path, tmp_path: Path
) -> None:
    batch = _pairs(models_dir)
    model = _lora_model(models_dir, tmp_path)
    objective = Dpo(beta=0.5, pad_id=0, reference=AdapterDisabled(model))
    result = objective.loss(model, batch, None)

    policy = _by_hand(model, batch)
    with model.disable_adapter():  # type: ignore[operator]
        reference = _by_hand(model, batch)
    margins = 0.5 * ((policy[:2] - reference[:2]) - (policy[2:] - reference[2:]))
    expected = sum(math.log1p(math.exp(-float(m))) for m in margins)
    assert float(result.loss) == pytest.approx(expected, abs=1e-4)
    chosen = 0.5 * (policy[:2] - reference[:2])
    rejected = 0.5 * (policy[2:] - reference[2:])
    assert result.sums["chosen_reward"] == pytest.approx(float(chosen.sum()), abs=1e-4)
    right = (chosen > rejected).sum() + 0.5 * (chosen == rejected).sum()
    assert result.sums["reward_accuracy"] == float(right)

    result.loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads), "the adapter gets gradients"


def test_references_equal_the_starting_model(models_dir: Path, tmp_path: Path) -> None:
    """A continued adapter's reference is its starting weights, swapped back out intact;
    a full fine-tune's is a frozen copy. Either way the first loss is log 2."""
    batch = _pairs(models_dir)
    model = _lora_model(models_dir, tmp_path)
    starting = StartingAdapter(model)
    before = _by_hand(model, batch)
    objective = Dpo(beta=0.1, pad_id=0, reference=starting)
    first = objective.loss(model, batch, None)
    assert float(first.loss) / 2 == pytest.approx(math.log(2), abs=1e-6)
    assert first.sums["reward_accuracy"] == 1.0, "two ties count half each"

    with torch.no_grad():  # training moves the adapter ...
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.05)
    moved = _by_hand(model, batch)
    assert starting.logps(model, batch, None).double() == pytest.approx(before.tolist(), abs=1e-4)
    # ... and the reference pass leaves the moved weights in place.
    assert _by_hand(model, batch).tolist() == pytest.approx(moved.tolist(), abs=1e-9)

    full = load_base_model(make_spec(tmp_path), resolve_model_source("tiny:tiny-gpt2", models_dir))
    frozen = FrozenCopy(copy.deepcopy(full).eval())
    loss = Dpo(beta=0.1, pad_id=0, reference=frozen).loss(full.eval(), batch, None)
    assert float(loss.loss) / 2 == pytest.approx(math.log(2), abs=1e-6)


# ------------------------------------------------------------------ on Ray Train


def _chat_spec(tmp: Path, **fields: Any) -> Any:
    return make_spec(
        tmp,
        data_format="chat",
        training_file_uri=write_jsonl(tmp / "train.jsonl", chat_rows(64, seed=0)),
        validation_file_uri=write_jsonl(tmp / "validation.jsonl", chat_rows(24, seed=1)),
        **fields,
    )


@pytest.fixture(scope="module")
def sft_parent(
    ray_cluster: RayCluster, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Run:
    tmp = tmp_path_factory.mktemp("sft-parent")
    spec = _chat_spec(
        tmp, training={"n_epochs": 2, "batch_size": 16, "learning_rate": 3e-2, "max_length": 64}
    )
    return fit(spec, models_dir, tmp / "events.jsonl")


def _continuing(parent: Run, adapter: str = "lora") -> dict[str, Any]:
    return {"model": PARENT_ID, "uri": str(parent.checkpoint_dir / "model"), "adapter": adapter}


def _dpo_spec(tmp: Path, parent: Run, pairs: int, training: dict[str, Any], **fields: Any) -> Any:
    """A DPO job continuing `parent`, evaluated before its first step too."""
    return make_spec(
        tmp,
        data_format="preference",
        method="dpo",
        dpo={"beta": 0.1},
        init_from=_continuing(parent),
        training_file_uri=write_jsonl(tmp / "train.jsonl", preference_rows(pairs, seed=0)),
        validation_file_uri=write_jsonl(tmp / "val.jsonl", preference_rows(16, seed=1)),
        training={"batch_size": 16, "max_length": 64, "eval_at_start": True, **training},
        **fields,
    )


def test_a_continued_lora_job_starts_where_its_parent_ended(
    sft_parent: Run, models_dir: Path, tmp_path: Path
) -> None:
    parent_last = sft_parent.series("eval", "eval_loss")[-1][1]
    spec = _chat_spec(
        tmp_path,
        init_from=_continuing(sft_parent),
        training={
            "n_epochs": 1,
            "batch_size": 16,
            "learning_rate": 3e-2,
            "max_length": 64,
            "eval_at_start": True,
        },
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    step, first = run.series("eval", "eval_loss")[0]
    assert step == 0
    assert first == pytest.approx(parent_last, abs=1e-4)


def test_dpo_after_sft_on_two_workers_learns_the_preferences(
    sft_parent: Run, models_dir: Path, tmp_path: Path
) -> None:
    spec = _dpo_spec(
        tmp_path,
        sft_parent,
        pairs=64,
        resources={"num_workers": 2},
        training={"n_epochs": 3, "learning_rate": 3e-2},
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    evals = [e.data for e in run.of_type("eval")]
    # The reference is the SFT parent itself, so before the first step the two agree.
    assert evals[0]["step"] == 0
    assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert evals[0]["eval_chosen_reward"] == pytest.approx(0.0, abs=1e-5)
    assert evals[0]["eval_reward_accuracy"] == 0.5
    assert evals[-1]["eval_loss"] < math.log(2) - 0.1
    assert evals[-1]["eval_reward_accuracy"] >= 0.8
    assert evals[-1]["eval_reward_margin"] > 0
    steps = [e.data for e in run.of_type("metrics")]
    for key in ("train_loss", "train_reward_accuracy", "train_reward_margin"):
        assert all(key in s for s in steps), key
    assert {"train_chosen_reward", "train_rejected_reward"} <= set(steps[-1])


def test_a_full_fine_tune_continues_from_its_weights(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    training = {"n_epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "max_length": 64}
    (tmp_path / "p").mkdir()
    parent_spec = _chat_spec(tmp_path / "p", adapter={"type": "full"}, training=training)
    parent = fit(parent_spec, models_dir, tmp_path / "parent.jsonl")
    parent_last = parent.series("eval", "eval_loss")[-1][1]
    (tmp_path / "c").mkdir()
    weights = str(parent.checkpoint_dir / "model")
    child = _chat_spec(
        tmp_path / "c",
        base_model={"name": "tiny-gpt2", "source": weights},
        adapter={"type": "full"},
        init_from={"model": PARENT_ID, "uri": weights, "adapter": "full"},
        training={**training, "eval_at_start": True},
    )
    run = fit(child, models_dir, tmp_path / "child.jsonl")
    assert run.series("eval", "eval_loss")[0][1] == pytest.approx(parent_last, abs=1e-4)


def test_full_dpo_from_a_lora_model_folds_its_adapter_in_first(
    sft_parent: Run, models_dir: Path, tmp_path: Path
) -> None:
    """A full fine-tune of a LoRA model starts from the base with the adapter merged in, and
    that merged model is DPO's frozen reference."""
    spec = _dpo_spec(
        tmp_path,
        sft_parent,
        pairs=32,
        adapter={"type": "full"},
        training={"n_epochs": 1, "learning_rate": 1e-3},
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    evals = [e.data for e in run.of_type("eval")]
    assert evals[0]["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]
    assert (run.checkpoint_dir / "model" / "model.safetensors").is_file()
