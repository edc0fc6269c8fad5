"""Operations endpoints beside /healthz and /readyz: Prometheus metrics."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request, Response

from service import metrics
from service.errors import Unauthorized

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
