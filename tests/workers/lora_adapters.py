"""LoRA adapters with random (non-zero) weights, saved as training saves one: serving's
results do not depend on what an adapter learnt, only on its weights being applied right."""

from __future__ import annotations

from pathlib import Path

import torch

from workers.sources import resolve_model_source


def make_adapter(
    models_dir: Path,
    out: Path,
    seed: int,
    task: str = "causal_lm",
    source: str = "tiny:tiny-gpt2",
    targets: tuple[str, ...] = ("c_attn",),
    r: int = 4,
) -> Path:
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    if task == "causal_lm":
        base = AutoModelForCausalLM.from_pretrained(resolve_model_source(source, models_dir))
        config = LoraConfig(
            r=r,
            target_modules=list(targets),
            fan_in_fan_out=base.config.model_type == "gpt2",
            init_lora_weights=False,
            task_type=TaskType.CAUSAL_LM,
        )
    else:
        base = AutoModelForSequenceClassification.from_pretrained(
            resolve_model_source("tiny:tiny-bert", models_dir),
            num_labels=3,
            ignore_mismatched_sizes=True,
        )
        config = LoraConfig(
            r=r,
            target_modules=["query", "value"],
            init_lora_weights=False,
            task_type=TaskType.SEQ_CLS,
        )
    model = get_peft_model(base, config)
    model.save_pretrained(str(out))
    return out
