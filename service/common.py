"""Small helpers shared by every feature: ids, clocks, cursor pages."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Generic, TypeVar

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
