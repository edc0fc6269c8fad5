"""A job's experiment-tracker integrations: checked when the job is created, shown on it.

The worker side is `workers.trackers`; the trackers' credentials are tenant secrets
(`service.secrets`), which neither the request, the stored spec nor the job ever holds.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from service.errors import BadRequest
from workers.spec import Integration

INTEGRATION = TypeAdapter[Integration](Integration)


def check_integration(raw: dict[str, Any], param: str) -> Integration:
    """One experiment tracker: OpenAI's wandb shape, or Tuneplane's mlflow one."""
    kind = raw.get("type")
    if kind not in ("wandb", "mlflow"):
        raise BadRequest(
            f"Integration type {kind!r} is not supported; use 'wandb' or 'mlflow'.",
            param=f"{param}.type",
        )
    try:
        integration = INTEGRATION.validate_python(raw)
    except ValidationError as exc:
        where = param
        for part in exc.errors()[0].get("loc", ())[1:]:  # [0]: the union's tag
            where += f"[{part}]" if isinstance(part, int) else f".{part}"
        message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
        raise BadRequest(f"{where}: {message}", param=where) from None
    if integration.type == "mlflow":
        uri = urlsplit(integration.mlflow.tracking_uri)
        where = f"{param}.mlflow.tracking_uri"
        if uri.scheme not in ("http", "https") or not uri.hostname:
            # A file or database URI would have the workers write on their own disks.
            raise BadRequest(
                "tracking_uri must be the http(s) URL of an MLflow tracking server.",
                param=where,
            )
        if uri.username or uri.password:
            raise BadRequest(
                "Put no credentials in tracking_uri; store them as the secrets "
                "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD "
                "(PUT /v1/secrets/{name}).",
                param=where,
            )
    return integration


def integrations_out(spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A job's integrations as the API shows them (OpenAI's shape: the settings and the
    tracker run's id, which is the job's); from the stored spec, which holds no secret."""
    shown: list[dict[str, Any]] = []
    for raw in (spec or {}).get("integrations") or []:
        kind = raw.get("type")
        settings = dict(raw.get(kind) or {})
        shown.append({"type": kind, kind: {**settings, "run_id": (spec or {}).get("job_id")}})
    return shown
