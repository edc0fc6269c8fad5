"""The causal LM engine: a base model, its adapters, and one decode loop for a batch.

Knows nothing of Ray: tests drive it directly with a tiny real model, and the deployment
takes one injected through its constructor. Every row of a batch may use another adapter
(peft's mixed-adapter batches) and samples with its own parameters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workers.data import chat_prompt_ids, load_tokenizer, prompt_ids
from workers.serving.adapters import AdapterHost
from workers.sources import resolve_model_source


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  # None: the base model
    stream: bool = False  # its caller wants each step's text as it comes


@dataclass
class Delta:
    """What one decode step added to one request's completion."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_size: int = 1  # requests decoded together with this one


@dataclass
class _Row:
    request: GenerationRequest
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    generated: int = 0  # tokens sampled, the final EOS included (what usage counts)
    text: str = ""
    done: bool = False


def sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    """One token id from one row's last logits (greedy at temperature 0, else top-p)."""
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


class CausalLMEngine:
    """A causal LM and its adapters; generates for a batch of requests at once."""

    def __init__(self, source: str, models_dir: str, max_context_tokens: int = 1024) -> None:
        from transformers import AutoModelForCausalLM

        path = resolve_model_source(source, Path(models_dir))
        self.tokenizer = load_tokenizer(source, models_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        base: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        base = base.to(self.device).eval()
        self.host = AdapterHost(base)
        self.max_context_tokens = max_context_tokens
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # The first forward pass pays one-off costs (kernels, allocator, lazy modules):
        # paid here, before the replica says it is ready, not by the first request.
        with torch.inference_mode():
            base(input_ids=torch.tensor([[self.pad_id] * 4], device=self.device))

    def load_adapter(self, name: str, directory: Path) -> None:
        self.host.load(name, directory)

    def unload_adapter(self, name: str) -> None:
        self.host.unload(name)

    def encode_prompt(self, prompt: str) -> list[int]:
        return prompt_ids(self.tokenizer, prompt)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, messages)

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[list[Delta | None]]:
        """One list per decode step: each request's new text, None once it has finished.

        Rows are left-padded into one batch; each row samples with its own parameters and
        generator (so a seed gives the same text whatever else is in the batch)."""
        rows = [
            _Row(
                r,
                torch.Generator().manual_seed(r.params.seed) if r.params.seed is not None else None,
            )
            for r in requests
        ]
        ids, mask = self._left_padded(requests)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        adapters = [r.adapter for r in requests]
        steps = max(r.params.max_tokens for r in requests)
        past: Any = None
        for step in range(steps):
            with self.host.lock, torch.inference_mode():
                # Per step: an adapter load between steps may have changed the active one.
                out = self.host.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=past,
                    use_cache=True,
                    **self.host.adapter_kwargs(adapters),
                )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float().cpu()
            deltas: list[Delta | None] = []
            next_ids: list[int] = []
            for i, row in enumerate(rows):
                if row.done:
                    deltas.append(None)
                    next_ids.append(self.pad_id)
                    continue
                token = sample(logits[i], row.request.params, row.generator)
                next_ids.append(token)
                deltas.append(self._advance(row, token))
            yield deltas
            if all(row.done for row in rows) or step == steps - 1:
                return
            ids = torch.tensor(next_ids, dtype=torch.long, device=self.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
            positions = positions[:, -1:] + 1

    def _left_padded(
        self, requests: Sequence[GenerationRequest]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompts as one left-padded batch of ids and its attention mask, on device."""
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _advance(self, row: _Row, token: int) -> Delta:
        params = row.request.params
        finish: str | None = None
        row.generated += 1
        if token == self.eos_id:
            finish = "stop"
        else:
            row.tokens.append(token)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        # Hold back a partial UTF-8 sequence until its last byte arrives.
        if finish is None and text.endswith("\ufffd"):
            text = row.text
        for stop in params.stop:
            at = text.find(stop)
            if at >= 0:
                text, finish = text[:at], "stop"
        if finish is None and len(row.tokens) >= params.max_tokens:
            finish = "length"
        if (
            finish is None
            and len(row.request.prompt_ids) + len(row.tokens) >= self.max_context_tokens
        ):
            finish = "length"
        new = text[len(row.text) :] if text.startswith(row.text) else ""
        row.text = text if text.startswith(row.text) else row.text
        if finish is not None:
            row.done = True
        return Delta(new, finish, len(row.request.prompt_ids), row.generated)
