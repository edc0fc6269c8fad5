"""What a training checkpoint holds, and how the recipe writes and restores one.

A checkpoint directory holds no pickle:

- ``model/``: ``save_pretrained`` output, the LoRA adapter (``adapter_model.safetensors``,
  ``adapter_config.json``) or the whole model (``model.safetensors``, ``config.json``)
- ``optimizer.safetensors``: the AdamW moment tensors
- ``trainer_state.json``: step, epoch, position in the epoch, scheduler and optimizer
  hyperparameters, metrics so far
- ``probe_logits.safetensors``: test diagnostics, in a final checkpoint when asked for

Ray Train keeps the newest `num_checkpoints_to_keep` and, when a worker is lost, restarts
the workers (up to `max_failures` times), which resume from the newest one through
`ray.train.get_checkpoint()`. Where checkpoints are stored is `workers.storage`'s part.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODEL_DIR = "model"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
PROBE_FILE = "probe_logits.safetensors"


@dataclass
class TrainerState:
    """Where training is: what a checkpoint restores besides the weights."""

    step: int = 0
    epoch: int = 0
    # Micro-batches of `epoch` already trained on, skipped when resuming mid-epoch.
    micro_batches_done: int = 0
    trained_tokens: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    # The first validation loss measured, which the final one is judged against.
    first_eval_loss: float | None = None


def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> dict[str, Any]:
    """Writes the moment tensors as safetensors; returns the JSON-able rest."""
    from safetensors.torch import save_file

    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                # safetensors keeps shape-[] tensors, but a copy makes them contiguous
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(index), {})[name] = value
    save_file(tensors, str(directory / OPTIMIZER_FILE))
    return {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer(
    optimizer: torch.optim.Optimizer, directory: Path, saved: dict[str, Any]
) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(directory / OPTIMIZER_FILE))
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in saved.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def write_checkpoint(
    directory: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    state: TrainerState,
    metrics: dict[str, float],
    final: bool,
) -> None:
    """Writes a checkpoint of the bare (unwrapped) model and the training state."""
    model.save_pretrained(directory / MODEL_DIR)  # type: ignore[operator]
    saved = {
        "step": state.step,
        "epoch": state.epoch,
        "micro_batches_done": state.micro_batches_done,
        "trained_tokens": state.trained_tokens,
        "first_eval_loss": state.first_eval_loss,
        "metrics": metrics,
        "scheduler": scheduler.state_dict(),
        "optimizer": save_optimizer(optimizer, directory),
        "final": final,
    }
    (directory / STATE_FILE).write_text(json.dumps(saved))


def restore_state(
    directory: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainerState:
    """Loads the optimizer and scheduler of a checkpoint; returns where training was."""
    saved = json.loads((directory / STATE_FILE).read_text())
    load_optimizer(optimizer, directory, saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    return TrainerState(
        step=saved["step"],
        epoch=saved["epoch"],
        micro_batches_done=saved["micro_batches_done"],
        trained_tokens=saved["trained_tokens"],
        metrics=saved.get("metrics", {}),
        first_eval_loss=saved.get("first_eval_loss"),
    )


def restore_adapter(model: nn.Module, directory: Path) -> None:
    """Loads a checkpoint's LoRA weights into a freshly built adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(directory / MODEL_DIR / ADAPTER_WEIGHTS)))


@torch.no_grad()
def write_probe(
    model: nn.Module, tokenizer: Any, text: str, device: torch.device, directory: Path
) -> None:
    """Saves the model's logits of `text`, for tests that compare them after loading."""
    from safetensors.torch import save_file

    model.eval()
    encoded = tokenizer(text, return_tensors="pt")
    logits = model(
        input_ids=encoded["input_ids"].to(device),
        attention_mask=encoded["attention_mask"].to(device),
    ).logits
    save_file({"logits": logits.float().cpu().contiguous()}, str(directory / PROBE_FILE))
