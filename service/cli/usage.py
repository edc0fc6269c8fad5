"""`tuneplane usage`: tokens trained and served, worker- and GPU-seconds, by day or hour."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from service.cli.client import JsonFlag, call, client, show, table

FIGURES = ["input_tokens", "output_tokens", "num_model_requests", "trained_tokens",
           "worker_seconds", "gpu_seconds"]  # fmt: skip
HEADINGS = ["input", "output", "requests", "trained", "worker s", "GPU s"]


def usage(
    ctx: typer.Context,
    days: Annotated[int, typer.Option(min=1, max=31, help="Days back, today included.")] = 7,
    hourly: Annotated[bool, typer.Option(help="Hourly buckets (at most 7 days).")] = False,
    group_by: Annotated[
        list[str] | None,
        typer.Option(help="model, kind, job_id (and tenant_id with --admin); repeatable."),
    ] = None,
    admin: Annotated[bool, typer.Option(help="Every tenant's (the admin key).")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Your usage (every tenant's with --admin): a row per time bucket and group."""
    width, seconds = ("1h", 3600) if hourly else ("1d", 86400)
    buckets = days * 86400 // seconds
    if buckets > (168 if hourly else 31):
        raise typer.BadParameter("hourly usage covers at most 7 days", param_hint="--days")
    end = time.time()
    start = (int(end) // seconds - buckets + 1) * seconds
    params: dict[str, Any] = {
        "start_time": start,
        "end_time": int(end) + 1,
        "bucket_width": width,
        "limit": buckets,
        "group_by": group_by or [],
    }
    path = "/v1/admin/usage" if admin else "/v1/usage"
    with client(ctx, admin=admin) as c:
        page = call(c, "GET", path, params=params)
    show(page["data"], as_json, lambda data: _print(data, group_by or [], hourly))


def _print(buckets: list[dict[str, Any]], groups: list[str], hourly: bool) -> None:
    stamp = "%Y-%m-%d %H:00" if hourly else "%Y-%m-%d"
    rows = []
    for bucket in buckets:
        start = time.strftime(stamp, time.gmtime(bucket["start_time"]))
        for result in bucket["results"]:
            rows.append(
                [
                    start,
                    *(result.get(g) or "-" for g in groups),
                    *(_figure(result[f]) for f in FIGURES),
                ]
            )
    table("usage (UTC)", ["bucket", *groups, *HEADINGS], rows)


def _figure(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"
