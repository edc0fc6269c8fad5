"""Per-tenant request rate limits in Redis: a token bucket per tenant, atomic in Lua.

The bucket refills at `rate` tokens a second up to `burst`; each request takes one. Redis's
own clock is used, so replicas with skewed clocks share one bucket correctly.

The inference hot path (`AsyncRateLimiter`) takes a few tokens at a time and spends them
locally: a round trip to Redis is a third of the proxy's own latency on a busy 2-core
machine. Every token is taken from the shared bucket before it admits a request, so
together the replicas never admit more than the bucket holds. A lease not spent within
`LEASE_S` is given back to the bucket (up to its burst) in the same call that takes the
next one: a lease's tokens are never admitted late, and a tenant running just under its
limit is not refused for tokens that sat unspent. The lease is at most a tenth of the burst
and half a second's refill (plus one for each request already waiting for it), so a
tenant with a small rate or burst takes its tokens one at a time when requests come one by
one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass

import redis
import redis.asyncio
from cachetools import TTLCache

# Gives back ARGV[4] unspent tokens, then takes up to ARGV[3] whole ones; answers how many,
# and the wait for one if none.
_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local unspent = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate + unspent)
local granted = math.min(want, math.floor(tokens))
local wait = 0
if granted >= 1 then
  tokens = tokens - granted
else
  granted = 0
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {granted, tostring(wait)}
"""
# How long a replica may hold tokens it took ahead, and how many at most.
LEASE_S = 0.5
MAX_LEASE = 20
# How long an unspent lease is remembered to be given back; one of a tenant that stopped
# sending for longer is forgotten (at most MAX_LEASE tokens, refilled by then anyway).
_LEASE_MEMORY_S = 60.0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    retry_after_s: int  # whole seconds, at least 1 when refused (Retry-After)


class RateLimiter:
    def __init__(self, client: redis.Redis, prefix: str = "tuneplane:ratelimit") -> None:
        self.r = client
        self.prefix = prefix
        self._take = client.register_script(_TAKE)

    def take(self, scope: str, per_minute: int, burst: int) -> Decision:
        keys, args = _call(self.prefix, scope, per_minute, burst, 1, 0)
        granted, wait = self._take(keys=keys, args=args)
        return _decision(int(granted), wait)


@dataclass
class _Lease:
    tokens: int
    until: float


class AsyncRateLimiter:
    """The same buckets, taken from an event loop a few tokens at a time (see above).

    One take per scope is in flight at a time: requests that find the lease spent while it
    is out wait for it rather than each leasing tokens of their own (a burst of 28 at once
    would otherwise ask the bucket for 28 leases and be refused for tokens its own siblings
    were holding). The next take asks for as many tokens as requests are waiting."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str = "tuneplane:ratelimit") -> None:
        self.prefix = prefix
        self._take = client.register_script(_TAKE)
        # One event loop uses it: no lock. Bounded; an entry past `until` is only a refund.
        self._leases: TTLCache[str, _Lease] = TTLCache(maxsize=10_000, ttl=_LEASE_MEMORY_S)
        # A scope's take in flight: it ends with the refusal its waiters share, or None
        # (tokens leased, or the take failed: each waiter looks again).
        self._inflight: dict[str, asyncio.Future[Decision | None]] = {}
        self._waiting: Counter[str] = Counter()

    async def take(self, scope: str, per_minute: int, burst: int) -> Decision:
        while True:
            lease = self._leases.get(scope)
            if lease is not None and lease.tokens > 0 and time.monotonic() < lease.until:
                lease.tokens -= 1
                return Decision(True, 0)
            inflight = self._inflight.get(scope)
            if inflight is None:
                return await self._lease(scope, per_minute, burst)
            self._waiting[scope] += 1
            try:
                refused = await asyncio.shield(inflight)
            finally:
                self._waiting[scope] -= 1
                if not self._waiting[scope]:
                    del self._waiting[scope]
            if refused is not None:  # the bucket was empty a moment ago
                return refused

    async def _lease(self, scope: str, per_minute: int, burst: int) -> Decision:
        done: asyncio.Future[Decision | None] = asyncio.get_running_loop().create_future()
        self._inflight[scope] = done
        lease = self._leases.pop(scope, None)
        unspent = lease.tokens if lease is not None else 0  # past its time: give it back
        want = min(max(1, burst), max(lease_size(per_minute, burst), self._waiting[scope] + 1))
        keys, args = _call(self.prefix, scope, per_minute, burst, want, unspent)
        try:
            granted, wait = await self._take(keys=keys, args=args)
            granted = int(granted)
            if granted > 1:
                self._leases[scope] = _Lease(granted - 1, time.monotonic() + LEASE_S)
            decision = _decision(granted, wait)
            done.set_result(None if decision.allowed else decision)
            return decision
        except BaseException:
            if unspent:  # not given back: keep it to give back next time
                self._leases[scope] = _Lease(unspent, 0.0)
            raise
        finally:
            del self._inflight[scope]
            if not done.done():
                done.set_result(None)


def lease_size(per_minute: int, burst: int) -> int:
    """Tokens taken at once: at most a tenth of the burst and half a second's refill."""
    return max(1, min(MAX_LEASE, burst // 10, math.floor(per_minute / 60.0 * LEASE_S)))


def _call(
    prefix: str, scope: str, per_minute: int, burst: int, want: int, unspent: int
) -> tuple[list[str], list[float]]:
    return [f"{prefix}:{scope}"], [per_minute / 60.0, max(1, burst), want, unspent]


def _decision(granted: int, wait: str) -> Decision:
    if granted >= 1:
        return Decision(True, 0)
    return Decision(False, max(1, math.ceil(float(wait))))
