"""Standard Webhooks signatures: what `openai`'s `client.webhooks.unwrap()` verifies.

The signed content is `<webhook-id>.<webhook-timestamp>.<body>`, HMAC-SHA256 with the
secret's decoded bytes, sent as `v1,<base64>` in `webhook-signature`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _key(secret: str) -> bytes:
    # Standard Webhooks' `whsec_` secrets are base64; a bare string is its own bytes (as
    # the official verifiers read it).
    if secret.startswith(PREFIX):
        return base64.b64decode(secret[len(PREFIX) :])
    return secret.encode()


def signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one attempt. The timestamp is the attempt's own (receivers
    refuse ones older than a few minutes), so a retry hours later still verifies; the id
    is the event's, the same on every attempt, for receivers to deduplicate by."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, event_id, timestamp, body),
    }
