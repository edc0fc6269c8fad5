"""Operations endpoints: liveness (/healthz), readiness (/readyz), Prometheus (/metrics)."""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.datastructures import State

from service import metrics
from service.errors import Unauthorized
from service.scheduling.loops import ControlLoops

router = APIRouter(tags=["ops"])


@router.get("/metrics", response_class=Response)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format, for the metrics token (TUNEPLANE_METRICS_TOKEN) or the admin
    key: the series name every tenant, so neither anonymous scrapes nor tenant keys get
    them."""
    state = request.app.state
    given = request.headers.get("authorization", "").encode()
    accepted = [t for t in (state.settings.metrics_token, state.settings.admin_key) if t]
    # Compare with every accepted token, so the time taken says nothing about which matched.
    matches = [secrets.compare_digest(given, f"Bearer {t}".encode()) for t in accepted]
    if not any(matches):
        raise Unauthorized(
            "GET /metrics needs the metrics token (TUNEPLANE_METRICS_TOKEN) or the admin key."
        )
    body, content_type = metrics.render(metrics.StateCollector(state.engine, state.redis))
    return Response(body, media_type=content_type)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request) -> Any:
    # 503 until every dependency this replica was configured with answers.
    state = request.app.state
    checks = _dependency_checks(state)
    ready = all(v == "ok" for v in checks.values())
    loops: ControlLoops | None = getattr(state, "loops", None)
    body = {
        "ready": ready,
        "checks": checks,
        # Which replica schedules right now (all replicas serve the API).
        "scheduler_leader": bool(loops and loops.scheduler.is_leader),
    }
    return JSONResponse(body, status_code=200 if ready else 503)


def _dependency_checks(state: State) -> dict[str, str]:
    """Each dependency's state: ok, or the type of its error (readiness reports, it does
    not raise). The database always; Redis and Ray where this replica uses them."""
    checks: dict[str, str] = {}
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    if state.redis is not None:
        try:
            state.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
    if state.backend is not None:
        checks["ray"] = "ok" if state.backend.ping() else "error: unreachable"
    return checks
