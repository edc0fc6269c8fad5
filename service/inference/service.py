"""Inference: admit (rate limit), resolve the tenant's model to its Serve route, forward.

The control plane answers for the tenant (authentication, ownership: another tenant's
model is a 404, a deleted one too) and Serve does the work; the body goes through as the
client sent it, with the adapter picked by the multiplexed model id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
from pydantic import BaseModel
from sqlmodel import Session
from starlette.datastructures import State
from starlette.responses import Response, StreamingResponse

from service import metrics
from service.auth import Principal, as_tenant, hash_key, is_admin_key, tenant_principal
from service.config import Settings
from service.db import new_session
from service.deployments.serving import ServingManager, base_route, route_of
from service.errors import BadRequest, ServiceUnavailable, TooManyRequests
from service.inference.admission import Admission, Target, admission_generation
from service.inference.repository import InferenceRepository, KeyAndModel
from service.models import FineTunedModel, Job, Tenant
from service.ratelimit import AsyncRateLimiter, Decision, RateLimiter
from service.registry.catalog import Catalog
from service.registry.repository import LazyCatalog, ModelRepository
from service.registry.service import model_not_found
from service.tenants.service import effective_quotas
from service.usage.recording import UsageMeter
from workers.spec import ADAPTER_LOAD_HEADER, BATCH_SIZE_HEADER

log = logging.getLogger(__name__)
Task = Literal["causal_lm", "sequence_classification"]
MULTIPLEX_HEADER = "serve_multiplexed_model_id"
USAGE_TAIL_BYTES = 8192


@dataclass
class InferenceService:
    session: Session
    tenant_id: str
    settings: Settings
    serving: ServingManager
    # None: no Redis, no rate limit.
    limiter: RateLimiter | None
    catalog: Catalog
    # The app's one pooled client to Serve's HTTP proxy.
    upstream: aiohttp.ClientSession
    # Where answered requests' token counts go (None: not counted, as in unit tests).
    meter: UsageMeter | None = None
    models: ModelRepository = field(init=False)

    def __post_init__(self) -> None:
        self.models = ModelRepository(self.session, self.tenant_id)

    # ------------------------------------------------------------ before forwarding

    def admit(self) -> None:
        if self.limiter is not None:
            self._admit(self.session.get(Tenant, self.tenant_id))

    def _admit(self, tenant: Tenant | None) -> None:
        if self.limiter is None:
            return
        per_minute, burst = self.limits(tenant)
        try:
            decision = self.limiter.take(f"inference:{self.tenant_id}", per_minute, burst)
        except Exception:
            # Redis is plumbing: while it is away, serve rather than refuse everyone.
            log.warning("rate limiter unavailable; admitting", exc_info=True)
            return
        _refuse_unless(decision, per_minute)

    async def admit_kept(self, admission: Admission, limiter: AsyncRateLimiter | None) -> None:
        """`_admit` for a kept admission, from the event loop."""
        if limiter is None:
            return
        try:
            decision = await limiter.take(
                f"inference:{self.tenant_id}", admission.per_minute, admission.burst
            )
        except Exception:
            log.warning("rate limiter unavailable; admitting", exc_info=True)
            return
        _refuse_unless(decision, admission.per_minute)

    def limits(self, tenant: Tenant | None) -> tuple[int, int]:
        """The tenant's token bucket: requests per minute and burst."""
        per_minute = self.settings.inference_requests_per_minute
        if tenant is not None:
            per_minute = (
                effective_quotas(tenant, self.settings).inference_requests_per_minute or per_minute
            )
        # The bucket never holds more than a minute's worth.
        return per_minute, min(self.settings.inference_burst, per_minute)

    def resolve(
        self, model_id: str, task: Task, found: tuple[FineTunedModel, Job] | None = None
    ) -> Target:
        # A fine-tuned model, or a kept checkpoint of one of the tenant's jobs: either is
        # served from its job's base model application with its own weights multiplexed.
        # `found`: the live model and its job, already read with the key.
        if found is None:
            found = self.models.servable_with_job(model_id)
        if found is None:
            entry = self.catalog.get(model_id)
            if entry is not None and task == "causal_lm" and "causal_lm" in entry.tasks:
                return Target(base_route(entry)[0], entry.name)
            if entry is not None:
                raise BadRequest(
                    f"'{model_id}' is a base model with no classification head of its own; "
                    "fine-tune it on your labels, then classify with the fine-tuned model."
                    if task == "sequence_classification"
                    else f"'{model_id}' is a base encoder for classification; it does not "
                    "generate text.",
                    param="model",
                    code="model_not_servable",
                )
            raise model_not_found(
                self.models,
                model_id,
                f"The model '{model_id}' does not exist or you do not have access to it.",
            )
        model, job = found
        if model.task != task:
            what = "a classifier" if model.task == "sequence_classification" else "a causal LM"
            use = (
                "/v1/classifications"
                if model.task == "sequence_classification"
                else "/v1/chat/completions or /v1/completions"
            )
            raise BadRequest(
                f"'{model_id}' is {what}; use {use}.", param="model", code="wrong_model_task"
            )
        return Target(route_of(model, job)[0], model.id)

    def prepare(self, model_id: str, task: Task, read: KeyAndModel | None = None) -> Target:
        """Admit the request and resolve its model; `read`: the tenant and model already
        read with the key (`open_call`)."""
        try:
            if read is None:
                self.admit()
            else:
                self._admit(read.tenant)
            target = self.resolve(model_id, task, read.model if read is not None else None)
            self.session.commit()
            return target
        finally:
            # Nothing more is read: give the connection back before waiting on the model
            # (a generation can take seconds; holding a pooled connection that long starves
            # every other request). On an error too: no request dependency closes it.
            self.session.close()

    # ------------------------------------------------------------ forwarding

    async def forward(
        self, target: Target, path: str, body: BaseModel, endpoint: str, stream: bool
    ) -> Response:
        started = time.perf_counter()
        await self.serving.ready(target.route.app)
        content = body.model_dump_json(exclude_unset=True)
        upstream = await self._send(target, path, content)
        if upstream.status == 404 and not _is_ours(upstream):
            # Serve has no such route (yet, or any more): bring the app back and retry once.
            upstream.close()
            self.serving.forget(target.route.app)
            await self.serving.ready(target.route.app)
            upstream = await self._send(target, path, content)
        self._note_adapter_load(upstream, target)
        if upstream.status != 200:
            return await self._error(upstream, target, endpoint, started)
        if stream:
            return self._relay(upstream, target, endpoint, started)
        data = await _read(upstream)
        usage = _usage_of(data)
        self._record(target, endpoint, 200, started, usage)
        batch = upstream.headers.get(BATCH_SIZE_HEADER)
        headers = {BATCH_SIZE_HEADER: batch} if batch is not None else None
        return Response(data, media_type="application/json", headers=headers)

    async def _send(self, target: Target, path: str, content: str) -> aiohttp.ClientResponse:
        try:
            # Streamed: the body is read (or relayed) by the caller.
            return await self.upstream.post(
                f"{self.serving.url}/{target.route.app}{path}",
                data=content.encode(),
                headers={
                    "content-type": "application/json",
                    MULTIPLEX_HEADER: target.route.multiplexed_id,
                },
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _upstream_error(exc, "The model server cannot be reached") from None

    def _relay(
        self, upstream: aiohttp.ClientResponse, target: Target, endpoint: str, started: float
    ) -> StreamingResponse:
        async def chunks() -> Any:
            tail = b""
            try:
                async for chunk in upstream.content.iter_any():
                    tail = (tail + chunk)[-USAGE_TAIL_BYTES:]
                    yield chunk
            finally:
                # Closed, not given back to the pool: a client that went away mid-stream
                # must end the generation too (Serve sees its connection close).
                upstream.close()
                self._record(target, endpoint, 200, started, _stream_usage(tail))

        return StreamingResponse(
            chunks(),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _error(
        self, upstream: aiohttp.ClientResponse, target: Target, endpoint: str, started: float
    ) -> Response:
        data = await _read(upstream)
        status = upstream.status
        self._record(target, endpoint, status if _is_ours(upstream) else 503, started, None)
        if _is_ours(upstream) and status < 500:
            return Response(data, status_code=status, media_type="application/json")
        log.warning("serve answered %s for %s: %s", status, target.route.app, data[:500])
        raise ServiceUnavailable(
            "The model server could not answer; retry shortly.",
            code="model_unavailable",
            headers={"Retry-After": "5"},
        )

    def _note_adapter_load(self, upstream: aiohttp.ClientResponse, target: Target) -> None:
        seconds = upstream.headers.get(ADAPTER_LOAD_HEADER)
        if seconds is not None:
            with contextlib.suppress(ValueError):  # a malformed header is not worth a 500
                metrics.record_adapter_load(
                    base_model=target.route.base_model, seconds=float(seconds)
                )

    def _record(
        self,
        target: Target,
        endpoint: str,
        status: int,
        started: float,
        usage: dict[str, Any] | None,
    ) -> None:
        usage = usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        metrics.record_inference(
            tenant=self.tenant_id,
            endpoint=endpoint,
            model=target.model,
            status=status,
            latency_s=time.perf_counter() - started,
            prompt_tokens=prompt,
            completion_tokens=completion,
        )
        if status == 200 and self.meter is not None:
            self.meter.add(self.tenant_id, target.model, prompt, completion)


def _refuse_unless(decision: Decision, per_minute: int) -> None:
    if not decision.allowed:
        raise TooManyRequests(
            f"Inference rate limit of {per_minute} requests per minute reached; "
            f"retry in {decision.retry_after_s} s.",
            headers={"Retry-After": str(decision.retry_after_s)},
        )


@dataclass(frozen=True)
class Call:
    """An authenticated inference request: its tenant's service and, when its body was
    valid before the handler ran, the model it resolved to (admitted already)."""

    service: InferenceService
    target: Target | None


def kept_call(state: State, token: str, model_id: str, task: Task) -> Awaitable[Call] | None:
    """The call from a kept admission (`AdmissionCache`), admitted from the event loop;
    None when there is none and `open_call` must ask the database."""
    if is_admin_key(token, state.settings.admin_key):
        return None  # open_call refuses it
    admission = state.admissions.get(hash_key(token), model_id, task)
    if admission is None:
        return None
    # Never used (the model's route is kept): no connection is taken.
    service = _service(state, new_session(state.engine), admission.tenant_id)

    async def admitted() -> Call:
        await service.admit_kept(admission, state.async_rate_limiter)
        return Call(service, admission.target)

    return admitted()


def open_call(state: State, token: str, model_id: str | None, task: Task) -> Call:
    """The key's tenant and, given the model, its admission and route: all the request's
    database and Redis work in one go, run in one trip to the thread pool (each trip costs
    a thread's wake-up, a large part of the proxy's own latency). What resolved is kept
    (`AdmissionCache`) for the next requests of the same key and model."""
    if is_admin_key(token, state.settings.admin_key):
        as_tenant(Principal(role="admin"))  # refused: inference acts for a tenant
    generation = admission_generation()
    session = new_session(state.engine)
    key_hash = hash_key(token)
    try:
        # Authentication's query, with the tenant (for its quota) and the model besides.
        found = InferenceRepository(session).key_and_model(key_hash, model_id)
        tenant_id = tenant_principal(found.key if found is not None else None).tenant_id
    except BaseException:
        session.close()
        raise
    assert found is not None and tenant_id is not None
    service = _service(state, session, tenant_id)
    if model_id is None:
        # Only read: nothing to commit. The handler, if it runs, opens it again.
        session.close()
        return Call(service, None)
    per_minute, burst = service.limits(found.tenant)
    target = service.prepare(model_id, task, found)
    state.admissions.put(
        key_hash, model_id, task, Admission(tenant_id, per_minute, burst, target, generation)
    )
    return Call(service, target)


def _service(state: State, session: Session, tenant_id: str) -> InferenceService:
    return InferenceService(
        session,
        tenant_id,
        state.settings,
        state.serving,
        state.rate_limiter,
        LazyCatalog(session, state.catalog),
        state.serve_client,
        state.usage_meter,
    )


async def _read(upstream: aiohttp.ClientResponse) -> bytes:
    """The whole answer (its connection goes back to the pool once read)."""
    try:
        return await upstream.read()
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise _upstream_error(exc, "The model server's answer was cut off") from None
    finally:
        upstream.release()


def _upstream_error(exc: BaseException, what: str) -> ServiceUnavailable:
    if isinstance(exc, TimeoutError):
        return ServiceUnavailable("The model took too long to answer.", code="model_timeout")
    return ServiceUnavailable(
        f"{what} ({type(exc).__name__}); retry shortly.",
        code="model_unavailable",
        headers={"Retry-After": "5"},
    )


def _is_ours(response: aiohttp.ClientResponse) -> bool:
    """An answer of the model server itself (JSON), not of Serve's proxy."""
    return response.headers.get("content-type", "").startswith("application/json")


def _usage_of(data: bytes) -> dict[str, Any] | None:
    try:
        usage = json.loads(data).get("usage")
    except (ValueError, AttributeError):
        return None
    return usage if isinstance(usage, dict) else None


def _stream_usage(tail: bytes) -> dict[str, Any] | None:
    """The usage of the stream's last chunk that has one, or of the SSE comment
    (`: {"usage": ...}`) that ends a stream whose client did not ask for usage."""
    for line in reversed(tail.split(b"\n")):
        if line.startswith((b"data: {", b": {")) and b'"usage"' in line:
            return _usage_of(line.split(b" ", 1)[1])
    return None
