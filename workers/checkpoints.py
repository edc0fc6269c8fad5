"""What a training checkpoint holds, and how the recipe writes and restores one.

A checkpoint directory holds no pickle:

- ``model/``: ``save_pretrained`` output, the LoRA adapter (``adapter_model.safetensors``,
  ``adapter_config.json``) or the whole model (``model.safetensors``, ``config.json``),
  with what serving needs to load it on its own, as it loads a published model: the
  manifest (``tuneplane.json``: task, labels, max_length) and, for a whole model, the
  tokenizer (`write_serving_files`). A checkpoint is a model users can call.
- ``optimizer.safetensors``: the AdamW moment tensors
- ``rng.safetensors``: the random generators' states, so a resumed run draws the same
  dropout masks as one that never stopped
- ``trainer_state.json``: step, epoch, position in the epoch, scheduler and optimizer
  hyperparameters, metrics so far
- ``probe_logits.safetensors``: test diagnostics, in a final checkpoint when asked for

When a worker is lost, Ray Train restarts the workers (up to `max_failures` times), which
resume from the newest checkpoint through `ray.train.get_checkpoint()`. Which checkpoints
are kept: a run that reports its checkpoints to the control plane keeps them all in Ray
Train, and the control plane removes the ones its retention drops (the last
`num_checkpoints_to_keep` and the best stay; `service.jobs.retention`), emptying their
directories; other runs (a search's trials) let Ray Train keep the newest
`num_checkpoints_to_keep`. Where checkpoints are stored is `workers.storage`'s part.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.modeling import load_adapter_weights
from workers.spec import MANIFEST_FILE, JobSpec, LoraAdapter

MODEL_DIR = "model"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
PROBE_FILE = "probe_logits.safetensors"
RNG_FILE = "rng.safetensors"
# In the metrics of a run's last report when it stopped for a pause, not at its end.
PAUSED_METRIC = "stopped_for_pause"


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


def save_rng(directory: Path) -> dict[str, Any]:
    """Writes torch's generator states; returns Python's and NumPy's, JSON-able."""
    from safetensors.torch import save_file

    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    save_file(tensors, str(directory / RNG_FILE))
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)
    version, internal, gauss_next = random.getstate()
    return {
        "python": [version, list(internal), gauss_next],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
    }


def load_rng(directory: Path, saved: dict[str, Any] | None) -> None:
    """Restores what `save_rng` wrote; a checkpoint from before it kept them is left be."""
    from safetensors.torch import load_file

    if saved is None or not (directory / RNG_FILE).is_file():
        return
    tensors = load_file(str(directory / RNG_FILE))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss_next = saved["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = saved["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))


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
        "rng": save_rng(directory),
        "final": final,
    }
    (directory / STATE_FILE).write_text(json.dumps(saved))


def write_serving_files(
    directory: Path, spec: JobSpec, metrics: dict[str, Any], tokenizer: Any
) -> None:
    """Makes the checkpoint's ``model/`` servable on its own: the manifest a published
    model has (a classifier's labels and max_length come from it) and, for a full
    fine-tune, whose folder is the served model's source, the tokenizer."""
    from workers.publish import manifest

    model_dir = directory / MODEL_DIR
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest(spec, metrics), indent=2))
    if not isinstance(spec.adapter, LoraAdapter):
        tokenizer.save_pretrained(model_dir)


def restore_state(
    directory: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> TrainerState:
    """Loads the optimizer and scheduler of a checkpoint; returns where training was."""
    saved = json.loads((directory / STATE_FILE).read_text())
    load_optimizer(optimizer, directory, saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    load_rng(directory, saved.get("rng"))
    return TrainerState(
        step=saved["step"],
        epoch=saved["epoch"],
        micro_batches_done=saved["micro_batches_done"],
        trained_tokens=saved["trained_tokens"],
        # What the paused run reported last is not a metric the resumed run goes on with.
        metrics={k: v for k, v in saved.get("metrics", {}).items() if k != PAUSED_METRIC},
        first_eval_loss=saved.get("first_eval_loss"),
    )


def restore_adapter(model: nn.Module, directory: Path) -> None:
    """Loads a checkpoint's LoRA weights into a freshly built adapter."""
    load_adapter_weights(model, directory / MODEL_DIR)


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
