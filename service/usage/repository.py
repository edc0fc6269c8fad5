"""Every query of usage accounting: the rows it writes, the job facts a job's usage is
made of, and the sums the usage API and the token budget read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlalchemy import select as select_columns
from sqlmodel import Session, col, select

from service.models import JobEvent, UsageRecord

# The columns a usage query may group by, by their API names.
GROUPS: dict[str, Any] = {
    "model": UsageRecord.model,
    "kind": UsageRecord.kind,
    "job_id": UsageRecord.job_id,
    "tenant_id": UsageRecord.tenant_id,
}
SUMS = (
    "requests",
    "prompt_tokens",
    "completion_tokens",
    "trained_tokens",
    "worker_seconds",
    "gpu_seconds",
)


@dataclass(frozen=True)
class Totals:
    """One group's sums in one time range."""

    group: dict[str, str | None]
    values: dict[str, float]
    jobs: int


class UsageRepository:
    """Across tenants: the writers are the state machine and the inference meter, and the
    readers pass the tenant they answer for (None only for the admin's view)."""

    def __init__(self, session: Session) -> None:
        self.session = session

    # -- writes ----------------------------------------------------------------------------

    def exists(self, record_id: str) -> bool:
        return self.session.get(UsageRecord, record_id) is not None

    def add_all(self, records: Iterable[UsageRecord]) -> None:
        self.session.add_all(list(records))
        self.session.flush()

    # -- what a job's usage is made of -------------------------------------------------------

    def status_changes(self, job_id: str) -> list[tuple[float, str]]:
        """(when, status) of each of the job's status events, in order."""
        stmt = (
            select(JobEvent.created_at, JobEvent.data)
            .where(col(JobEvent.job_id) == job_id, col(JobEvent.type) == "message")
            .order_by(col(JobEvent.seq))
        )
        changes = []
        for at, data in self.session.exec(stmt):
            status = (data or {}).get("status")
            if isinstance(status, str):
                changes.append((float(at), status))
        return changes

    def last_reported_tokens(self, job_id: str) -> int:
        """The trained tokens the job's newest metrics event reported (0 if none did)."""
        stmt = (
            select(JobEvent.data)
            .where(col(JobEvent.job_id) == job_id, col(JobEvent.type) == "metrics")
            .order_by(col(JobEvent.seq).desc())
            .limit(1)
        )
        data = self.session.exec(stmt).first() or {}
        return int(data.get("trained_tokens") or 0)

    # -- sums ------------------------------------------------------------------------------

    def totals(
        self,
        tenant_id: str | None,
        start: float,
        end: float,
        group_by: Sequence[str],
    ) -> list[Totals]:
        """The sums of the records made in [start, end), per group of `group_by`."""
        keys = [GROUPS[name] for name in group_by]
        sums = [func.coalesce(func.sum(getattr(UsageRecord, name)), 0) for name in SUMS]
        jobs = func.count(func.distinct(UsageRecord.job_id))
        stmt = select_columns(*keys, *sums, jobs).where(
            col(UsageRecord.created_at) >= start, col(UsageRecord.created_at) < end
        )
        if tenant_id is not None:
            stmt = stmt.where(col(UsageRecord.tenant_id) == tenant_id)
        if keys:
            stmt = stmt.group_by(*keys).order_by(*keys)
        found = []
        for row in self.session.execute(stmt):
            values = tuple(row)
            group = {name: values[i] for i, name in enumerate(group_by)}
            sums_of = values[len(keys) : len(keys) + len(SUMS)]
            # No record in range: an ungrouped sum is one row of zeros, not a usage.
            if not keys and not any(sums_of):
                continue
            found.append(
                Totals(
                    group=group,
                    values={n: float(v or 0) for n, v in zip(SUMS, sums_of, strict=True)},
                    jobs=int(values[-1] or 0),
                )
            )
        return found

    def tokens_since(self, tenant_id: str, since: float) -> int:
        """Every token the tenant's jobs trained and its requests used since `since`."""
        stmt = select(
            func.coalesce(
                func.sum(
                    col(UsageRecord.trained_tokens)
                    + col(UsageRecord.prompt_tokens)
                    + col(UsageRecord.completion_tokens)
                ),
                0,
            )
        ).where(col(UsageRecord.tenant_id) == tenant_id, col(UsageRecord.created_at) >= since)
        return int(self.session.exec(stmt).one() or 0)
