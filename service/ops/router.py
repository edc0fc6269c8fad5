"""Operations endpoints beside /healthz and /readyz: Prometheus metrics."""

from __future__ import annotations

import secrets

from fastapi import APIRouter, Request, Response

from service import metrics
from service.errors import Unauthorized

router = APIRouter(tags=["ops"])


@router.get("/metrics", response_class=Response)
def prometheus_metrics(request: Request) -> Response:
    """Prometheus text format. Open unless TUNEPLANE_METRICS_TOKEN is set; tenant API keys
    are never accepted here (the figures span every tenant)."""
    state = request.app.state
    token: str | None = state.settings.metrics_token
    if token is not None:
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise Unauthorized("GET /metrics needs the metrics token (TUNEPLANE_METRICS_TOKEN).")
    body, content_type = metrics.render(metrics.StateCollector(state.engine, state.redis))
    return Response(body, media_type=content_type)
