"""Small helpers shared by every feature: ids, clocks, cursor pages."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

from service.errors import BadRequest

T = TypeVar("T")


def new_id(prefix: str) -> str:
    # 96 random bits: unguessable, so ids alone never reveal another tenant's objects.
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> float:
    return time.time()


@dataclass
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def known_page(page: Page[T] | None, after: str | None, noun: str, within: str = "") -> Page[T]:
    """The page a repository read, or a 400 where it found no `after` to page from (it
    answers None: no such object, or another tenant's). `within` narrows the message, as
    " of this job"."""
    if page is None:
        raise BadRequest(f"No {noun} '{after}'{within} to page after.", param="after")
    return page
