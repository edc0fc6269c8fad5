"""The causal LM engine: a base model, its adapters, and the steps of a running batch.

A `Batch` is the rows decoding together and their KV cache. The engine prefills new
requests into a batch of their own (`prefill`), decodes one token for every row of a batch
(`decode`), joins two batches into one (`join`) and drops rows (`retain`): what the
continuous batcher needs to let requests join and leave between decode steps. Every row may
use another adapter (`workers.serving.lora`, one pass for all of them) and samples with its
own parameters and generator.

Knows nothing of Ray or threads: tests drive it directly with a tiny real model, and the
deployment takes one injected through its constructor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workers.data import chat_prompt_ids, load_tokenizer, prompt_ids
from workers.serving.lora import BatchedLoRA
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
    batch_size: float = 1.0  # the mean number of requests decoded together with this one


@dataclass
class Row:
    """One request in a running batch."""

    request: GenerationRequest
    slot: int  # its adapter's slot (0: the base model)
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    generated: int = 0  # tokens sampled, the final EOS included (what usage counts)
    text: str = ""  # the completion so far (cut at a stop sequence)
    sent: int = 0  # characters of `text` handed out in deltas
    prefix_offset: int = 0  # the incremental detokenizer's window over `tokens`
    read_offset: int = 0
    finish_reason: str | None = None
    next_token: int = 0  # sampled, not yet fed to the model
    position: int = 0  # the position `next_token` takes
    forwards: int = 0  # forward passes this row took part in, and their rows summed
    rows_seen: int = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def mean_batch(self) -> float:
        return self.rows_seen / self.forwards if self.forwards else 1.0


@dataclass
class Batch:
    """Rows decoding together: their KV cache and attention mask are left-padded to one width."""

    rows: list[Row]
    cache: Any  # transformers' DynamicCache, batch first
    mask: torch.Tensor  # [rows, width]: 1 where a row has a real token


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
    """A causal LM and its adapters; prefills, decodes, joins and splits batches of rows."""

    def __init__(self, source: str, models_dir: str, max_context_tokens: int = 1024) -> None:
        from transformers import AutoModelForCausalLM

        path = resolve_model_source(source, Path(models_dir))
        self.tokenizer = load_tokenizer(source, models_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        self.model: Any = model.to(self.device).eval()
        self.lora = BatchedLoRA(self.model)
        import peft.utils  # noqa: F401  (imported now, not by the first adapter's load)

        self.max_context_tokens = max_context_tokens
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # The first forward pass pays one-off costs (kernels, allocator, lazy modules):
        # paid here, before the replica says it is ready, not by the first request.
        warm = self.prefill([GenerationRequest([self.pad_id] * 4, SamplingParams(2, 0.0))])[0]
        self.decode(warm)
        self.joinable = all(type(layer).__name__ == "DynamicLayer" for layer in warm.cache.layers)

    @property
    def adapters(self) -> set[str]:
        return self.lora.loaded

    def load_adapter(self, name: str, directory: Path) -> None:
        self.lora.load(name, directory)

    def unload_adapter(self, name: str) -> None:
        self.lora.unload(name)

    def encode_prompt(self, prompt: str) -> list[int]:
        return prompt_ids(self.tokenizer, prompt)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, messages)

    def prefill(self, requests: Sequence[GenerationRequest]) -> tuple[Batch, list[Delta]]:
        """A batch of `requests`, their prompts run and each row's first token sampled."""
        slots: list[int] = []
        try:
            for r in requests:
                slots.append(self.lora.acquire(r.adapter))
            return self._prefill(requests, slots)
        except BaseException:
            for slot in slots:
                self.lora.release(slot)
            raise

    def _prefill(
        self, requests: Sequence[GenerationRequest], slots: list[int]
    ) -> tuple[Batch, list[Delta]]:
        rows = [
            Row(
                r,
                slot,
                torch.Generator().manual_seed(r.params.seed) if r.params.seed is not None else None,
            )
            for r, slot in zip(requests, slots, strict=True)
        ]
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
            rows[i].position = len(r.prompt_ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        batch = Batch(rows, None, mask.to(self.device))
        return batch, self._forward(batch, ids.to(self.device), positions.to(self.device))

    def decode(self, batch: Batch) -> list[Delta]:
        """One token for every row of `batch` (each row's last sampled token fed back)."""
        ids = torch.tensor([[r.next_token] for r in batch.rows], device=self.device)
        positions = torch.tensor([[r.position] for r in batch.rows], device=self.device)
        batch.mask = torch.cat([batch.mask, torch.ones_like(ids)], dim=1)
        for row in batch.rows:
            row.position += 1
        return self._forward(batch, ids, positions)

    def join(self, batch: Batch, other: Batch) -> Batch:
        """One batch of both batches' rows: caches and masks left-padded to one width."""
        width = max(batch.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(batch.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(theirs.keys, width)])
            mine.values = torch.cat(
                [_pad_left(mine.values, width), _pad_left(theirs.values, width)]
            )
        batch.mask = torch.cat([_pad_left(batch.mask, width, 1), _pad_left(other.mask, width, 1)])
        batch.rows = batch.rows + other.rows
        return batch

    def retain(self, batch: Batch, keep: list[int]) -> Batch:
        """`batch` with only the rows at `keep`; columns no remaining row uses are cut.
        The rows dropped give their adapters back (an unload waits for them)."""
        if len(keep) == len(batch.rows):
            return batch
        kept = set(keep)
        for i, row in enumerate(batch.rows):
            if i not in kept:
                self.lora.release(row.slot)
        if not keep:
            batch.rows, batch.cache = [], None
            return batch
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = batch.mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else mask.shape[1]
        for layer in batch.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        batch.mask = mask[:, start:]
        batch.rows = [batch.rows[i] for i in keep]
        return batch

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[list[Delta | None]]:
        """The whole of `requests` as one batch: one list per step, each request's new text,
        None once it has finished (what tests and offline callers use)."""
        batch, deltas = self.prefill(requests)
        index = list(range(len(requests)))  # batch row -> request
        while True:
            out: list[Delta | None] = [None] * len(requests)
            for i, d in zip(index, deltas, strict=True):
                out[i] = d
            yield out
            keep = [k for k, row in enumerate(batch.rows) if not row.done]
            batch = self.retain(batch, keep)
            if not keep:
                return
            index = [index[k] for k in keep]
            deltas = self.decode(batch)

    def _forward(self, batch: Batch, ids: torch.Tensor, positions: torch.Tensor) -> list[Delta]:
        with self.lora.lock, torch.inference_mode():
            self.lora.routing.route([r.slot for r in batch.rows], self.device)
            out = self.model(
                input_ids=ids,
                attention_mask=batch.mask,
                position_ids=positions,
                past_key_values=batch.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        batch.cache = out.past_key_values
        logits = out.logits[:, -1, :]
        # Greedy rows need only their argmax: one small copy off the device per step; the
        # full logits come over only for the rows that sample.
        greedy = logits.argmax(dim=-1).tolist()
        deltas = []
        for i, row in enumerate(batch.rows):
            row.forwards += 1
            row.rows_seen += len(batch.rows)
            params = row.request.params
            if params.temperature > 0:
                token = sample(logits[i].float().cpu(), params, row.generator)
            else:
                token = greedy[i]
            row.next_token = token
            deltas.append(self._advance(row, token))
        return deltas

    def _advance(self, row: Row, token: int) -> Delta:
        params = row.request.params
        finish: str | None = None
        row.generated += 1
        if token == self.eos_id:
            finish = "stop"
        else:
            row.tokens.append(token)
        if finish is None and len(row.tokens) >= params.max_tokens:
            finish = "length"
        if (
            finish is None
            and len(row.request.prompt_ids) + len(row.tokens) >= self.max_context_tokens
        ):
            finish = "length"
        before = len(row.text)
        text = row.text + self._detokenize(row, final=finish is not None)
        for stop in params.stop:
            # Only where the new text can complete it: earlier text was searched already.
            at = text.find(stop, max(0, before - len(stop) + 1))
            if at >= 0:
                text, finish = text[:at], "stop"
        row.text = text
        # Text that may yet turn out to start a stop sequence waits for the next token.
        held = 0 if finish is not None else _stop_prefix(text, params.stop)
        new = text[row.sent : len(text) - held]
        row.sent += len(new)
        row.finish_reason = finish
        return Delta(new, finish, len(row.request.prompt_ids), row.generated, row.mean_batch)

    def _detokenize(self, row: Row, final: bool) -> str:
        """The text the row's newest tokens add, decoding only a few tokens per step.

        Decoding a short window that starts a few tokens back (the prefix) and taking
        what comes after the prefix's own text keeps the spaces and merges a full decode
        would give (TGI's and vLLM's incremental detokenization). A partial UTF-8 sequence
        is held until its last byte arrives, or the row ends."""
        prefix = self.tokenizer.decode(
            row.tokens[row.prefix_offset : row.read_offset], skip_special_tokens=True
        )
        window = self.tokenizer.decode(row.tokens[row.prefix_offset :], skip_special_tokens=True)
        if len(window) <= len(prefix) or (window.endswith("\ufffd") and not final):
            return ""
        row.prefix_offset, row.read_offset = row.read_offset, len(row.tokens)
        return window[len(prefix) :]


def _stop_prefix(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of `text` that begins some stop sequence."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


def _pad_left(t: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """`t` with zeros before its own columns along `dim` up to `width` (keys: [b, h, s, d])."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)
