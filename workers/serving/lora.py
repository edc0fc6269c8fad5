"""LoRA adapters applied per row in one pass: every row of a batch may use another adapter.

Each adapted linear layer of the base model is wrapped once. The wrapper keeps every loaded
adapter's A and B in one stacked tensor (a slot per adapter; slot 0 is the base model, all
zeros) and computes ``base(x) + B[slot] @ A[slot] @ x`` for each row with two batched
matrix products over gathered weights: Punica/S-LoRA's batched LoRA in plain torch. A batch
of eight adapters therefore costs the same number of operations as a batch of one, where
peft's mixed batches loop over adapters inside every layer.

A base row's delta is exactly zero, so it gets exactly the base model's output. Ranks differ
between adapters: smaller ones are padded with zero rows (exact as well). The scaling
(alpha / r, or alpha / sqrt(r) with rsLoRA) is folded into B at load.

Adapters come from peft's saved folders (``adapter_config.json`` and its weights). What this
engine cannot apply (DoRA, LoRA on embeddings, extra trained modules) is refused at load
with the reason, never served wrong.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class Routing:
    """Which slot each row of the next forward pass uses (set under the engine's lock)."""

    slots: torch.Tensor | None = None  # [batch] slot ids; None: every row is the base
    single: int | None = None  # every row uses this one slot (no gather needed)

    def route(self, slots: list[int], device: torch.device) -> None:
        unique = set(slots)
        if unique == {0}:
            self.slots, self.single = None, None
        elif len(unique) == 1:
            self.slots, self.single = None, slots[0]
        else:
            self.slots = torch.tensor(slots, dtype=torch.long, device=device)
            self.single = None


class BatchedLoRALinear(nn.Module):
    """A linear layer (``nn.Linear`` or GPT-2's ``Conv1D``) plus per-row LoRA deltas."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int, routing: Routing):
        super().__init__()
        self.base = base
        self.routing = routing
        weight = next(base.parameters())
        # Slot 0, the base model, stays zero.
        self.lora_a = torch.zeros(1, 1, in_features, dtype=weight.dtype, device=weight.device)
        self.lora_b = torch.zeros(1, out_features, 1, dtype=weight.dtype, device=weight.device)
        self.present: set[int] = set()  # the slots whose adapter adapts this layer

    def set_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Put one adapter's A ([r, in]) and scaled B ([out, r]) in `slot`; None clears it."""
        slots = max(self.lora_a.shape[0], slot + 1)
        rank = max(self.lora_a.shape[1], a.shape[0] if a is not None else 0)
        if (slots, rank) != tuple(self.lora_a.shape[:2]):
            grown_a = self.lora_a.new_zeros(slots, rank, self.lora_a.shape[2])
            grown_b = self.lora_b.new_zeros(slots, self.lora_b.shape[1], rank)
            grown_a[: self.lora_a.shape[0], : self.lora_a.shape[1]] = self.lora_a
            grown_b[: self.lora_b.shape[0], :, : self.lora_b.shape[2]] = self.lora_b
            self.lora_a, self.lora_b = grown_a, grown_b
        self.lora_a[slot].zero_()
        self.lora_b[slot].zero_()
        if a is None or b is None:
            self.present.discard(slot)
            return
        r = a.shape[0]
        self.lora_a[slot, :r] = a.to(self.lora_a.dtype)
        self.lora_b[slot, :, :r] = b.to(self.lora_b.dtype)
        self.present.add(slot)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.base(x)
        routing = self.routing
        if routing.single is not None:
            if routing.single not in self.present:
                return out
            a, b = self.lora_a[routing.single], self.lora_b[routing.single]
            return out + (x @ a.T) @ b.T
        if routing.slots is None or not self.present:
            return out
        # [batch, seq, in] x [batch, in, r] x [batch, r, out]: one product per step for
        # every row's own adapter.
        a = self.lora_a.index_select(0, routing.slots)
        b = self.lora_b.index_select(0, routing.slots)
        return out + torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))


class AdapterNotServable(ValueError):
    """An adapter this engine cannot apply (the message says why)."""


