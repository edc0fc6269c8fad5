"""The usage API's shapes: OpenAI's usage API (pages of time buckets, each holding one
result per group), with training's figures beside inference's tokens."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class UsageResult(BaseModel):
    object: Literal["usage.result"] = "usage.result"
    # The group's values; None for a field the query did not group by (as OpenAI's).
    model: str | None = None
    kind: str | None = None
    job_id: str | None = None
    tenant_id: str | None = None
    # Inference, named as OpenAI's completions usage names them.
    input_tokens: int = 0
    output_tokens: int = 0
    num_model_requests: int = 0
    # Training.
    trained_tokens: int = 0
    worker_seconds: float = 0.0
    gpu_seconds: float = 0.0
    jobs: int = 0


class UsageBucket(BaseModel):
    object: Literal["bucket"] = "bucket"
    start_time: int
    end_time: int
    results: list[UsageResult]


class UsagePage(BaseModel):
    object: Literal["page"] = "page"
    data: list[UsageBucket]
    has_more: bool
    # Pass as `page` for the next buckets.
    next_page: str | None
