from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.deps import TenantContextDep
from service.webhooks.schemas import (
    DeliveryList,
    WebhookCreate,
    WebhookDeleted,
    WebhookList,
    WebhookOut,
    WebhookWithSecret,
)
from service.webhooks.service import WebhookService

routes = APIRouter(tags=["webhooks"])
Limit = Annotated[int, Query(ge=1, le=100)]


async def _service(ctx: TenantContextDep) -> WebhookService:
    return WebhookService(ctx.session, ctx.tenant_id, ctx.state.settings.webhook_allowed_hosts)


Webhooks = Annotated[WebhookService, Depends(_service)]


@routes.post("", response_model=WebhookWithSecret)
def create_webhook(body: WebhookCreate, webhooks: Webhooks) -> WebhookWithSecret:
    """The answer holds the endpoint's signing secret, shown this once."""
    return webhooks.create(body)


@routes.get("", response_model=WebhookList)
def list_webhooks(webhooks: Webhooks, after: str | None = None, limit: Limit = 20) -> WebhookList:
    return webhooks.list(after, limit)


@routes.get("/{webhook_id}", response_model=WebhookOut)
def get_webhook(webhook_id: str, webhooks: Webhooks) -> WebhookOut:
    return webhooks.get(webhook_id)


@routes.delete("/{webhook_id}", response_model=WebhookDeleted)
def delete_webhook(webhook_id: str, webhooks: Webhooks) -> WebhookDeleted:
    """Deliveries not yet made to it are dropped."""
    return webhooks.delete(webhook_id)


@routes.get("/{webhook_id}/deliveries", response_model=DeliveryList)
def list_deliveries(
    webhook_id: str, webhooks: Webhooks, after: str | None = None, limit: Limit = 20
) -> DeliveryList:
    return webhooks.list_deliveries(webhook_id, after, limit)


router = APIRouter()
router.include_router(routes, prefix="/v1/webhooks")
# OpenAI's path for the same resource: its client's `webhooks.create/list/retrieve/delete`.
router.include_router(routes, prefix="/v1/webhook_endpoints", include_in_schema=False)
