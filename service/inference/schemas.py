"""OpenAI's inference request bodies, with the fields Tuneplane serves.

Unknown fields are refused (400 naming them) rather than silently ignored, as elsewhere in
the API; fields the official client sends that change nothing here are accepted."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOP = 4


class _Generation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=512)
    max_tokens: int | None = Field(None, ge=1, le=32_768)
    max_completion_tokens: int | None = Field(None, ge=1, le=32_768)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: Literal[1] = 1
    user: str | None = Field(None, max_length=256)
    # Accepted at their neutral values only.
    frequency_penalty: Literal[0] = 0
    presence_penalty: Literal[0] = 0

    @field_validator("temperature", "top_p")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if len(value) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop sequences")
            if any(len(s) > 256 for s in value):
                raise ValueError("a stop sequence is at most 256 characters")
        elif isinstance(value, str) and len(value) > 256:
            raise ValueError("a stop sequence is at most 256 characters")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict[str, Any]]
    name: str | None = Field(None, max_length=256)


class ChatCompletionRequest(_Generation):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1024)


class CompletionRequest(_Generation):
    prompt: str | list[str]
    echo: Literal[False] = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("one prompt per request")
        return value


class ClassificationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=512)
    input: str | list[str]

    @field_validator("input")
    @classmethod
    def _texts(cls, value: str | list[str]) -> str | list[str]:
        texts = [value] if isinstance(value, str) else value
        if not 1 <= len(texts) <= 256:
            raise ValueError("between 1 and 256 inputs")
        if any(len(t) > 100_000 for t in texts):
            raise ValueError("each input is at most 100000 characters")
        return value
