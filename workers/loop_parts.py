"""The recipe's small parts: the learning-rate schedule, the workers' sums, the end of an
epoch known when its last batch arrives, and seeding. Apart from `workers.train` so benches
and tests use them without a Ray Train run."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def lr_lambda(step: int, warmup_steps: int, total_steps: int, kind: str) -> float:
    """Multiplier of the peak learning rate at `step` (LambdaLR convention)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(1.0, max(0.0, progress))
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def all_reduce(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return [float(x) for x in tensor.tolist()]


def with_last(items: Iterator[Any]) -> Iterator[tuple[Any, bool]]:
    """Yields (item, is_last): the end of an epoch is known when its last batch arrives."""
    previous: Any = None
    has_previous = False
    for item in items:
        if has_previous:
            yield previous, False
        previous, has_previous = item, True
    if has_previous:
        yield previous, True


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
