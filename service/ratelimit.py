"""Per-tenant request rate limits in Redis: a token bucket per tenant, atomic in Lua.

The bucket refills at `rate` tokens a second up to `burst`; each request takes one. Redis's
own clock is used, so replicas with skewed clocks share one bucket correctly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis
import redis.asyncio

_TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return {allowed, tostring(wait)}
"""


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
        keys, args = _call(self.prefix, scope, per_minute, burst)
        return _decision(self._take(keys=keys, args=args))


class AsyncRateLimiter:
    """The same buckets, taken from an event loop (the inference hot path: no thread)."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str = "tuneplane:ratelimit") -> None:
        self.prefix = prefix
        self._take = client.register_script(_TAKE)

    async def take(self, scope: str, per_minute: int, burst: int) -> Decision:
        keys, args = _call(self.prefix, scope, per_minute, burst)
        return _decision(await self._take(keys=keys, args=args))


def _call(prefix: str, scope: str, per_minute: int, burst: int) -> tuple[list[str], list[float]]:
    return [f"{prefix}:{scope}"], [per_minute / 60.0, max(1, burst)]


def _decision(answer: list[str]) -> Decision:
    allowed, wait = answer
    if int(allowed):
        return Decision(True, 0)
    return Decision(False, max(1, math.ceil(float(wait))))
