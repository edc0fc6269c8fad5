"""Continuous batching: requests join the running batch between decode steps and leave it
when they finish, each at its own length.

One thread per replica runs the decode loop. Between two steps it takes the requests that
arrived (up to the batch size), prefills them as a batch of their own and joins them to
the running one; after each step it drops the rows that finished or whose caller went
away. Callers only append to a queue and wait on their own asyncio queue, so intake never
waits for a decode step, and an idle engine starts a lone request at once.

A streaming caller gets each step's text as it is decoded; any other caller gets one
delta, the whole completion, when its row finishes (one wake-up per request).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from workers.serving.engine import Batch, CausalLMEngine, Delta, GenerationRequest, Row


@dataclass
class _Ticket:
    """One caller's request and the queue its deltas (or its error) go to."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Delta | BaseException] = field(default_factory=asyncio.Queue)
    gone: bool = False  # the caller stopped listening: its row is dropped

    def put(self, item: Delta | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class TextGenerator(Protocol):
    """What a deployment needs of a generation engine: the transformers engine behind its
    continuous batcher (`ContinuousBatcher`), or vLLM (`workers.serving.vllm_engine`)."""

    name: str  # "hf" or "vllm", as a deployment names it
    max_context_tokens: int

    def encode_prompt(self, prompt: str) -> list[int]: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    def load_adapter(self, name: str, directory: Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta]: ...


class ContinuousBatcher:
    """The decode loop of one engine; `generate` is what a replica's handler awaits."""

    name = "hf"

    def __init__(self, engine: CausalLMEngine, max_batch_size: int) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.max_context_tokens = engine.max_context_tokens
        self._waiting: deque[_Ticket] = deque()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self.running = 0  # rows in the running batch (read by tests and metrics)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta]:
        """The request's deltas as its row produces them; closing the iterator (a caller
        that went away) frees the row at the next step."""
        ticket = _Ticket(request, asyncio.get_running_loop())
        with self._wake:
            self._start()
            self._waiting.append(ticket)
            self._wake.notify()
        try:
            while True:
                item = await ticket.queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            ticket.gone = True

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.engine.encode_prompt(prompt)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return self.engine.encode_chat(messages)

    def load_adapter(self, name: str, directory: Path) -> None:
        self.engine.load_adapter(name, directory)

    def unload_adapter(self, name: str) -> None:
        self.engine.unload_adapter(name)

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="decode-loop", daemon=True)
            self._thread.start()

    def _admit(self, batch: Batch | None) -> list[_Ticket]:
        """The waiting requests that fit in the batch now (waits while there is no work)."""
        with self._wake:
            while not self._stopped and batch is None and not self._waiting:
                self._wake.wait()
            running = len(batch.rows) if batch is not None else 0
            room = self.max_batch_size - running
            if batch is not None and not self.engine.joinable:
                room = 0  # a cache we cannot pad: new rows wait for the batch to drain
            taken: list[_Ticket] = []
            while self._waiting and len(taken) < room:
                ticket = self._waiting.popleft()
                if not ticket.gone:
                    taken.append(ticket)
            return taken

    def _loop(self) -> None:
        batch: Batch | None = None
        tickets: list[_Ticket] = []  # one per row of `batch`
        while not self._stopped:
            new = self._admit(batch)
            fresh: Batch | None = None
            try:
                if new:
                    fresh, deltas = self.engine.prefill([t.request for t in new])
                    self._deliver(new, fresh.rows, deltas)
                    batch = fresh if batch is None else self.engine.join(batch, fresh)
                    fresh = None
                    tickets = tickets + new
                    batch, tickets = self._sweep(batch, tickets)
                if batch is not None:
                    deltas = self.engine.decode(batch)
                    self._deliver(tickets, batch.rows, deltas)
                    batch, tickets = self._sweep(batch, tickets)
            except Exception as exc:  # the batch is lost: every caller in it gets the error
                for ticket in {id(t): t for t in tickets + new}.values():
                    ticket.put(exc)
                for lost in (batch, fresh):
                    if lost is not None:
                        self.engine.retain(lost, [])  # their adapters are given back
                batch, tickets = None, []
            self.running = len(tickets)

    def _deliver(self, tickets: list[_Ticket], rows: list[Row], deltas: list[Delta]) -> None:
        for ticket, row, delta in zip(tickets, rows, deltas, strict=True):
            if ticket.gone:
                continue
            if ticket.request.stream:
                if delta.text or delta.finish_reason is not None:
                    ticket.put(delta)
            elif row.done:
                ticket.put(
                    Delta(
                        row.text,
                        row.finish_reason,
                        delta.prompt_tokens,
                        delta.completion_tokens,
                        delta.batch_size,
                    )
                )

    def _sweep(self, batch: Batch, tickets: list[_Ticket]) -> tuple[Batch | None, list[_Ticket]]:
        """The batch without its finished rows and the rows nobody waits for."""
        pairs = zip(tickets, batch.rows, strict=True)
        keep = [i for i, (t, r) in enumerate(pairs) if not (r.done or t.gone)]
        batch = self.engine.retain(batch, keep)
        if not keep:
            return None, []
        return batch, [tickets[i] for i in keep]
