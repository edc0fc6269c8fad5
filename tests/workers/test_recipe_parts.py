"""The recipe's pieces that need no cluster: schedule, loss, optimizer state on disk."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from workers.checkpoints import load_optimizer, save_optimizer
from workers.loop_parts import lr_lambda
from workers.modeling import DEFAULT_LORA_TARGETS, causal_lm_loss_sum, lora_targets
from workers.spec import LoraAdapter


def test_schedules_warm_up_then_decay() -> None:
    linear = [lr_lambda(s, 2, 10, "linear") for s in range(10)]
    assert linear[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert linear[2:] == sorted(linear[2:], reverse=True)
    assert lr_lambda(10, 2, 10, "linear") == 0.0
    cosine = [lr_lambda(s, 0, 10, "cosine") for s in range(11)]
    assert cosine[0] == 1.0 and cosine[5] == pytest.approx(0.5) and cosine[10] == pytest.approx(0)
    assert [lr_lambda(s, 3, 10, "constant") for s in (3, 9)] == [1.0, 1.0]


def test_causal_lm_loss_counts_only_unmasked_next_tokens() -> None:
    logits = torch.zeros(1, 4, 5)
    logits[0, 0, 2] = 10.0  # predicts token 2 at position 1 with near certainty
    labels = torch.tensor([[-100, 2, -100, -100]])
    assert causal_lm_loss_sum(logits, labels).item() == pytest.approx(0.0, abs=1e-3)
    labels = torch.tensor([[-100, 3, -100, 4]])
    # Two counted targets: a confident miss, log(4 + e^10), and a uniform guess, log(5).
    expected = math.log(4 + math.exp(10)) + math.log(5)
    assert causal_lm_loss_sum(logits, labels).item() == pytest.approx(expected, rel=1e-3)


def test_optimizer_state_round_trips_through_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    for _ in range(3):
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    saved = save_optimizer(optimizer, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"optimizer.safetensors"}

    restored = torch.optim.AdamW(model.parameters(), lr=0.5)
    load_optimizer(restored, tmp_path, saved)
    before, after = optimizer.state_dict(), restored.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, state in before["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(after["state"][index][name], value)


def test_lora_targets_default_per_architecture_unless_given() -> None:
    assert lora_targets(LoraAdapter(), "gpt2") == ["c_attn"]
    assert lora_targets(LoraAdapter(), "llama") == ["q_proj", "v_proj"]
    assert lora_targets(LoraAdapter(), "bert") == ["query", "value"]
    assert lora_targets(LoraAdapter(target_modules=["k_proj"]), "llama") == ["k_proj"]
    assert lora_targets(LoraAdapter(), "some-new-arch") is None  # peft's own table decides
    assert set(DEFAULT_LORA_TARGETS) >= {"gpt2", "llama", "bert"}
