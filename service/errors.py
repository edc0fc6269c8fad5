"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, everywhere."""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a client is told to wait (Retry-After) when the database or Redis is away: a
# restart or a failover takes seconds; sooner would only add load to a recovering server.
DEPENDENCY_RETRY_AFTER_S = 5
# And when the storage is full: someone has to free space first.
STORAGE_RETRY_AFTER_S = 60
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# PostgreSQL's disk_full; SQLite's words for the same.
_PG_DISK_FULL = "53100"
_SQLITE_FULL = "database or disk is full"
# SQLite raises OperationalError for a broken query too: a bug (500), not an outage.
_SQLITE_BUGS = ("no such table", "no such column", "syntax error")
# The Redis errors that mean "away or overloaded" rather than "asked wrong".
_REDIS_AWAY = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
)


class ServiceError(Exception):
    """An answer in OpenAI's error shape. Each kind below is its HTTP status and `code`
    (and `type` where OpenAI's differs), given as class keywords."""

    status: ClassVar[int] = 400
    type: ClassVar[str] = "invalid_request_error"
    code: str | None = None

    def __init_subclass__(
        cls, *, status: int, code: str, type: str = "invalid_request_error", **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.status = status
        cls.code = code
        cls.type = type

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers


class BadRequest(ServiceError, status=400, code="invalid_request"): ...


class Unauthorized(ServiceError, status=401, code="invalid_api_key"): ...


class PermissionDenied(ServiceError, status=403, code="permission_denied"): ...


class NotFound(ServiceError, status=404, code="not_found"): ...


class Conflict(ServiceError, status=409, code="conflict"): ...


class PayloadTooLarge(ServiceError, status=413, code="payload_too_large"): ...


class TooManyRequests(
    ServiceError, status=429, code="rate_limit_exceeded", type="rate_limit_error"
): ...


class ServiceUnavailable(
    ServiceError, status=503, code="service_unavailable", type="server_error"
): ...


def or_not_found(found: T | None, message: str, *, param: str, code: str | None = None) -> T:
    """`found`, or a 404 saying what was looked for: the get-or-404 of every service (an
    object of another tenant's is not found either)."""
    if found is None:
        raise NotFound(message, param=param, code=code)
    return found


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# Pydantic puts the union member it tried into `loc` ("int", "literal['auto']", a
# discriminator tag such as "lora"); those are not fields a user sent.
_UNION_MEMBER = re.compile(r"^(int|float|str|bool|bytes|none|constrained-\w+|[a-z-]+\[.*\])$")
_TAGGED = {
    "adapter": {"lora", "qlora", "full"},
    "space": {"choice", "grid", "uniform", "loguniform"},
}


def loc_to_param(loc: Sequence[int | str]) -> str | None:
    """Turn a validation error location into OpenAI's `param` (a.b[0].c)."""
    parts: list[str] = []
    for i, raw in enumerate(loc[1:], start=1):
        p = str(raw)
        if _UNION_MEMBER.match(p):
            continue
        prev = str(loc[i - 1])
        before = str(loc[i - 2]) if i >= 2 else ""
        if p in _TAGGED.get(prev, set()) or p in _TAGGED.get(before, set()) - _TAGGED["adapter"]:
            continue
        parts.append(p)
    if not parts:
        return str(loc[0]) if loc and loc[0] not in ("body",) else None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def _validation_message(err: dict[str, Any], param: str | None) -> str:
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown field"
    if err.get("type") == "missing":
        msg = "field required"
    return f"{param}: {msg}" if param else msg


async def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(
        error_body(exc.message, exc.type, exc.param, exc.code),
        status_code=exc.status,
        headers=exc.headers,
    )


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    param = loc_to_param(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return JSONResponse(
            error_body(
                "request body is not valid JSON", "invalid_request_error", None, "invalid_json"
            ),
            status_code=400,
        )
    message = _validation_message(first, param)
    others = {loc_to_param(e.get("loc", ())) for e in errors} - {param}
    if others:
        message += f" (also: {', '.join(sorted(str(o) for o in others)[:5])})"
    return JSONResponse(
        error_body(message, "invalid_request_error", param, "invalid_value"), status_code=400
    )


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 401: "invalid_api_key"}
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    if exc.status_code == 404 and message == "Not Found":
        message = "Unknown URL: no such endpoint"
    return JSONResponse(
        error_body(
            message, "invalid_request_error", None, codes.get(exc.status_code, "invalid_request")
        ),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _data_error(_: Request, exc: Exception) -> JSONResponse:
    # The database refused a value the request carried (PostgreSQL stores no NUL character
    # in text or JSON, and no integer past 64 bits): the request's fault, not the server's.
    log.info("the database refused a request value: %s", exc)
    return JSONResponse(
        error_body(
            "The request holds a value that cannot be stored (a NUL character, or a number "
            "out of range).",
            "invalid_request_error",
            None,
            "invalid_value",
        ),
        status_code=400,
    )


async def _overloaded(_: Request, exc: Exception) -> JSONResponse:
    # No database connection (or SQLite's write lock) came free in time: the service is
    # overloaded, not broken; the client should come back shortly.
    log.warning("the database was too busy to answer in time: %s", exc)
    return JSONResponse(
        error_body(
            "The service is overloaded; retry shortly.",
            "server_error",
            None,
            "service_unavailable",
        ),
        status_code=503,
        headers={"Retry-After": "1"},
    )


def _one_line(exc: BaseException) -> str:
    # A driver's message can run over lines (psycopg adds the host it tried, say): the
    # log line stays one line.
    text = str(getattr(exc, "orig", None) or exc)
    return " ".join(text.split())[:300]


def _dependency_error(
    request: Request,
    cause: str,
    status: int,
    message: str,
    code: str,
    retry_after_s: int,
) -> JSONResponse:
    # One line, no traceback: when a dependency is away every request fails the same way,
    # and the cause is what the operator needs to read, not a thousand stacks.
    log.error("%s; answered %s %s with %s", cause, request.method, request.url.path, status)
    return JSONResponse(
        error_body(message, "server_error", None, code),
        status_code=status,
        headers={"Retry-After": str(retry_after_s)},
    )


def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return _dependency_error(
        request,
        f"database unavailable ({type(exc).__name__}: {_one_line(exc)})",
        503,
        "The service's database is unavailable; retry shortly.",
        "database_unavailable",
        DEPENDENCY_RETRY_AFTER_S,
    )


def _storage_full(request: Request, exc: BaseException) -> JSONResponse:
    return _dependency_error(
        request,
        f"storage full ({_one_line(exc)}): free space or raise the quota",
        507,
        "The server is out of storage space; the request was not completed. Retry later.",
        "storage_full",
        STORAGE_RETRY_AFTER_S,
    )


def _disk_full_in_database(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) == _PG_DISK_FULL or _SQLITE_FULL in str(exc.orig)


async def _operational(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    message = str(exc.orig)
    # SQLite's write lock stayed taken past its busy timeout: overloaded, retry shortly.
    if "database is locked" in message:
        return await _overloaded(request, exc)
    if _disk_full_in_database(exc):
        return _storage_full(request, exc)
    if any(bug in message for bug in _SQLITE_BUGS):
        return await _unhandled(request, exc)
    # Refused, reset or dropped connections, a server shutting down or starting up.
    return _database_unavailable(request, exc)


async def _disconnected(request: Request, exc: Exception) -> JSONResponse:
    # The pool found its connection dead (InterfaceError: psycopg's "connection is closed").
    # SQLite's InterfaceError is a value it cannot bind, a bug: on to the catch-all.
    if isinstance(exc, DBAPIError) and not exc.connection_invalidated:
        raise exc
    return _database_unavailable(request, exc)


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OSError)
    if exc.errno in _FULL_ERRNOS:
        return _storage_full(request, exc)
    # Any other: on to the catch-all (a 500, the traceback logged and re-raised), as before.
    raise exc


async def _redis_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, _REDIS_AWAY):
        raise exc  # asked wrong (a bug): on to the catch-all
    return _dependency_error(
        request,
        f"queue unavailable (Redis {type(exc).__name__}: {_one_line(exc)})",
        503,
        "The service's job queue (Redis) is unavailable; retry shortly.",
        "queue_unavailable",
        DEPENDENCY_RETRY_AFTER_S,
    )


async def _unhandled(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return JSONResponse(
        error_body("The server had an error while processing your request.", "server_error"),
        status_code=500,
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(PoolTimeout, _overloaded)
    app.add_exception_handler(OperationalError, _operational)
    app.add_exception_handler(InterfaceError, _disconnected)
    app.add_exception_handler(DisconnectionError, _disconnected)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(redis.RedisError, _redis_error)
    app.add_exception_handler(Exception, _unhandled)
    document_errors(app)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error answer: OpenAI's shape."""

    error: ErrorDetail


# What any /v1 operation may answer besides its success; FastAPI's generated 422 is never
# sent (validation errors are 400s, as OpenAI's are).
DOCUMENTED_ERRORS = {
    400: "Invalid request (the error's `param` names the field)",
    401: "Missing, unknown or revoked API key",
    403: "The key's role may not call this endpoint",
    404: "No such object (or another tenant's) or endpoint",
    405: "Method not allowed",
    409: "Conflict (object in use, Idempotency-Key reused)",
    413: "Request body too large",
    429: "Quota or rate limit exceeded",
    500: "Internal error",
    503: "A dependency (database, Redis, Ray) is unavailable; retry after `Retry-After`",
    507: "The server's storage is full; nothing was stored",
}


def document_errors(app: FastAPI) -> None:
    """Put the error answers into the OpenAPI schema, so clients (and schema-driven
    tests) know every status an operation can return and the body that comes with it."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        body = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components["ErrorResponse"] = body
        ref = {"$ref": "#/components/schemas/ErrorResponse"}
        for path, item in schema.get("paths", {}).items():
            if not path.startswith("/v1/"):
                continue
            for operation in item.values():
                responses = operation.get("responses") if isinstance(operation, dict) else None
                if responses is None:
                    continue
                responses.pop("422", None)
                for status, description in DOCUMENTED_ERRORS.items():
                    responses.setdefault(
                        str(status),
                        {
                            "description": description,
                            "content": {"application/json": {"schema": ref}},
                        },
                    )
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
