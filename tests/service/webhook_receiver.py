"""A real HTTP receiver for webhook tests, on 127.0.0.1 at a free port, in a thread: it
records every request and answers as told (fail the next N, always fail, redirect)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.fail_next = 0
        self.failing = False
        self.redirect_to: str | None = None
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                code, location = receiver._answer()
                with receiver._lock:
                    receiver.received.append(
                        Received(
                            self.path, {k.lower(): v for k, v in self.headers.items()}, body, code
                        )
                    )
                self.send_response(code)
                if location:
                    self.send_header("Location", location)
                text = b"receiver down" if code >= 500 else b"ok"
                self.send_header("Content-Length", str(len(text)))
                self.end_headers()
                self.wfile.write(text)

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def _answer(self) -> tuple[int, str | None]:
        with self._lock:
            if self.redirect_to:
                return 302, self.redirect_to
            if self.failing:
                return 503, None
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503, None
            return 200, None

    def requests(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def delivered(self) -> list[Received]:
        return [r for r in self.requests() if 200 <= r.answered < 300]

    def wait_delivered(self, n: int, timeout_s: float = 30) -> list[Received]:
        """At least `n` distinct deliveries (event and endpoint URL) answered 2xx."""
        deadline = time.monotonic() + timeout_s
        while len({(r.path, r.webhook_id) for r in self.delivered()}) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{n} deliveries not received; got {self.requests()}")
            time.sleep(0.05)
        return self.delivered()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A receiver on 127.0.0.1, closed after the test."""
    r = Receiver()
    try:
        yield r
    finally:
        r.close()
