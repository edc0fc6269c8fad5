"""Structured logs: one JSON object a line, carrying the request id and the job id.

Every HTTP request gets an id (the caller's `X-Request-ID` when it is sane, else a new
one), answered in the `X-Request-ID` response header and attached to every log line
written while the request is handled, with one access line at its end. Code that works
on a job (the scheduler, the event consumer, the state machine) logs with
`extra={"job_id": ...}` or inside `job_context(job_id)`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str | None] = ContextVar("tuneplane_request_id", default=None)
job_id_var: ContextVar[str | None] = ContextVar("tuneplane_job_id", default=None)
access_log = logging.getLogger("tuneplane.access")

# A caller's request id is echoed only if it is short and plain (it lands in our logs).
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# LogRecord's own attributes: everything else on a record came in through `extra=`.
# uvicorn's color_message is its message with terminal colours: not for a JSON log.
_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}
_HANDLER_MARK = "_tuneplane_handler"
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            out["request_id"] = request_id
        job_id = job_id_var.get()
        if job_id is not None:
            out["job_id"] = job_id
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Install one handler on the root logger (replacing ours from an earlier call) and
    route uvicorn's loggers through it; uvicorn's access log is replaced by ours."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    # The Jobs API client polls Ray every few seconds: its request lines are noise.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)


class RequestContextMiddleware:
    """Request ids and the access log (pure ASGI, so streamed answers are not buffered)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers") or [])
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The router has put the path parameters into the scope by now.
            params = scope.get("path_params") or {}
            extra: dict[str, Any] = {
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            }
            if "job_id" in params:
                extra["job_id"] = params["job_id"]
            # Probes and scrapes come every few seconds: kept out of the default level.
            level = logging.DEBUG if scope["path"] in QUIET_PATHS else logging.INFO
            access_log.log(level, "%s %s %s", scope["method"], scope["path"], status, extra=extra)
            request_id_var.reset(token)
