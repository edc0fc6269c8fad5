from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from service.schemas import ApiObject, CursorPage
from service.webhooks.events import EVENT_TYPES

EventType = Literal[
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.paused",
    "deployment.ready",
]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


class WebhookCreate(BaseModel):
    """OpenAI's webhook endpoint create (`client.webhooks.create(name=, url=, event_types=)`),
    with its `name` optional here (`description` is taken for it too)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048)
    event_types: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES))
    name: str | None = Field(
        None, max_length=512, validation_alias=AliasChoices("name", "description")
    )

    @field_validator("event_types")
    @classmethod
    def _once_each(cls, value: list[EventType]) -> list[EventType]:
        return list(dict.fromkeys(value))


class WebhookOut(ApiObject):
    """OpenAI's WebhookEndpoint."""

    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    name: str
    url: str
    event_types: list[str]
    # Enough of the secret to tell which one a receiver holds, not enough to sign.
    signing_secret_hint: str
    created_at: int
    updated_at: int


class WebhookWithSecret(WebhookOut):
    # Only in the answer to the create: the database keeps it (it signs), the API never
    # shows it again.
    signing_secret: str


class WebhookList(CursorPage[WebhookOut]): ...


class WebhookDeleted(BaseModel):
    # OpenAI's DeletedWebhookEndpoint names its own object kind (not the endpoint's).
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class DeliveryOut(ApiObject):
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint_id: str
    # The `webhook-id` header: the same on every attempt.
    event_id: str
    event_type: str
    # pending (to be sent, or sent again after a failed attempt), delivered, failed (gave up)
    status: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    # When the next attempt is due (pending only).
    next_attempt_at: int | None
    delivered_at: int | None
    created_at: int


class DeliveryList(CursorPage[DeliveryOut]): ...
