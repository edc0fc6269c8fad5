"""How one batch of classification requests runs, for the deployment's `@serve.batch`.

Serve gathers the requests (a classification is one forward pass, so there is nothing to
join mid-way, unlike generation: `workers.serving.continuous`); requests for the same adapter
share a forward pass. Engine work runs off the event loop so the replica keeps queueing
requests for the next batch meanwhile.
"""

from __future__ import annotations

import asyncio
from typing import Any

from workers.serving.classifier import ClassifierEngine

# One request's classification: its texts and its adapter (None: the base model).
ClassifyRequest = tuple[list[str], str | None]
# Its answer: each text's labels and scores, and each text's tokens.
ClassifyResult = tuple[list[dict[str, Any]], list[int]]


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
