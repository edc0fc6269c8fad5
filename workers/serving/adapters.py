"""LoRA adapters on a served base model: loading them into peft, and their lifetime.

Serve's multiplexing keeps an LRU of loaded adapters per replica; the handle it holds
(`LoadedAdapter`) unloads the weights when evicted. `AdapterHost` is the peft model the
classifier forwards through, with the lock that keeps loads and forward passes apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from workers.sources import local_dir
from workers.spec import BASE_MODEL_ID, MANIFEST_FILE


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    return dict(json.loads(path.read_text())) if path.exists() else {}


class AdapterHost:
    """Adapters loaded into one peft model under their own names."""

    def __init__(self, base: torch.nn.Module) -> None:
        self.base = base
        self.model: Any = base  # becomes a PeftModel with the first adapter
        self.loaded: set[str] = set()
        # Adapter loads and forward passes must not interleave (they change the modules).
        self.lock = threading.Lock()

    def load(self, name: str, directory: Path) -> None:
        from peft import PeftModel

        with self.lock:
            if name in self.loaded:
                return
            if self.model is self.base:
                self.model = PeftModel.from_pretrained(self.base, str(directory), adapter_name=name)
            else:
                self.model.load_adapter(str(directory), adapter_name=name)
            self.model.eval()
            self.loaded.add(name)

    def unload(self, name: str) -> None:
        with self.lock:
            if name not in self.loaded:
                return
            if len(self.loaded) == 1:
                # peft keeps at least one adapter; the last one stays until replaced.
                return
            if self.model.active_adapter == name:
                self.model.set_adapter(next(a for a in self.loaded if a != name))
            self.model.delete_adapter(name)
            self.loaded.discard(name)


class AdapterEngine(Protocol):
    """What an engine offers for its adapters (both engines do)."""

    def load_adapter(self, name: str, directory: Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...


@dataclass(eq=False)
class LoadedAdapter:
    """One adapter as Serve's multiplexing LRU holds it; `name` None is the base model.

    Serve calls `__del__` itself when its LRU evicts the adapter, then sets the instance's
    `__del__` to a no-op (so the handle must not be frozen); the garbage collector still
    calls the class's `__del__` later: the weights are freed once, whichever comes first.
    A request still decoding with the adapter keeps it (the engine defers the unload)."""

    name: str | None
    engine: AdapterEngine
    unloaded: bool = False

    def __del__(self) -> None:
        if self.name is not None and not self.unloaded:
            self.unloaded = True
            # Never let an eviction take the replica down.
            with contextlib.suppress(Exception):
                self.engine.unload_adapter(self.name)


def adapter_loader(
    engine: AdapterEngine, cache: Path, fresh_loads: dict[str, float]
) -> Callable[[str], Awaitable[LoadedAdapter]]:
    """The function Serve's `multiplexed` wraps: a model id (an artifact URI) to its adapter.

    The URI is a published model's folder or a job checkpoint's ``model/`` folder (a
    checkpoint served as a model): both hold the adapter and the manifest, so both load
    the same way, on first use.

    Each load's seconds go into `fresh_loads` under the model id, for the caller's
    response header."""

    async def load(model_id: str) -> LoadedAdapter:
        if model_id == BASE_MODEL_ID:
            return LoadedAdapter(None, engine)
        started = time.perf_counter()
        directory = await asyncio.to_thread(local_dir, model_id, cache)
        name = "a" + uuid.uuid5(uuid.NAMESPACE_URL, model_id).hex
        await asyncio.to_thread(engine.load_adapter, name, directory)
        fresh_loads[model_id] = time.perf_counter() - started
        return LoadedAdapter(name, engine)

    return load
