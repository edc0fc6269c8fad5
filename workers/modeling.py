"""The model a job fine-tunes: the base model, its LoRA adapter and the training loss.

Pieces the recipe (`workers.train`) and the benchmarks share; nothing here knows about
Ray. A classification job gets a fresh head sized to its labels; a LoRA job trains only
the adapter (and that head), a full job every weight.
"""

from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workers.data import IGNORE_INDEX
from workers.spec import JobSpec, LoraAdapter

ADAPTER_WEIGHTS = "adapter_model.safetensors"
# LoRA targets when the job does not name them: the attention projections, as in the LoRA
# paper; architectures not listed fall back to peft's own table.
DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
}
# Classification heads (and BERT-likes' pre-head layer) by their names in transformers,
# the names peft's SEQ_CLS task trains in full.
CLASSIFIER_HEADS = ("classifier", "pre_classifier", "score")
# Modules stored in GPT-2's Conv1D layout (weight transposed), which LoRA must know about.
_CONV1D_ARCHITECTURES = frozenset({"gpt2"})


def qlora_config(task: str) -> Any:
    """QLoRA's 4-bit base (Dettmers et al., 2023): NF4 weights, their scales quantized
    again (double quantization, ~0.4 bits a weight less), matmuls computed in bf16."""
    from transformers import BitsAndBytesConfig

    # A classifier's fresh head is trained in full (peft's modules_to_save copies it), so it
    # stays unquantized; a causal LM's output head transformers leaves unquantized itself.
    skip = list(CLASSIFIER_HEADS) if task == "sequence_classification" else None
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=skip,
    )


def _quantized_load(spec: JobSpec) -> dict[str, Any]:
    """from_pretrained's arguments for the job's base: a QLoRA job's in 4-bit, placed at
    load on the worker's device (bitsandbytes quantizes as the weights arrive there)."""
    if spec.adapter.type != "qlora":
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "adapter type 'qlora' loads the base model in 4-bit with bitsandbytes, which is "
            "not installed on this worker (pip install 'tuneplane[qlora]')"
        )
    # Ray Train has made the worker's GPU the current CUDA device.
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    return {"quantization_config": qlora_config(spec.task), "device_map": {"": device}}


def load_base_model(spec: JobSpec, source: str) -> nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    quantized = _quantized_load(spec)
    if spec.task == "sequence_classification":
        labels = spec.labels or []
        # A base model's head (if any) has another size; it is replaced by a fresh one.
        return AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
            ignore_mismatched_sizes=True,
            **quantized,
        )
    return AutoModelForCausalLM.from_pretrained(source, **quantized)


def load_start_model(spec: JobSpec, source: str, init_dir: Path | None) -> nn.Module:
    """The model a job starts from, before an adapter of its own: the base model (for a
    job that continues a full fine-tune, `source` is that model's folder), or, for a full
    fine-tune that continues a LoRA model, the base with that adapter folded into it."""
    model = load_base_model(spec, source)
    init = spec.init_from
    if init is not None and init.adapter == "lora" and spec.adapter.type == "full":
        from peft import PeftModel

        assert init_dir is not None, "a LoRA parent's adapter folder is needed"
        merged = PeftModel.from_pretrained(model, str(init_dir)).merge_and_unload()
        assert isinstance(merged, nn.Module)
        # peft froze the base weights under the adapter; a full fine-tune trains them all.
        merged.requires_grad_(True)
        return merged
    return model


def load_adapter_weights(model: nn.Module, folder: Path) -> None:
    """Loads the LoRA weights saved in `folder` (a published adapter or a checkpoint's
    ``model/``) into `model`'s adapter of the same shape."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_WEIGHTS)))
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise ValueError(
            f"the adapter in {folder} does not fit this model: {len(unexpected)} weights "
            f"have no place in it (first: {unexpected[0]})"
        )


def lora_targets(adapter: LoraAdapter, model_type: str) -> list[str] | str | None:
    if adapter.target_modules == "all-linear":
        return "all-linear"
    if adapter.target_modules:
        return list(adapter.target_modules)
    return DEFAULT_LORA_TARGETS.get(model_type)


def apply_lora(model: nn.Module, spec: JobSpec, adapter: LoraAdapter) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    if adapter.type == "qlora":
        from peft import prepare_model_for_kbit_training

        # Norms and other unquantized weights in fp32, inputs that carry gradients, and
        # activation checkpointing: QLoRA's memory saving is moot if activations fill it.
        # Non-reentrant checkpointing, which DDP's single backward pass works with.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    config = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=lora_targets(adapter, model_type),
        fan_in_fan_out=model_type in _CONV1D_ARCHITECTURES,
        # SEQ_CLS makes peft train and save the new classification head with the adapter.
        task_type=(
            TaskType.SEQ_CLS if spec.task == "sequence_classification" else TaskType.CAUSAL_LM
        ),
    )
    return get_peft_model(model, config)


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy over the positions whose label is not masked."""
    shifted = logits[:, :-1, :].float()
    targets = labels[:, 1:]
    return nn.functional.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def forward_loss(
    model: nn.Module,
    tensors: dict[str, torch.Tensor],
    task: str,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss of a batch and its logits; the forward pass autocast to `autocast_dtype`."""
    device_type = tensors["input_ids"].device.type
    autocast = (
        torch.autocast(device_type=device_type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    with autocast:
        logits = model(
            input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]
        ).logits
    if task == "sequence_classification":
        loss = nn.functional.cross_entropy(logits.float(), tensors["labels"], reduction="sum")
    else:
        loss = causal_lm_loss_sum(logits, tensors["labels"])
    return loss, logits


def count_targets(labels: torch.Tensor, task: str) -> int:
    if task == "sequence_classification":
        return int(labels.numel())
    return int((labels[:, 1:] != IGNORE_INDEX).sum().item())


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DDP's wrapper (what is saved and evaluated)."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    assert isinstance(inner, nn.Module)
    return inner
