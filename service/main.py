"""The FastAPI app factory: `uvicorn --factory service.main:create_app`.

`create_app` lists what the control plane is made of: the state its routers and loops
share, its error handlers and middleware, its routers, and the lifespan parts that start
with the server and stop with it (thread limit, migrations, control loops, serving loop,
the client that forwards inference requests).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import aiohttp
import anyio
import redis
import redis.asyncio
from fastapi import FastAPI

from service import db
from service.body_limit import BodyLimitMiddleware
from service.config import Settings, get_settings
from service.deployments.router import router as deployments_router
from service.deployments.serving import ServingLoop, ServingManager
from service.errors import install_error_handlers
from service.files.router import router as files_router
from service.inference.admission import AdmissionCache
from service.inference.router import router as inference_router
from service.jobs.router import router as jobs_router
from service.logs import RequestContextMiddleware, configure_logging
from service.ops.router import router as ops_router
from service.queue import FairQueue
from service.ratelimit import AsyncRateLimiter, RateLimiter
from service.ray_backend import Capacity, ComputeBackend, RayJobsBackend, ServeBackend
from service.registry.admin_router import router as base_models_router
from service.registry.catalog import Catalog
from service.registry.router import router as models_router
from service.scheduling.loops import ControlLoops
from service.secrets.router import router as secrets_router
from service.storage import ArtifactStore
from service.tenants.router import router as tenants_router
from service.ui.router import router as ui_router
from service.usage.recording import UsageMeter
from service.usage.router import router as usage_router
from service.webhooks.router import router as webhooks_router
from service.webhooks.sender import WebhookSender

THREADS = 256
# Longer than clients keep idle connections (httpx and the openai client: 5 s). With
# uvicorn's default of 5 s both sides let go at once, and a request sent on a connection
# the server is closing fails with a reset (seen under 100 clients as ReadErrors).
KEEP_ALIVE_S = 75
ROUTERS = (
    tenants_router,
    base_models_router,
    files_router,
    jobs_router,
    models_router,
    deployments_router,
    inference_router,
    ops_router,
    usage_router,
    webhooks_router,
    secrets_router,
    ui_router,
)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


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
    app = FastAPI(
        title="Tuneplane",
        version="0.1.0",
        description="Self-hosted, multi-tenant fine-tuning with an OpenAI-compatible API.",
        lifespan=_lifespan(settings, backend, run_loops, serve_backend),
    )
    _build_state(app, settings, backend, serve_backend)
    _install_middleware(app, settings)
    for router in ROUTERS:
        app.include_router(router)
    return app


def _default_backend(settings: Settings) -> ComputeBackend | None:
    if not settings.ray_address:
        return None
    fixed = None
    if settings.cluster_cpus is not None or settings.cluster_gpus is not None:
        fixed = Capacity(settings.cluster_cpus or 0.0, settings.cluster_gpus or 0.0)
    return RayJobsBackend(settings.ray_address, fixed_capacity=fixed)


# -- state and middleware ----------------------------------------------------------------


def _build_state(
    app: FastAPI,
    settings: Settings,
    backend: ComputeBackend | None,
    serve_backend: ServeBackend | None,
) -> None:
    """What the routers and the loops share, on `app.state`."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    state = app.state
    state.settings = settings
    state.engine = db.make_engine(settings.database_url)
    state.store = ArtifactStore(
        settings.storage_uri, full_after_bytes=settings.fault_storage_full_after_bytes
    )
    state.catalog = Catalog.load(settings.catalog_path)
    state.backend = backend
    state.redis = (
        redis.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5)
        if settings.redis_url
        else None
    )
    state.queue = FairQueue(state.redis) if state.redis is not None else None
    state.rate_limiter = RateLimiter(state.redis) if state.redis is not None else None
    # The inference hot path's: the same buckets, from the event loop.
    state.async_redis = (
        redis.asyncio.Redis.from_url(settings.redis_url, decode_responses=True, socket_timeout=5)
        if settings.redis_url
        else None
    )
    state.async_rate_limiter = (
        AsyncRateLimiter(state.async_redis) if state.async_redis is not None else None
    )
    state.admissions = AdmissionCache(settings.inference_admission_cache_s)
    state.serving = ServingManager(state.engine, serve_backend, settings, state.catalog)
    state.usage_meter = UsageMeter(state.engine)


