"""Webhook queries: a tenant's endpoints and deliveries (scoped), and the outbox as the
state machine, the serving loop and the sender see it (every tenant's, by event)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import Text, cast, delete, update
from sqlmodel import Session, col, select

from service.common import Page
from service.models import Deployment, WebhookDelivery, WebhookEndpoint
from service.repository import ScopedRepository


class WebhookEndpointRepository(ScopedRepository[WebhookEndpoint]):
    model = WebhookEndpoint

    def list_page(self, after: str | None, limit: int) -> Page[WebhookEndpoint] | None:
        return self.page(self._select(), after, limit)

    def delete(self, endpoint: WebhookEndpoint) -> None:
        """The endpoint and its deliveries: what was pending is never sent."""
        self.session.exec(
            delete(WebhookDelivery).where(
                col(WebhookDelivery.endpoint_id) == endpoint.id,
                col(WebhookDelivery.tenant_id) == self.tenant_id,
            )
        )
        self.session.delete(endpoint)
        self.session.flush()


class DeliveryRepository(ScopedRepository[WebhookDelivery]):
    model = WebhookDelivery

    def page_of(
        self, endpoint_id: str, after: str | None, limit: int
    ) -> Page[WebhookDelivery] | None:
        stmt = self._select().where(WebhookDelivery.endpoint_id == endpoint_id)
        return self.page(stmt, after, limit)


class OutboxRepository:
    """The outbox for the system: written in the transaction of each change, drained by
    the sender of any replica."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def endpoints_of(self, tenant_id: str) -> list[WebhookEndpoint]:
        stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
        return list(self.session.exec(stmt))

    def subscribed_to(self, event_type: str) -> list[WebhookEndpoint]:
        """Every tenant's endpoints that want `event_type`: the JSON list's text is
        searched (both databases), the exact membership checked here."""
        stmt = select(WebhookEndpoint).where(
            cast(col(WebhookEndpoint.event_types), Text).contains(f'"{event_type}"')
        )
        return [e for e in self.session.exec(stmt) if event_type in e.event_types]

    def add(self, delivery: WebhookDelivery) -> None:
        self.session.add(delivery)
        self.session.flush()

    def due(
        self, status: str, at: float, limit: int
    ) -> list[tuple[WebhookDelivery, WebhookEndpoint | None]]:
        stmt = (
            select(WebhookDelivery, WebhookEndpoint)
            .join(
                WebhookEndpoint,
                col(WebhookEndpoint.id) == col(WebhookDelivery.endpoint_id),
                isouter=True,
            )
            .where(
                col(WebhookDelivery.status) == status,
                col(WebhookDelivery.next_attempt_at) <= at,
            )
            .order_by(col(WebhookDelivery.next_attempt_at), col(WebhookDelivery.id))
            .limit(limit)
        )
        return [(d, e) for d, e in self.session.exec(stmt)]

    def set_if(
        self, delivery_id: str, status: str, next_attempt_at: float, values: dict[str, Any]
    ) -> bool:
        """One UPDATE that only matches while the row is still `status` with this
        `next_attempt_at`: a claim (a lease, where values move next_attempt_at on) and the
        record of an attempt by the lease's holder are both compare-and-sets on it."""
        stmt = (
            update(WebhookDelivery)
            .where(
                col(WebhookDelivery.id) == delivery_id,
                col(WebhookDelivery.status) == status,
                col(WebhookDelivery.next_attempt_at) == next_attempt_at,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return self.session.exec(stmt).rowcount == 1

    def deployments_of(self, tenant_ids: Collection[str]) -> list[Deployment]:
        stmt = select(Deployment).where(col(Deployment.tenant_id).in_(sorted(tenant_ids)))
        return list(self.session.exec(stmt))

    def written_events(self, event_ids: Collection[str]) -> set[str]:
        """Which of `event_ids` the outbox holds (for any endpoint)."""
        if not event_ids:
            return set()
        stmt = select(WebhookDelivery.event_id).where(
            col(WebhookDelivery.event_id).in_(sorted(event_ids))
        )
        return set(self.session.exec(stmt))
