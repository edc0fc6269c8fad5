"""Redis fair-share queue primitives.

Redis is plumbing, not truth: everything here can be rebuilt from the database (the
reconciler does so). Layout:

- ``tp:q:<tenant>``  sorted set of job ids; score orders by priority (high first), then age
- ``tp:active``      set of tenants whose queue is not empty
- ``tp:jobmeta``     hash job id -> JSON {"tenant", "cpus", "gpus"} for the scheduler's fit check
- ``tp:leader``      the scheduler leader lock (a token with a TTL)
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis

ACTIVE = "tp:active"
META = "tp:jobmeta"
LEADER = "tp:leader"
# Priorities span -100..100 and creation times fit in 1e13 ms, so this score keeps both
# in one float exactly (below 2**53).
_PRIORITY_SPAN = 10**13


def queue_key(tenant_id: str) -> str:
    return f"tp:q:{tenant_id}"


def score(priority: int, created_at: float) -> float:
    return float((100 - priority) * _PRIORITY_SPAN + int(created_at * 1000))


@dataclass(frozen=True)
class QueuedJob:
    job_id: str
    tenant_id: str
    cpus: float
    gpus: float
    # A search whose concurrency the scheduler chooses: up to this many trials at once,
    # each holding cpus/gpus. 0 for anything else.
    auto_trials: int = 0
    # The scheduler gives each worker the CPUs free when it starts ("auto"); `cpus` is
    # then the least it needs (one per worker).
    auto_cpus: bool = False

    @classmethod
    def from_meta(cls, job_id: str, tenant_id: str, raw: str | None) -> QueuedJob:
        meta = json.loads(raw) if raw else {}
        return cls(
            job_id,
            tenant_id,
            float(meta.get("cpus", 1.0)),
            float(meta.get("gpus", 0.0)),
            int(meta.get("auto_trials", 0)),
            bool(meta.get("auto_cpus", False)),
        )


# Removing a tenant's last job and dropping it from the active set must be one step, or a
# concurrent enqueue could leave a non-empty queue that the scheduler never looks at.
_REMOVE = """
local n = redis.call('zrem', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
if redis.call('zcard', KEYS[1]) == 0 then redis.call('srem', KEYS[3], ARGV[2]) end
return n
"""
# Heads of all tenant queues with their metadata; drops tenants whose queue is empty.
_HEADS = """
local out = {}
for _, t in ipairs(redis.call('smembers', KEYS[1])) do
  local first = redis.call('zrange', 'tp:q:' .. t, 0, 0)
  if first[1] then
    local meta = redis.call('hget', KEYS[2], first[1])
    table.insert(out, t)
    table.insert(out, first[1])
    table.insert(out, meta or '')
  else
    redis.call('srem', KEYS[1], t)
  end
end
return out
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('del', KEYS[1])
end
return 0
"""


class FairQueue:
    """Needs a client made with decode_responses=True."""

    def __init__(self, client: redis.Redis) -> None:
        # redis-py types every reply as a union over sync/async and bytes/str clients.
        self.r: Any = client

    def enqueue(
        self,
        job_id: str,
        tenant_id: str,
        priority: int,
        created_at: float,
        cpus: float,
        gpus: float,
        auto_trials: int = 0,
        auto_cpus: bool = False,
    ) -> None:
        meta = json.dumps(
            {
                "tenant": tenant_id,
                "cpus": cpus,
                "gpus": gpus,
                "auto_trials": auto_trials,
                "auto_cpus": auto_cpus,
            }
        )
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(queue_key(tenant_id), {job_id: score(priority, created_at)})
        pipe.hset(META, job_id, meta)
        pipe.sadd(ACTIVE, tenant_id)
        pipe.execute()

    def remove(self, job_id: str, tenant_id: str) -> bool:
        removed = self.r.eval(_REMOVE, 3, queue_key(tenant_id), META, ACTIVE, job_id, tenant_id)
        return bool(removed)

    def heads(self) -> dict[str, QueuedJob]:
        """The first job of every non-empty tenant queue, in one round trip."""
        flat: list[str] = self.r.eval(_HEADS, 2, ACTIVE, META)
        out: dict[str, QueuedJob] = {}
        for i in range(0, len(flat), 3):
            tenant, job_id, raw = flat[i], flat[i + 1], flat[i + 2]
            out[tenant] = QueuedJob.from_meta(job_id, tenant, raw or None)
        return out

    def head(self, tenant_id: str) -> QueuedJob | None:
        first = self.r.zrange(queue_key(tenant_id), 0, 0)
        if not first:
            return None
        return QueuedJob.from_meta(first[0], tenant_id, self.r.hget(META, first[0]))

    def queued_ids(self) -> set[str]:
        ids: set[str] = set()
        for tenant in self.r.smembers(ACTIVE):
            ids.update(self.r.zrange(queue_key(tenant), 0, -1))
        return ids

    def depth(self, tenant_id: str) -> int:
        return int(self.r.zcard(queue_key(tenant_id)))

    # -- leader lock ---------------------------------------------------------------------

    def acquire_leader(self, token: str, ttl_ms: int) -> bool:
        if self.r.set(LEADER, token, nx=True, px=ttl_ms):
            return True
        return bool(self.r.eval(_RENEW, 1, LEADER, token, ttl_ms))

    def release_leader(self, token: str) -> None:
        self.r.eval(_RELEASE, 1, LEADER, token)


def new_token() -> str:
    return uuid.uuid4().hex
