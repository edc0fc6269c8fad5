"""The usage API's rules: time buckets (OpenAI's `start_time`, `end_time`, `bucket_width`,
`group_by`, `limit`, `page`), and the monthly token budget a submit is checked against."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence

from sqlmodel import Session

from service.common import now
from service.errors import BadRequest, TooManyRequests
from service.usage.repository import GROUPS, Totals, UsageRepository
from service.usage.schemas import UsageBucket, UsagePage, UsageResult

WIDTHS = {"1h": 3600, "1d": 86400}
# OpenAI's defaults and limits of buckets per page, by width.
LIMITS = {"1h": (24, 168), "1d": (7, 31)}
TENANT_GROUPS = ("model", "kind", "job_id")


def usage_page(
    session: Session,
    tenant_id: str | None,
    *,
    start_time: int | None,
    end_time: int | None,
    bucket_width: str,
    group_by: Sequence[str],
    limit: int | None,
    page: str | None,
) -> UsagePage:
    """`tenant_id` None: every tenant's (the admin's view, which may group by tenant)."""
    width = WIDTHS.get(bucket_width)
    if width is None:
        raise BadRequest(
            f"bucket_width must be one of {', '.join(WIDTHS)}, not {bucket_width!r}.",
            param="bucket_width",
        )
    groups = _groups(group_by, admin=tenant_id is None)
    default_limit, max_limit = LIMITS[bucket_width]
    limit = default_limit if limit is None else limit
    if not 1 <= limit <= max_limit:
        raise BadRequest(
            f"limit must be between 1 and {max_limit} for bucket_width {bucket_width}.",
            param="limit",
        )
    end = float(end_time) if end_time is not None else now()
    # By default the page's buckets end with the current one.
    start = (
        float(start_time) if start_time is not None else _floor(end, width) - width * (limit - 1)
    )
    if page is not None:
        start = _page_start(page, start, end)
    if end <= start:
        raise BadRequest("end_time must be after start_time.", param="end_time")
    repo = UsageRepository(session)
    buckets: list[UsageBucket] = []
    at = start
    while at < end and len(buckets) < limit:
        upto = min(at + width, end)
        found = repo.totals(tenant_id, at, upto, groups)
        buckets.append(
            UsageBucket(
                start_time=int(at),
                end_time=math.ceil(upto),
                results=[_result(t) for t in found],
            )
        )
        at += width
    more = at < end
    return UsagePage(data=buckets, has_more=more, next_page=str(int(at)) if more else None)


def _groups(group_by: Sequence[str], *, admin: bool) -> list[str]:
    allowed = tuple(GROUPS) if admin else TENANT_GROUPS
    groups: list[str] = []
    for value in group_by:
        for name in filter(None, (v.strip() for v in value.split(","))):
            if name not in allowed:
                raise BadRequest(
                    f"group_by may name {', '.join(allowed)}; not {name!r}.", param="group_by"
                )
            if name not in groups:
                groups.append(name)
    return groups


def _floor(t: float, width: int) -> float:
    return float(int(t // width) * width)


def _page_start(page: str, start: float, end: float) -> float:
    try:
        at = float(int(page))
    except ValueError:
        raise BadRequest("page is not a page this API returned.", param="page") from None
    if not start <= at < end:
        raise BadRequest("page is outside start_time..end_time.", param="page")
    return at


def _result(totals: Totals) -> UsageResult:
    v = totals.values
    return UsageResult(
        **totals.group,
        input_tokens=int(v["prompt_tokens"]),
        output_tokens=int(v["completion_tokens"]),
        num_model_requests=int(v["requests"]),
        trained_tokens=int(v["trained_tokens"]),
        worker_seconds=round(v["worker_seconds"], 3),
        gpu_seconds=round(v["gpu_seconds"], 3),
        jobs=totals.jobs,
    )


def month_start(at: float) -> float:
    """The start of `at`'s calendar month, UTC."""
    day = dt.datetime.fromtimestamp(at, dt.timezone.utc)
    return day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def check_token_budget(session: Session, tenant_id: str, tenant_name: str, budget: int) -> None:
    """A 429 naming the budget once the tenant's tokens this month have reached it."""
    used = UsageRepository(session).tokens_since(tenant_id, month_start(now()))
    if used >= budget:
        raise TooManyRequests(
            f"Tenant '{tenant_name}' has used {used} tokens this month, its monthly token "
            f"budget (monthly_token_budget={budget}); it renews on the 1st (UTC), or an "
            "admin can raise it.",
            code="token_budget_exceeded",
        )
