"""The sender: drains the outbox, in every control-plane replica.

A due row is claimed with a compare-and-set that moves its `next_attempt_at` a lease
ahead (longer than an attempt can take), so no other replica takes it meanwhile; the
attempt's outcome is recorded by the same compare-and-set on the lease. A replica that
dies mid-attempt leaves the lease to expire and the row to be sent again, with the same
`webhook-id`: delivery is at least once, and receivers deduplicate by that id.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Engine

from service.common import now
from service.config import Settings
from service.db import new_session
from service.faults import crash_point
from service.webhooks.addresses import AddressRefused, check
from service.webhooks.events import DELIVERED, FAILED, PENDING, written
from service.webhooks.repository import OutboxRepository
from service.webhooks.signing import headers

log = logging.getLogger(__name__)
# What is kept of a failed answer's body (for `last_error`); more is never read.
MAX_RESPONSE_BYTES = 1024
LEASE_MARGIN_S = 10.0
USER_AGENT = "Tuneplane-Webhooks/1"


@dataclass(frozen=True)
class Claimed:
    id: str
    event_id: str
    payload: dict[str, Any]
    attempts: int
    lease: float
    url: str | None
    secret: str | None


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status_code: int | None = None
    error: str | None = None


class WebhookSender:
    def __init__(
        self, engine: Engine, settings: Settings, client: httpx.Client | None = None
    ) -> None:
        self.engine = engine
        self.settings = settings
        s = settings
        self.client = client or httpx.Client(
            timeout=httpx.Timeout(s.webhook_timeout_s, connect=s.webhook_connect_timeout_s),
            follow_redirects=False,
            # No proxies from the environment: the request goes to the address checked.
            trust_env=False,
            limits=httpx.Limits(max_connections=s.webhook_concurrency * 2),
            headers={"User-Agent": USER_AGENT},
        )
        self.pool = ThreadPoolExecutor(s.webhook_concurrency, thread_name_prefix="tuneplane-wh")
        # An attempt's connect, send and read each have their own timeout; the lease
        # outlasts all of them.
        self.lease_s = s.webhook_connect_timeout_s + 2 * s.webhook_timeout_s + LEASE_MARGIN_S
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneplane-webhooks", daemon=True)

    # ------------------------------------------------------------ loop

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        written.set()
        self._thread.join(timeout=self.settings.webhook_timeout_s * 2 + 10)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.run_once() > 0
            except Exception:
                log.exception("webhook sender step failed; retrying")
                busy = False
                self._stop.wait(1.0)
            if not busy:
                written.wait(self.settings.webhook_poll_interval_s)
                written.clear()

    def run_once(self) -> int:
        """Claim the due deliveries (up to the concurrency) and attempt each; how many."""
        claimed = self._claim(self.settings.webhook_concurrency)
        list(self.pool.map(self._attempt, claimed))
        return len(claimed)

    # ------------------------------------------------------------ one delivery

    def _claim(self, limit: int) -> list[Claimed]:
        t = now()
        lease = t + self.lease_s
        claimed: list[Claimed] = []
        with new_session(self.engine) as session:
            outbox = OutboxRepository(session)
            for d, e in outbox.due(PENDING, t, limit):
                if outbox.set_if(d.id, PENDING, d.next_attempt_at, {"next_attempt_at": lease}):
                    claimed.append(
                        Claimed(
                            d.id,
                            d.event_id,
                            d.payload,
                            d.attempts,
                            lease,
                            e.url if e is not None else None,
                            e.secret if e is not None else None,
                        )
                    )
            session.commit()
        return claimed

    def _attempt(self, c: Claimed) -> None:
        outcome = self._send(c)
        tag = DELIVERED if outcome.ok else FAILED
        crash_point(self.settings.fault_crash_at, "webhooks.after_send", (tag,))
        self._record(c, outcome)

    def _send(self, c: Claimed) -> Outcome:
        if c.url is None or c.secret is None:
            return Outcome(False, error="The endpoint was deleted.")
        try:
            # Checked again before each send: the host may resolve elsewhere by now.
            target = check(c.url, self.settings.webhook_allowed_hosts)
        except AddressRefused as exc:
            return Outcome(False, error=str(exc))
        body = json.dumps(c.payload, separators=(",", ":")).encode()
        sent = {
            **headers(c.secret, c.event_id, int(time.time()), body),
            "Content-Type": "application/json",
            "Host": target.host_header,
        }
        try:
            with self.client.stream(
                "POST",
                target.url,
                content=body,
                headers=sent,
                extensions={"sni_hostname": target.server_name},
            ) as r:
                if 200 <= r.status_code < 300:
                    return Outcome(True, r.status_code)
                return Outcome(False, r.status_code, _start_of(r))
        except httpx.HTTPError as exc:
            return Outcome(False, error=f"{type(exc).__name__}: {exc}"[:500])

    def _record(self, c: Claimed, outcome: Outcome) -> None:
        s = self.settings
        attempts = c.attempts + 1
        values: dict[str, Any] = {
            "attempts": attempts,
            "last_status_code": outcome.status_code,
            "last_error": None if outcome.ok else (outcome.error or "")[:1000],
        }
        t = now()
        if outcome.ok:
            values |= {"status": DELIVERED, "delivered_at": t, "next_attempt_at": t}
        elif attempts >= s.webhook_max_attempts or c.url is None:
            values |= {"status": FAILED, "next_attempt_at": t}
        else:
            values["next_attempt_at"] = t + backoff(
                attempts, s.webhook_backoff_base_s, s.webhook_backoff_max_s
            )
        with new_session(self.engine) as session:
            if not OutboxRepository(session).set_if(c.id, PENDING, c.lease, values):
                # The lease ran out and another replica took the row (or its endpoint
                # was deleted): its attempt is the one recorded.
                log.warning("webhook delivery %s: lease lost, outcome not recorded", c.id)
            session.commit()
        if not outcome.ok:
            log.info(
                "webhook delivery %s attempt %d failed: %s",
                c.id,
                attempts,
                outcome.error or outcome.status_code,
            )


def backoff(attempts: int, base_s: float, cap_s: float) -> float:
    """Exponential, capped, with full jitter in its upper half: endpoints recovering from
    an outage are not hit by every retry at the same instant."""
    delay = min(cap_s, base_s * 2 ** (attempts - 1))
    return delay * random.uniform(0.5, 1.0)


def _start_of(r: httpx.Response) -> str:
    """The answer's status and the start of its body: no more than MAX_RESPONSE_BYTES is
    read, whatever the receiver sends."""
    got = b""
    for chunk in r.iter_raw():
        got += chunk
        if len(got) >= MAX_RESPONSE_BYTES:
            break
    text = got[:MAX_RESPONSE_BYTES].decode("utf-8", "replace").strip()
    return f"HTTP {r.status_code}" + (f": {text}" if text else "")
