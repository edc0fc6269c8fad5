"""OpenAI's "auto" hyperparameters: epochs, batch size and learning rate from the data.

The epoch rule is OpenAI's published one: 3 epochs, raised for small files until the job
sees about 100 examples (at most 25 epochs) and lowered for large ones to about 25,000
(at least 1). Batch size and learning rate are ours, chosen for the small models and CPUs
this service also runs on: about one step per 16 examples an epoch, a power of two from
4 to 32, and the base model's learning rate scaled with the square root of the batch (a
batch of 4 takes it as it is, at most twice it). With these, 64 chat examples teach
SmolLM2-135M an answer format in 3 epochs of 16 steps (`tuneplane demo`).
"""

from __future__ import annotations

import math

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MAX_AUTO_EPOCHS = 25
MIN_AUTO_BATCH = 4
MAX_AUTO_BATCH = 32
REFERENCE_BATCH = 4


def auto_epochs(examples: int) -> int:
    examples = max(1, examples)
    if examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_AUTO_EPOCHS, math.ceil(MIN_TARGET_EXAMPLES / examples))
    if examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(1, MAX_TARGET_EXAMPLES // examples)
    return TARGET_EPOCHS


def auto_batch_size(examples: int) -> int:
    per_step = max(1.0, examples / 16)
    # Below 4 a step is mostly overhead on a CPU; the caller caps it at the file's size.
    return int(min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, 2 ** round(math.log2(per_step)))))


def auto_learning_rate(base: float, batch_size: int) -> float:
    return base * min(2.0, math.sqrt(batch_size / REFERENCE_BATCH))
