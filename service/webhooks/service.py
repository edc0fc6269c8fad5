"""Webhook endpoints: a tenant's URLs, each with the event types it wants and its own
signing secret; and what was delivered to each."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlmodel import Session

from service.common import known_page, new_id, now
from service.errors import BadRequest, or_not_found
from service.models import WebhookDelivery, WebhookEndpoint
from service.schemas import shown
from service.webhooks.addresses import AddressRefused, check
from service.webhooks.events import PENDING
from service.webhooks.repository import DeliveryRepository, WebhookEndpointRepository
from service.webhooks.schemas import (
    DeliveryList,
    DeliveryOut,
    WebhookCreate,
    WebhookDeleted,
    WebhookList,
    WebhookOut,
    WebhookWithSecret,
)
from service.webhooks.signing import new_secret


def _seconds(t: float | None) -> int | None:
    return None if t is None else math.ceil(t)


def _hint(secret: str) -> str:
    return f"{secret[:6]}...{secret[-4:]}"


def _shown(e: WebhookEndpoint) -> dict[str, object]:
    return {
        "name": e.description or "",
        "signing_secret_hint": _hint(e.secret),
        "created_at": int(e.created_at),
        # Endpoints are not updated: made, then deleted.
        "updated_at": int(e.created_at),
    }


def _out(e: WebhookEndpoint) -> WebhookOut:
    return shown(WebhookOut, e, **_shown(e))


def _delivery(d: WebhookDelivery) -> DeliveryOut:
    return shown(
        DeliveryOut,
        d,
        next_attempt_at=_seconds(d.next_attempt_at) if d.status == PENDING else None,
        delivered_at=_seconds(d.delivered_at),
        created_at=int(d.created_at),
    )


class WebhookService:
    def __init__(self, session: Session, tenant_id: str, allowed_hosts: Sequence[str]) -> None:
        self.repo = WebhookEndpointRepository(session, tenant_id)
        self.deliveries = DeliveryRepository(session, tenant_id)
        self.allowed_hosts = allowed_hosts

    def _get(self, webhook_id: str) -> WebhookEndpoint:
        return or_not_found(
            self.repo.get(webhook_id), f"No webhook endpoint '{webhook_id}'.", param="webhook_id"
        )

    def create(self, body: WebhookCreate) -> WebhookWithSecret:
        try:
            check(body.url, self.allowed_hosts)
        except AddressRefused as exc:
            raise BadRequest(str(exc), param="url", code="invalid_url") from None
        endpoint = WebhookEndpoint(
            id=new_id("wh"),
            tenant_id=self.repo.tenant_id,
            url=body.url,
            secret=new_secret(),
            event_types=list(body.event_types),
            description=body.name,
            created_at=now(),
        )
        self.repo.add(endpoint)
        return shown(
            WebhookWithSecret, endpoint, signing_secret=endpoint.secret, **_shown(endpoint)
        )

    def list(self, after: str | None, limit: int) -> WebhookList:
        page = known_page(self.repo.list_page(after, limit), after, "webhook endpoint")
        return WebhookList.of(page, _out)

    def get(self, webhook_id: str) -> WebhookOut:
        return _out(self._get(webhook_id))

    def delete(self, webhook_id: str) -> WebhookDeleted:
        endpoint = self._get(webhook_id)
        self.repo.delete(endpoint)
        return WebhookDeleted(id=endpoint.id)

    def list_deliveries(self, webhook_id: str, after: str | None, limit: int) -> DeliveryList:
        endpoint = self._get(webhook_id)
        page = known_page(
            self.deliveries.page_of(endpoint.id, after, limit),
            after,
            "delivery",
            " of this webhook endpoint",
        )
        return DeliveryList.of(page, _delivery)
