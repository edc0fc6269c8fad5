"""OpenAI's inference endpoints, forwarded to Ray Serve."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.deps import TenantContextDep
from service.inference.schemas import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
)
from service.inference.service import InferenceService

router = APIRouter(prefix="/v1", tags=["inference"])


async def _service(ctx: TenantContextDep) -> InferenceService:
    state = ctx.state
    return InferenceService(
        ctx.session,
        ctx.tenant_id,
        state.settings,
        state.serving,
        state.rate_limiter,
        ctx.catalog,
        state.serve_client,
        state.usage_meter,
    )


Inference = Annotated[InferenceService, Depends(_service)]


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, inference: Inference) -> Response:
    target = await run_in_threadpool(inference.prepare, body.model, "causal_lm")
    return await inference.forward(
        target, "/v1/chat/completions", body, "chat.completions", body.stream
    )


@router.post("/completions")
async def completions(body: CompletionRequest, inference: Inference) -> Response:
    target = await run_in_threadpool(inference.prepare, body.model, "causal_lm")
    return await inference.forward(target, "/v1/completions", body, "completions", body.stream)


@router.post("/classifications")
async def classifications(body: ClassificationRequest, inference: Inference) -> Response:
    target = await run_in_threadpool(inference.prepare, body.model, "sequence_classification")
    return await inference.forward(
        target, "/v1/classifications", body, "classifications", stream=False
    )
