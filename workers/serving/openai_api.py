"""The OpenAI surface of a replica: request bodies in, completion objects out.

The control plane has validated each request already; the bodies here read the fields
serving uses. Answers are OpenAI's completion, chat completion and chunk objects, the
chunks as Server-Sent Events, and errors in OpenAI's error shape.

A stream carries its usage as OpenAI's does only when asked (`stream_options:
{"include_usage": true}`). Otherwise the usage still ends the stream, for the control
plane's token meter, as an SSE comment (`: {"usage": {...}}`) that clients skip.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from workers.serving.engine import Delta, SamplingParams

Kind = Literal["chat", "text"]


class PromptEncoder(Protocol):
    def encode_prompt(self, prompt: str) -> list[int]: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...


class GenerationBody(BaseModel):
    """The fields a completion and a chat completion share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None

    @property
    def include_usage(self) -> bool:
        """The client asked for the usage chunk that ends OpenAI's streams."""
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionBody(GenerationBody):
    prompt: str | list[str] | list[int]


class ChatBody(GenerationBody):
    messages: list[dict[str, Any]]


class ClassificationBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str]


def sampling_params(body: GenerationBody, default_max_tokens: int) -> SamplingParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(s for s in stop if s),
        seed=body.seed,
    )


def message_text(content: Any) -> str:
    """OpenAI message content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def prompt_token_ids(body: GenerationBody, engine: PromptEncoder) -> list[int]:
    """The prompt's token ids: chat messages through the chat template, a completion's
    prompt as given (ids) or encoded (text, a list of texts joined)."""
    if isinstance(body, ChatBody):
        messages = [
            {"role": str(m.get("role", "user")), "content": message_text(m.get("content"))}
            for m in body.messages
        ]
        return engine.encode_chat(messages)
    assert isinstance(body, CompletionBody)
    prompt = body.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        return [int(x) for x in prompt]
    text = prompt if isinstance(prompt, str) else "".join(str(p) for p in prompt)
    return engine.encode_prompt(text)


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(obj: dict[str, Any], field: bytes = b"data: ") -> bytes:
    return field + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Completion:
    """Accumulates one request's deltas into OpenAI's object for `kind`; `include_usage`:
    the client asked for the usage chunk of a stream."""

    def __init__(self, kind: Kind, model: str, include_usage: bool = False) -> None:
        self.kind = kind
        self.model = model
        self.include_usage = include_usage
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.text = ""
        self.finish: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.finish = delta.finish_reason or self.finish
        self.prompt_tokens, self.completion_tokens = delta.prompt_tokens, delta.completion_tokens

    def _head(self, chunk: bool) -> dict[str, Any]:
        if self.kind == "chat":
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def final(self) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": self.text, "refusal": None},
                "finish_reason": self.finish,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": self.text, "finish_reason": self.finish, "logprobs": None}
        usage = _usage(self.prompt_tokens, self.completion_tokens)
        return {**self._head(False), "choices": [choice], "usage": usage}

    def chunk(self, text: str, finish: str | None, first: bool = False) -> bytes:
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": text}
            if first:
                delta |= {"role": "assistant", "refusal": None}
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "finish_reason": finish,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        # Asked for usage, a chat chunk has the field, null until the last chunk (as
        # OpenAI's chunk schema says); a completion's has no nullable usage to show.
        usage = {"usage": None} if self.include_usage and self.kind == "chat" else {}
        return _sse({**self._head(True), "choices": [choice], **usage})

    def usage_chunk(self) -> bytes:
        """The stream's last chunk: OpenAI's usage chunk (no choices) when asked for, else
        the same usage as a comment, which only the control plane reads."""
        usage = _usage(self.prompt_tokens, self.completion_tokens)
        if not self.include_usage:
            return _sse({"usage": usage}, field=b": ")
        return _sse({**self._head(True), "choices": [], "usage": usage})


async def sse_events(completion: Completion, stream: AsyncIterator[Delta]) -> AsyncIterator[bytes]:
    """The streamed answer: chunks as the deltas come, then usage and OpenAI's end mark."""
    first = True
    if completion.kind == "chat":
        yield completion.chunk("", None, first=True)
        first = False
    async for delta in stream:
        completion.add(delta)
        if delta.text or delta.finish_reason:
            yield completion.chunk(delta.text, delta.finish_reason, first=first)
            first = False
    yield completion.usage_chunk()
    yield b"data: [DONE]\n\n"


def error_response(status: int, message: str, code: str, param: str | None = None) -> Any:
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)
