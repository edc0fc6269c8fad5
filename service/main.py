"""The FastAPI app factory: `uvicorn --factory service.main:create_app`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import db
from service.config import Settings, get_settings
from service.deployments.router import router as deployments_router
from service.deployments.serving import ServingLoop, ServingManager
from service.errors import error_body, install_error_handlers
from service.files.router import router as files_router
from service.inference.router import router as inference_router
from service.jobs.router import router as jobs_router
from service.logs import RequestContextMiddleware, configure_logging
from service.ops.router import router as ops_router
from service.queue import FairQueue
from service.ratelimit import RateLimiter
from service.ray_backend import Capacity, ComputeBackend, RayJobsBackend, ServeBackend
from service.registry.admin_router import router as base_models_router
from service.registry.catalog import Catalog
from service.registry.router import router as models_router
from service.scheduling.loops import ControlLoops
from service.storage import ArtifactStore
from service.tenants.router import router as tenants_router
from service.ui.router import router as ui_router

THREADS = 256
# Longer than clients keep idle connections (httpx and the openai client: 5 s). With
# uvicorn's default of 5 s both sides let go at once, and a request sent on a connection
# the server is closing fails with a reset (seen under 100 clients as ReadErrors).
KEEP_ALIVE_S = 75
# JSON bodies are small; only file uploads may be large (their own limit, a setting).
JSON_BODY_LIMIT = 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024


class BodyLimitMiddleware:
    """Refuse oversized bodies before anything buffers them (413 in the OpenAI shape)."""

    def __init__(self, app: ASGIApp, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        is_upload = scope["path"].rstrip("/") == "/v1/files"
        limit = self.upload_limit + MULTIPART_OVERHEAD if is_upload else JSON_BODY_LIMIT
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._refuse(send, limit)
            return
        seen = 0
        exceeded = False

        async def counted() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Tell the app the client went away: it stops reading, and whatever it
                    # answers to that is replaced by the 413 below.
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            if not exceeded:
                await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not exceeded:
                raise
        if exceeded:
            await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = json.dumps(
            error_body(
                f"Request body is larger than the limit of {limit} bytes.",
                "invalid_request_error",
                None,
                "payload_too_large",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _default_backend(settings: Settings) -> ComputeBackend | None:
    if not settings.ray_address:
        return None
    fixed = None
    if settings.cluster_cpus is not None or settings.cluster_gpus is not None:
        fixed = Capacity(settings.cluster_cpus or 0.0, settings.cluster_gpus or 0.0)
    return RayJobsBackend(settings.ray_address, fixed_capacity=fixed)


def create_app(
    settings: Settings | None = None,
    backend: ComputeBackend | None = None,
    run_loops: bool = True,
    serve_backend: ServeBackend | None = None,
) -> FastAPI:
    """The control plane. With Redis and a compute backend configured it also runs the
    scheduler, event consumer and reconciler loops (`run_loops=False` leaves them to the
    caller, as the tests of the loops themselves do)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    backend = backend if backend is not None else _default_backend(settings)
    if serve_backend is None and isinstance(backend, RayJobsBackend):
        serve_backend = backend

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Sync endpoints and the session's teardown (its commit) run in this pool. A request
        # holding SQLite's writer lock needs a thread again to commit and let it go; with
        # the pool full of requests waiting for that lock, nobody could (a freeze of up to
        # the lock's timeout under 100 clients). More threads than requests in flight.
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        if settings.run_migrations_on_start:
            db.upgrade(settings.database_url)
        loops: ControlLoops | None = None
        if run_loops and app.state.queue is not None and backend is not None:
            loops = ControlLoops(
                app.state.engine, app.state.queue, backend, app.state.store, settings
            )
            loops.start()
        app.state.loops = loops
        serving_loop: ServingLoop | None = None
        if run_loops and serve_backend is not None:
            serving_loop = ServingLoop(app.state.serving, settings.reconcile_interval_s)
            serving_loop.start()
        # One pooled client for every forwarded inference request (in the app's loop).
        app.state.serve_client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.serve_request_timeout_s, connect=10),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )
        yield
        await app.state.serve_client.aclose()
        if serving_loop is not None:
            serving_loop.stop()
        if loops is not None:
            loops.stop()
        if app.state.redis is not None:
            app.state.redis.close()
        app.state.engine.dispose()

    app = FastAPI(
        title="Tuneplane",
        version="0.1.0",
        description="Self-hosted, multi-tenant fine-tuning with an OpenAI-compatible API.",
        lifespan=lifespan,
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    app.state.settings = settings
    app.state.engine = db.make_engine(settings.database_url)
    app.state.store = ArtifactStore(settings.storage_uri)
    app.state.catalog = Catalog.load(settings.catalog_path)
    app.state.backend = backend
    app.state.redis = (
        redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5)
        if settings.redis_url
        else None
    )
    app.state.queue = FairQueue(app.state.redis) if app.state.redis is not None else None
    app.state.rate_limiter = RateLimiter(app.state.redis) if app.state.redis is not None else None
    app.state.serving = ServingManager(app.state.engine, serve_backend, settings, app.state.catalog)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, upload_limit=settings.max_upload_bytes)
    # Outermost: a request id for everything, the 413s above included.
    app.add_middleware(RequestContextMiddleware)
    for router in (
        tenants_router,
        base_models_router,
        files_router,
        jobs_router,
        models_router,
        deployments_router,
        inference_router,
        ops_router,
        ui_router,
    ):
        app.include_router(router)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz(request: Request) -> Any:
        checks: dict[str, str] = {}
        try:
            with request.app.state.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:  # readiness reports, it does not raise
            checks["database"] = f"error: {type(exc).__name__}"
        if request.app.state.redis is not None:
            try:
                request.app.state.redis.ping()
                checks["redis"] = "ok"
            except Exception as exc:
                checks["redis"] = f"error: {type(exc).__name__}"
        if request.app.state.backend is not None:
            checks["ray"] = "ok" if request.app.state.backend.ping() else "error: unreachable"
        ready = all(v == "ok" for v in checks.values())
        loops: ControlLoops | None = getattr(request.app.state, "loops", None)
        body = {
            "ready": ready,
            "checks": checks,
            # Which replica schedules right now (all replicas serve the API).
            "scheduler_leader": bool(loops and loops.scheduler.is_leader),
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    return app
