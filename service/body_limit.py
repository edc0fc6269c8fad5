"""The request body size limit: an ASGI middleware that answers 413 (OpenAI's error shape).

It counts bytes as they arrive, so neither a false Content-Length nor a chunked body can
make the app buffer more than the limit. JSON bodies are small; only file uploads may be
large (their own limit, a setting).
"""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import error_body

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
