"""What a job's training minimises and reports: the objective `workers.train` runs.

- `Supervised`: cross-entropy on the target tokens (a classifier: on the label), summed
  and divided by the number of targets of the optimizer step.
- `Dpo` (Direct Preference Optimization, Rafailov et al. 2023): for a pair of answers to
  one prompt, ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``, where ``pi`` and
  ``ref`` are the summed log-probabilities of an answer's tokens under the model being
  trained and under the reference model (the model the job starts from). The implicit
  rewards ``beta * (pi - ref)`` give the reported metrics, named as TRL names them:
  reward accuracy (pairs whose chosen reward is above the rejected one; a tie counts
  half, so the starting model scores 0.5 where TRL's count gives it 0), reward margin,
  chosen and rejected rewards.

The loss is ours rather than TRL's: `DPOTrainer` is a whole `transformers.Trainer` loop
(its own checkpoints, data collation and distributed setup) that would replace the
recipe's, with its pause, resume and fault handling; the loss itself is a few lines.

The reference model costs no second copy for a LoRA job: it is the base model with the
adapter disabled, or, for a job that continues a LoRA model, the model with its starting
adapter weights swapped in for the reference pass. A full fine-tune keeps a frozen copy.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from workers.checkpoints import MODEL_DIR, restore_adapter
from workers.data import collate
from workers.modeling import (
    apply_lora,
    count_targets,
    forward_loss,
    load_adapter_weights,
    load_base_model,
    load_start_model,
)
from workers.preference_data import collate_preference, sequence_logps
from workers.sources import resolve_model_source
from workers.spec import JobSpec, LoraAdapter, Task


@dataclass
class BatchLoss:
    # Summed over the batch's units (target tokens, labels or pairs); carries the graph.
    loss: torch.Tensor
    # Sums of the objective's other metrics over the same units.
    sums: dict[str, float]


class Objective(Protocol):
    """How a batch of rows becomes a loss and metrics."""

    @property
    def metric_names(self) -> tuple[str, ...]:
        """The names of `BatchLoss.sums`, in a fixed order (all-reduced as a list)."""
        ...

    def to(self, device: torch.device) -> None:
        """Moves what it holds (a reference model) to the training device."""
        ...

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]: ...

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        """What the loss is averaged over in this batch."""
        ...

    def loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        autocast_dtype: torch.dtype | None,
    ) -> BatchLoss: ...


def averaged(objective: Objective, sums: list[float], units: float) -> dict[str, float]:
    """The objective's metrics, from their sums (in `metric_names` order) over `units`."""
    names = objective.metric_names
    return {name: value / max(1.0, units) for name, value in zip(names, sums, strict=True)}


