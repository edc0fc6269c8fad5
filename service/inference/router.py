"""OpenAI's inference endpoints, forwarded to Ray Serve.

The proxy's own latency is paid on every request, so its database and Redis work (the
key, the rate limit, the model's route) happens in one trip to the thread pool, in the
endpoint's dependency: the key is still checked before the body's errors are answered,
as everywhere else in the API. A key and model admitted moments ago skip even that: only
the rate limit is taken, from the event loop (service/inference/admission.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from service.auth import bearer
from service.inference.admission import Target
from service.inference.schemas import (
    ChatCompletionRequest,
    ClassificationRequest,
    CompletionRequest,
)
from service.inference.service import Call, Task, kept_call, open_call

router = APIRouter(prefix="/v1", tags=["inference"])


def _call(schema: type[BaseModel], task: Task) -> Callable[[Request], Awaitable[Call]]:
    async def call(request: Request) -> Call:
        token = bearer(request)
        model_id = await _valid_model(request, schema)
        if model_id is not None:
            kept = kept_call(request.app.state, token, model_id, task)
            if kept is not None:
                return await kept
        return await run_in_threadpool(open_call, request.app.state, token, model_id, task)

    return call


async def _valid_model(request: Request, schema: type[BaseModel]) -> str | None:
    """The body's model when the body is valid JSON of `schema` (FastAPI validates it
    again for the handler, cheaper than a second trip to the thread pool); None leaves
    its errors to FastAPI, answered once the key is checked, and nothing is admitted."""
    # What FastAPI reads as JSON (anything else it refuses, or we leave to the handler).
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    maintype, _, subtype = content_type.partition("/")
    if maintype != "application" or not (subtype == "json" or subtype.endswith("+json")):
        return None
    try:
        body = schema.model_validate(await request.json())
    except (ValueError, ValidationError):
        return None
    model = getattr(body, "model", None)
    return model if isinstance(model, str) else None


async def _target(call: Call, model_id: str, task: Task) -> Target:
    """What the dependency resolved, or (a body it left to FastAPI that passed) now."""
    if call.target is not None:
        return call.target
    return await run_in_threadpool(call.service.prepare, model_id, task)


ChatCall = Annotated[Call, Depends(_call(ChatCompletionRequest, "causal_lm"))]
CompletionCall = Annotated[Call, Depends(_call(CompletionRequest, "causal_lm"))]
ClassificationCall = Annotated[
    Call, Depends(_call(ClassificationRequest, "sequence_classification"))
]


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, call: ChatCall) -> Response:
    target = await _target(call, body.model, "causal_lm")
    return await call.service.forward(
        target, "/v1/chat/completions", body, "chat.completions", body.stream
    )


@router.post("/completions")
async def completions(body: CompletionRequest, call: CompletionCall) -> Response:
    target = await _target(call, body.model, "causal_lm")
    return await call.service.forward(target, "/v1/completions", body, "completions", body.stream)


@router.post("/classifications")
async def classifications(body: ClassificationRequest, call: ClassificationCall) -> Response:
    target = await _target(call, body.model, "sequence_classification")
    return await call.service.forward(
        target, "/v1/classifications", body, "classifications", stream=False
    )