def _install_middleware(app: FastAPI, settings: Settings) -> None:
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, upload_limit=settings.max_upload_bytes)
    # Outermost: a request id for everything, the 413s above included.
    app.add_middleware(RequestContextMiddleware)


# -- lifespan ----------------------------------------------------------------------------


def _lifespan(
    settings: Settings,
    backend: ComputeBackend | None,
    run_loops: bool,
    serve_backend: ServeBackend | None,
) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Each part registers its own stop; they run in reverse order of the starts.
        async with AsyncExitStack() as stops:
            _close_shared_clients(app, stops)
            _raise_thread_limit()
            if settings.run_migrations_on_start:
                db.upgrade(settings.database_url)
            # /readyz reports whether this replica's scheduler leads.
            app.state.loops = (
                _start_control_loops(app, stops, settings, backend) if run_loops else None
            )
            if run_loops and serve_backend is not None:
                _start_serving_loop(app, stops, settings)
            _open_serve_client(app, stops, settings)
            _start_usage_meter(app, stops)
            if run_loops:
                _start_webhook_sender(app, stops, settings)
            yield

    return lifespan


def _close_shared_clients(app: FastAPI, stops: AsyncExitStack) -> None:
    """Last at shutdown: the database engine and Redis that everything else used."""
    stops.callback(app.state.engine.dispose)
    if app.state.redis is not None:
        stops.callback(app.state.redis.close)
    if app.state.async_redis is not None:
        stops.push_async_callback(app.state.async_redis.aclose)


def _raise_thread_limit() -> None:
    # Sync endpoints and the session's teardown (its commit) run in this pool. A request
    # holding SQLite's writer lock needs a thread again to commit and let it go; with the
    # pool full of requests waiting for that lock, nobody could (a freeze of up to the
    # lock's timeout under 100 clients). More threads than requests in flight.
    anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS


def _start_control_loops(
    app: FastAPI, stops: AsyncExitStack, settings: Settings, backend: ComputeBackend | None
) -> ControlLoops | None:
    """The scheduler, event consumer and reconciler: they need the queue and a cluster."""
    if app.state.queue is None or backend is None:
        return None
    loops = ControlLoops(app.state.engine, app.state.queue, backend, app.state.store, settings)
    loops.start()
    stops.callback(loops.stop)
    return loops


def _start_serving_loop(app: FastAPI, stops: AsyncExitStack, settings: Settings) -> None:
    serving_loop = ServingLoop(app.state.serving, settings.reconcile_interval_s)
    serving_loop.start()
    stops.callback(serving_loop.stop)


def _start_usage_meter(app: FastAPI, stops: AsyncExitStack) -> None:
    # Stopped before the database engine closes: its last batch is written at the stop.
    meter: UsageMeter = app.state.usage_meter
    meter.start()
    stops.callback(meter.stop)


def _start_webhook_sender(app: FastAPI, stops: AsyncExitStack, settings: Settings) -> None:
    # Every replica sends: each claims its rows from the outbox, which needs the database
    # alone (no Redis, no cluster).
    sender = WebhookSender(app.state.engine, settings)
    sender.start()
    stops.callback(sender.stop)


def _open_serve_client(app: FastAPI, stops: AsyncExitStack, settings: Settings) -> None:
    # One pooled client for every forwarded inference request (in the app's loop).
    # aiohttp, not httpx: about 0.3 ms less per request on this path (bench/proxy_overhead.py),
    # a tenth of the proxy's budget. The read timeout is between chunks, as a stream needs.
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1000, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=10, sock_read=settings.serve_request_timeout_s
        ),
    )
    app.state.serve_client = client
    stops.push_async_callback(client.close)
