"""Preference pairs (tokenized by `workers.data.tokenize_preference`) as padded batches,
and the log-probabilities the DPO loss compares."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from workers.data import IGNORE_INDEX, collate

if TYPE_CHECKING:
    import torch


def _rows(*columns: Any) -> np.ndarray:
    # An object array filled row by row: numpy would make equal-length rows one 2-D array.
    rows = [row for column in columns for row in column]
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = row
    return out


def collate_preference(batch: dict[str, np.ndarray], pad_id: int) -> dict[str, torch.Tensor]:
    """A batch of B pairs as one padded batch of 2B rows: the B chosen sequences, then the
    B rejected ones (row i and row B + i are a pair), so one forward pass scores both."""
    chosen, rejected = batch["input_ids"], batch["rejected_input_ids"]
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen rows but {len(rejected)} rejected ones")
    rows = {
        "input_ids": _rows(chosen, rejected),
        "labels": _rows(batch["labels"], batch["rejected_labels"]),
    }
    return collate(rows, pad_id, "causal_lm")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, the sum of the log-probabilities of its label tokens ([rows, seq, vocab]
    logits and [rows, seq] labels -> [rows]), in float32.

    Logits at position t predict the token at t + 1; IGNORE_INDEX labels (prompt, padding)
    add nothing. A sum, not a mean: DPO compares whole answers' likelihoods.
    """
    import torch

    logits = logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    # Any valid index where the label is ignored; its term is dropped below.
    safe = targets.masked_fill(~mask, 0)
    picked = torch.gather(logits, -1, safe.unsqueeze(-1)).squeeze(-1)
    # log_softmax at the picked token, without a second [rows, seq, vocab] tensor.
    token_logps = picked - torch.logsumexp(logits, dim=-1)
    # where, not a product with the mask: a -inf logit at an ignored position stays out.
    return torch.where(mask, token_logps, torch.zeros_like(token_logps)).sum(dim=-1)
