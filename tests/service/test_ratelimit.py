"""The token buckets against a real Redis (service/ratelimit.py): the hot path's leases
take several tokens in one round trip and never admit more than the shared bucket holds."""

from __future__ import annotations

import asyncio

import redis
import redis.asyncio

from service.ratelimit import AsyncRateLimiter, RateLimiter, lease_size
from tests.fixtures.redis_server import RedisServer


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0)
    )


def test_lease_sizes_follow_the_burst_and_the_rate() -> None:
    assert lease_size(6000, 50) == 5  # a tenth of the burst
    assert lease_size(6000, 1000) == 20  # at most 20
    assert lease_size(60, 50) == 1  # one a second: half a second's refill is none
    assert lease_size(3, 3) == 1


def test_leased_tokens_are_spent_locally_and_every_one_came_from_the_bucket(
    redis_server: RedisServer,
) -> None:
    sync = redis.Redis.from_url(redis_server.url)
    sync.flushall()
    RateLimiter(sync).take("warm-up", 1, 1)  # the script loaded: EVALSHA answers from now
    sync.config_resetstat()

    async def run() -> tuple[list[bool], list[bool]]:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        # Two replicas sharing one bucket of 40, refilling at 8 a second.
        a, b = AsyncRateLimiter(client), AsyncRateLimiter(client)
        first = [(await a.take("t", 480, 40)).allowed for _ in range(10)]
        second = [(await b.take("t", 480, 40)).allowed for _ in range(3)]
        await client.aclose()
        return first, second

    first, second = asyncio.run(run())
    assert all(first) and all(second)
    # 10 requests with leases of 4 on replica a: 3 round trips; 3 on b: 1.
    assert lease_size(480, 40) == 4
    assert _evalsha_calls(sync) == 4
    # 16 tokens left the bucket (4 leases of 4) for the 13 admitted: none admitted unpaid.
    tokens = float(sync.hget("tuneplane:ratelimit:t", "tokens") or 0)
    assert tokens < 40 - 16 + 2  # + what refilled meanwhile (8 a second)


def test_a_bucket_shared_with_the_exact_path_refuses_once_empty(redis_server: RedisServer) -> None:
    sync = redis.Redis.from_url(redis_server.url)
    sync.flushall()

    async def run() -> list[bool]:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        limiter = AsyncRateLimiter(client)
        got = [(await limiter.take("u", 1, 3)).allowed for _ in range(4)]
        await client.aclose()
        return got

    # One a minute, burst 3: one token at a time, the fourth refused.
    assert asyncio.run(run()) == [True, True, True, False]
    refused = RateLimiter(sync).take("u", 1, 3)
    assert not refused.allowed and refused.retry_after_s >= 1


def test_unspent_leases_go_back_to_the_bucket(redis_server: RedisServer) -> None:
    """Ten replicas each admit one request every 0.6 s (a lease lasts 0.5 s) on a bucket of
    40 refilling at 40 a second: 10 admitted for 24 refilled per round is under the limit,
    so nothing may be refused. Had the 3 unspent tokens of each lease of 4 been dropped,
    each round would take 40 from the bucket and the second round would refuse four."""
    sync = redis.Redis.from_url(redis_server.url)
    sync.flushall()
    assert lease_size(2400, 40) == 4

    async def run() -> list[bool]:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        replicas = [AsyncRateLimiter(client) for _ in range(10)]
        allowed = []
        for _ in range(4):
            for limiter in replicas:
                allowed.append((await limiter.take("v", 2400, 40)).allowed)
            await asyncio.sleep(0.6)
        await client.aclose()
        return allowed

    assert all(asyncio.run(run()))


def test_a_burst_at_once_shares_one_take_and_is_not_refused_for_its_own_leases(
    redis_server: RedisServer,
) -> None:
    """28 requests at the same moment on a full bucket of 50: all admitted, in a few round
    trips. Had each leased 5 of its own, ten leases would have emptied the bucket and 18
    requests been refused while their siblings held 40 unspent tokens."""
    sync = redis.Redis.from_url(redis_server.url)
    sync.flushall()
    RateLimiter(sync).take("warm-up", 1, 1)
    sync.config_resetstat()

    async def run() -> list[bool]:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        limiter = AsyncRateLimiter(client)
        got = await asyncio.gather(*(limiter.take("w", 6000, 50) for _ in range(28)))
        await client.aclose()
        return [d.allowed for d in got]

    assert all(asyncio.run(run()))
    assert _evalsha_calls(sync) <= 3
    tokens = float(sync.hget("tuneplane:ratelimit:w", "tokens") or 0)
    assert tokens < 50 - 28 + 3  # every admitted request's token left the bucket


def test_a_refusal_is_shared_by_the_requests_waiting_on_it(redis_server: RedisServer) -> None:
    sync = redis.Redis.from_url(redis_server.url)
    sync.flushall()
    exact = RateLimiter(sync)
    assert all(exact.take("x", 1, 3).allowed for _ in range(3))  # one a minute: now empty
    sync.config_resetstat()

    async def run() -> list[bool]:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        limiter = AsyncRateLimiter(client)
        got = await asyncio.gather(*(limiter.take("x", 1, 3) for _ in range(5)))
        await client.aclose()
        return [d.allowed for d in got]

    # The first take finds the bucket empty; the four waiting on it are refused with it.
    assert asyncio.run(run()) == [False] * 5
    assert _evalsha_calls(sync) == 1
