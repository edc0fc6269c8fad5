"""Recently admitted keys and models, so that most inference requests skip the database.

Each inference request needs its key's tenant, that tenant's rate and its model's route.
Read from the database, that is a trip to the thread pool and a query: about 1 ms of the
control plane's 2.3 ms on this 2-core machine (bench/proxy_overhead.py), twice that with
Ray busy beside it. A (key, model, task) that resolved within the last
`inference_admission_cache_s` seconds is taken from here instead, and only the rate limit
is taken (from the event loop, a few tokens per trip to Redis: service/ratelimit.py).

Staleness: this process forgets every entry when a key is revoked, a tenant's quotas or
weight change or a model is deleted through it (after the commit); another control-plane
replica sees such a change within the TTL. Errors are never kept: a request that failed
to resolve asks the database again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import TTLCache

from service.deployments.serving import Route

# Bounded: a client cycling through many keys or model names cannot grow the process.
MAX_ENTRIES = 10_000

# Bumped by every change that can make a kept admission wrong. Process-wide: a test
# process holding several apps over-invalidates, which is only slower.
_generation = 0
_generation_lock = threading.Lock()


def invalidate_admissions() -> None:
    """Forget every kept admission in this process (a key, tenant or model changed)."""
    global _generation
    with _generation_lock:
        _generation += 1


def admission_generation() -> int:
    return _generation


@dataclass(frozen=True)
class Target:
    """Where a model's requests go: its Serve route, and the model named in usage."""

    route: Route
    model: str


@dataclass(frozen=True)
class Admission:
    tenant_id: str
    # The tenant's token bucket: requests per minute and burst.
    per_minute: int
    burst: int
    target: Target
    generation: int


class AdmissionCache:
    """(key hash, model, task) -> Admission, for `ttl_s` seconds; 0 keeps nothing."""

    def __init__(
        self,
        ttl_s: float,
        max_entries: int = MAX_ENTRIES,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: TTLCache[tuple[str, str, str], Admission] | None = (
            TTLCache(maxsize=max_entries, ttl=ttl_s, timer=timer) if ttl_s > 0 else None
        )
        # Filled from the thread pool, read on the event loop.
        self._lock = threading.Lock()

    def get(self, key_hash: str, model_id: str, task: str) -> Admission | None:
        if self._entries is None:
            return None
        with self._lock:
            found = self._entries.get((key_hash, model_id, task))
        if found is None or found.generation != _generation:
            return None
        return found

    def put(self, key_hash: str, model_id: str, task: str, admission: Admission) -> None:
        """Keep `admission`, read from the database when the generation was
        `admission.generation` (read before the query: a change committed while it ran
        makes the entry stale at once)."""
        if self._entries is None or admission.generation != _generation:
            return
        with self._lock:
            self._entries[(key_hash, model_id, task)] = admission

    def __len__(self) -> int:
        return 0 if self._entries is None else len(self._entries)