@dataclass
class LoRAWeights:
    """One saved adapter, read: per module path, its A ([r, in]) and scaled B ([out, r])."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor]]


def read_adapter(directory: Path) -> LoRAWeights:
    """A peft LoRA folder's weights, checked to be plain LoRA on linear layers."""
    from peft import LoraConfig
    from peft.utils import load_peft_weights

    config = LoraConfig.from_pretrained(str(directory))
    if getattr(config, "use_dora", False):
        raise AdapterNotServable("the adapter uses DoRA, which this engine does not apply")
    if config.modules_to_save:
        raise AdapterNotServable(
            f"the adapter trains whole modules ({', '.join(config.modules_to_save)}), "
            "which this engine does not apply"
        )
    state = load_peft_weights(str(directory), device="cpu")
    a_of: dict[str, torch.Tensor] = {}
    b_of: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key.endswith(".lora_A.weight"):
            a_of[_module_path(key, ".lora_A.weight")] = tensor
        elif key.endswith(".lora_B.weight"):
            b_of[_module_path(key, ".lora_B.weight")] = tensor
        else:
            raise AdapterNotServable(f"the adapter holds {key}, which this engine does not apply")
    layers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for path, a in a_of.items():
        if path not in b_of:
            raise AdapterNotServable(f"the adapter has no B weight for {path}")
        r = a.shape[0]
        alpha = _pattern_value(config.alpha_pattern, path, config.lora_alpha)
        scale = alpha / math.sqrt(r) if config.use_rslora else alpha / r
        layers[path] = (a, b_of[path] * scale)
    return LoRAWeights(layers)


def _module_path(key: str, suffix: str) -> str:
    path = key[: -len(suffix)]
    prefix = "base_model.model."
    return path[len(prefix) :] if path.startswith(prefix) else path


def _pattern_value(pattern: dict[str, Any] | None, path: str, default: float) -> float:
    """peft's per-module override: the first pattern key that ends the module's path."""
    for key, value in (pattern or {}).items():
        if path == key or path.endswith("." + key):
            return float(value)
    return float(default)


@dataclass
class BatchedLoRA:
    """The adapters of one base model, applied per row through `BatchedLoRALinear`s."""

    model: nn.Module
    routing: Routing = field(default_factory=Routing)
    slots: dict[str, int] = field(default_factory=dict)  # adapter name -> slot
    wrapped: dict[str, BatchedLoRALinear] = field(default_factory=dict)
    # Rows decoding with each slot: an unload waits for them (`unloading`), or a row still
    # running would go on with zeros, or with the weights of the next adapter in its slot.
    users: dict[int, int] = field(default_factory=dict)
    unloading: set[str] = field(default_factory=set)
    # Loads change the wrapped layers: they and forward passes must not interleave.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def loaded(self) -> set[str]:
        return set(self.slots)

    def load(self, name: str, directory: Path) -> None:
        weights = read_adapter(directory)
        with self.lock:
            if name in self.slots:
                self.unloading.discard(name)  # asked for again before its rows finished
                return
            slot = min(set(range(1, len(self.slots) + 2)) - set(self.slots.values()))
            for path in weights.layers:
                if path not in self.wrapped:
                    self._wrap(path)
            for path, layer in self.wrapped.items():
                a, b = weights.layers.get(path, (None, None))
                layer.set_slot(slot, a, b)
            self.slots[name] = slot

    def unload(self, name: str) -> None:
        with self.lock:
            slot = self.slots.get(name)
            if slot is None:
                return
            if self.users.get(slot):
                self.unloading.add(name)  # done when its last row leaves (`release`)
                return
            self._clear(name)

    def acquire(self, name: str | None) -> int:
        """The slot of an adapter (0 for the base model) for a row that starts decoding
        with it; a name not loaded is an error. `release` when the row leaves."""
        if name is None:
            return 0
        with self.lock:
            slot = self.slots.get(name)
            if slot is None or name in self.unloading:
                raise KeyError(f"adapter {name} is not loaded")
            self.users[slot] = self.users.get(slot, 0) + 1
            return slot

    def release(self, slot: int) -> None:
        if slot == 0:
            return
        with self.lock:
            self.users[slot] -= 1
            if self.users[slot]:
                return
            del self.users[slot]
            name = next((n for n, s in self.slots.items() if s == slot), None)
            if name in self.unloading:
                self._clear(name)

    def slot_of(self, name: str | None) -> int:
        """The slot of a loaded adapter (0 for the base model)."""
        return 0 if name is None else self.slots[name]

    def _clear(self, name: str) -> None:
        """Free the adapter's slot (with the lock held)."""
        self.unloading.discard(name)
        slot = self.slots.pop(name)
        for layer in self.wrapped.values():
            layer.set_slot(slot, None, None)

    def _wrap(self, path: str) -> None:
        parent_path, _, attr = path.rpartition(".")
        try:
            parent = self.model.get_submodule(parent_path) if parent_path else self.model
            base = getattr(parent, attr)
        except AttributeError:
            raise AdapterNotServable(f"the adapter adapts {path}, which this model lacks") from None
        in_features, out_features = _linear_shape(base, path)
        wrapper = BatchedLoRALinear(base, in_features, out_features, self.routing)
        setattr(parent, attr, wrapper)
        self.wrapped[path] = wrapper


def _linear_shape(module: nn.Module, path: str) -> tuple[int, int]:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # GPT-2's transposed linear layer: weight [in, out]
        weight: Any = module.weight
        return int(weight.shape[0]), int(weight.shape[1])
    raise AdapterNotServable(f"the adapter adapts {path}, a {type(module).__name__}, not a linear")
