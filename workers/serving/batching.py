"""How one batch of requests runs on an engine, for the deployment's `@serve.batch` methods.

Serve gathers the requests; these functions decide how they share forward passes:
generation rows share one decode loop whatever their adapters, classification requests
share a forward pass per adapter. Engine work runs off the event loop so the replica keeps
queueing requests for the next batch meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from workers.serving.classifier import ClassifierEngine
from workers.serving.engine import CausalLMEngine, Delta, GenerationRequest

# One request's classification: its texts and its adapter (None: the base model).
ClassifyRequest = tuple[list[str], str | None]
# Its answer: each text's labels and scores, and each text's tokens.
ClassifyResult = tuple[list[dict[str, Any]], list[int]]


def run_to_end(engine: CausalLMEngine, requests: Sequence[GenerationRequest]) -> list[Delta]:
    """Generate the whole batch; each request's deltas folded into one."""
    folded = [Delta("") for _ in requests]
    for deltas in engine.generate(requests):
        for out, d in zip(folded, deltas, strict=True):
            if d is not None:
                out.text += d.text
                out.finish_reason = d.finish_reason
                out.prompt_tokens, out.completion_tokens = d.prompt_tokens, d.completion_tokens
    return folded


async def decode_batch(
    engine: CausalLMEngine, requests: list[GenerationRequest]
) -> AsyncIterator[list[Delta | type[StopIteration]]]:
    """What `@serve.batch` streams back: one list per step, a row's entry per caller."""
    if not any(r.stream for r in requests):
        # Nobody streams: one hop to the decode thread for the whole batch, not one
        # per step (each hop wakes every caller of the batch).
        folded = await asyncio.to_thread(run_to_end, engine, requests)
        for d in folded:
            d.batch_size = len(requests)
        yield list[Delta | type[StopIteration]](folded)
        return
    steps = engine.generate(requests)
    while True:
        # The decode step runs off the event loop so new requests keep queueing for
        # the next batch meanwhile.
        deltas = await asyncio.to_thread(next, steps, None)
        if deltas is None:
            return
        # A row that finished in an earlier step ends its caller's stream.
        yield [StopIteration if d is None else d for d in deltas]


async def classify_grouped(
    engine: ClassifierEngine, requests: list[ClassifyRequest]
) -> list[ClassifyResult]:
    """Requests for the same adapter share one forward pass, off the event loop (the
    replica keeps taking requests meanwhile)."""
    out: list[ClassifyResult] = [([], []) for _ in requests]
    by_adapter: dict[str | None, list[int]] = {}
    for i, (_, adapter) in enumerate(requests):
        by_adapter.setdefault(adapter, []).append(i)
    for adapter, members in by_adapter.items():
        texts = [t for i in members for t in requests[i][0]]
        results, tokens = await asyncio.to_thread(engine.classify, texts, adapter)
        start = 0
        for i in members:
            n = len(requests[i][0])
            mine = [{**r, "index": k} for k, r in enumerate(results[start : start + n])]
            out[i] = (mine, tokens[start : start + n])
            start += n
    return out


def unsplit(batched: Callable[[GenerationRequest], Any], request: GenerationRequest) -> Any:
    """Queue `request` for the batch with no multiplexed model id in its context.

    Serve splits a batch by the callers' multiplexed model ids, which would decode each
    adapter's requests alone; our batches carry each row's adapter themselves and mix
    them in one decode loop, so the id is hidden while the request is queued."""
    from ray.serve import context

    var: Any = context._serve_request_context  # typed as holding None in Ray 2.60
    current = var.get() or context._RequestContext()
    token = var.set(dataclasses.replace(current, multiplexed_model_id=""))
    try:
        return batched(request)
    finally:
        var.reset(token)
