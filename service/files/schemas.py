from __future__ import annotations

from typing import Literal

from service.schemas import ApiObject, Deleted, IdRangePage


class FileOut(ApiObject):
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = None
    expires_at: int | None = None
    # Tuneplane extensions: what validation found.
    format: str
    examples: int


class FileList(IdRangePage[FileOut]): ...


class FileDeleted(Deleted):
    object: Literal["file"] = "file"