@dataclass(frozen=True)
class Supervised:
    task: Task
    pad_id: int

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("accuracy",) if self.task == "sequence_classification" else ()

    def to(self, device: torch.device) -> None:
        pass

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return collate(batch, self.pad_id, self.task)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return count_targets(batch["labels"], self.task)

    def loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        autocast_dtype: torch.dtype | None,
    ) -> BatchLoss:
        loss, logits = forward_loss(model, batch, self.task, autocast_dtype)
        sums: dict[str, float] = {}
        if self.task == "sequence_classification":
            # Counted in training too, where it costs nothing; reported for evaluation.
            sums["accuracy"] = float((logits.argmax(-1) == batch["labels"]).sum())
        return BatchLoss(loss, sums)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and the chosen and rejected rewards (from summed log-probs)."""
    chosen_rewards = beta * (policy_chosen - reference_chosen)
    rejected_rewards = beta * (policy_rejected - reference_rejected)
    losses = -nn.functional.logsigmoid(chosen_rewards - rejected_rewards)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()


class Reference(Protocol):
    """The reference model's summed log-probabilities of each row's label tokens."""

    def to(self, device: torch.device) -> None:
        """Moves what it holds beside the trained model to the training device."""
        ...

    def logps(
        self, model: nn.Module, batch: dict[str, torch.Tensor], autocast: torch.dtype | None
    ) -> torch.Tensor: ...


def _autocast(
    device_type: str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[None]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


@torch.no_grad()
def _eval_logps(
    model: nn.Module, batch: dict[str, torch.Tensor], autocast: torch.dtype | None
) -> torch.Tensor:
    # Evaluation mode: no dropout, so the reference is the same on every pass.
    was_training = model.training
    model.eval()
    try:
        with _autocast(batch["input_ids"].device.type, autocast):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        return sequence_logps(logits, batch["labels"])
    finally:
        model.train(was_training)


@dataclass
class AdapterDisabled:
    """A LoRA job from its base: the reference is the base model, the adapter switched off."""

    peft_model: nn.Module

    def to(self, device: torch.device) -> None:
        pass  # it holds nothing of its own

    def logps(
        self, model: nn.Module, batch: dict[str, torch.Tensor], autocast: torch.dtype | None
    ) -> torch.Tensor:
        with self.peft_model.disable_adapter():  # type: ignore[operator]
            return _eval_logps(self.peft_model, batch, autocast)


class StartingAdapter:
    """A LoRA job that continues a LoRA model: the reference is that model, so its adapter
    weights (kept from before training) are swapped in for the reference pass."""

    def __init__(self, peft_model: nn.Module) -> None:
        self.peft_model = peft_model
        self.params = [p for p in peft_model.parameters() if p.requires_grad]
        self.start = [p.detach().clone() for p in self.params]

    def to(self, device: torch.device) -> None:
        self.start = [value.to(device) for value in self.start]

    @contextlib.contextmanager
    def _swapped(self) -> Iterator[None]:
        trained = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for param, value in zip(self.params, self.start, strict=True):
                param.copy_(value)
        try:
            yield
        finally:
            with torch.no_grad():
                for param, value in zip(self.params, trained, strict=True):
                    param.copy_(value)

    def logps(
        self, model: nn.Module, batch: dict[str, torch.Tensor], autocast: torch.dtype | None
    ) -> torch.Tensor:
        with self._swapped():
            return _eval_logps(self.peft_model, batch, autocast)


@dataclass
class FrozenCopy:
    """A full fine-tune: the reference is a frozen copy of the starting model."""

    model: nn.Module

    def to(self, device: torch.device) -> None:
        self.model.to(device)

    def logps(
        self, model: nn.Module, batch: dict[str, torch.Tensor], autocast: torch.dtype | None
    ) -> torch.Tensor:
        return _eval_logps(self.model, batch, autocast)


@dataclass
class Dpo:
    beta: float
    pad_id: int
    reference: Reference
    metric_names: tuple[str, ...] = (
        "reward_accuracy",
        "reward_margin",
        "chosen_reward",
        "rejected_reward",
    )

    def to(self, device: torch.device) -> None:
        self.reference.to(device)

    def collate(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return collate_preference(batch, self.pad_id)

    def units(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0]) // 2

    def loss(
        self,
        model: nn.Module,
        batch: dict[str, torch.Tensor],
        autocast_dtype: torch.dtype | None,
    ) -> BatchLoss:
        pairs = self.units(batch)
        # The reference pass first: swapping weights in place after the policy's forward
        # would change tensors its backward pass still needs.
        reference = self.reference.logps(model, batch, autocast_dtype)
        with _autocast(batch["input_ids"].device.type, autocast_dtype):
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        policy = sequence_logps(logits, batch["labels"])
        losses, chosen, rejected = dpo_loss(
            policy[:pairs], policy[pairs:], reference[:pairs], reference[pairs:], self.beta
        )
        return BatchLoss(
            losses.sum(),
            {
                # A tie (the model before training) counts half: no preference either way.
                "reward_accuracy": float(
                    (chosen > rejected).sum() + 0.5 * (chosen == rejected).sum()
                ),
                "reward_margin": float((chosen - rejected).sum()),
                "chosen_reward": float(chosen.sum()),
                "rejected_reward": float(rejected.sum()),
            },
        )


def build_model(
    spec: JobSpec, source: str, models_dir: str, restore_dir: Path | None, pad_id: int
) -> tuple[nn.Module, Objective]:
    """The model a worker trains, on CPU and not yet wrapped for DDP, and its objective.

    In order: the starting model (the base, or the model a job continues from), its
    adapter (a continued LoRA model's own weights), the reference a DPO job needs (taken
    here, before a checkpoint's weights replace the starting ones), then the checkpoint
    a resumed run goes on from.
    """
    init = spec.init_from
    init_dir = (
        Path(resolve_model_source(init.uri, Path(models_dir)))
        if init is not None and init.adapter == "lora"
        else None
    )
    adapter = spec.adapter
    model = load_start_model(spec, source, init_dir)
    reference: Reference | None = None
    if isinstance(adapter, LoraAdapter):
        model = apply_lora(model, spec, adapter)
        if init_dir is not None:
            load_adapter_weights(model, init_dir)
            reference = StartingAdapter(model)
        else:
            reference = AdapterDisabled(model)
        if restore_dir is not None:
            restore_adapter(model, restore_dir)
    elif restore_dir is not None:
        if spec.dpo is not None:
            reference = FrozenCopy(_frozen(model))
        # A full fine-tune's checkpoint holds the whole model, loaded in place of the start.
        model = load_base_model(spec, str(restore_dir / MODEL_DIR))
    elif spec.dpo is not None:
        reference = FrozenCopy(_frozen(copy.deepcopy(model)))
    if spec.dpo is None:
        return model, Supervised(spec.task, pad_id)
    assert reference is not None
    return model, Dpo(spec.dpo.beta, pad_id, reference)


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model
