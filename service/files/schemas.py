from __future__ import annotations

from typing import Literal

from service.schemas import ApiObject, Deleted, IdRangePage


class FileOut(ApiObject):
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    # Only a complete, valid file gets a row: always processed. OpenAI's `expires_at` and
    # `status_details` are left out (ours never expire; a failed upload is a 400, not a
    # file in "error" with its details): its schema takes their types or no field, never
    # null.
    status: Literal["processed"] = "processed"
    # Tuneplane extensions: what validation found.
    format: str
    examples: int


class FileList(IdRangePage[FileOut]): ...


class FileDeleted(Deleted):
    object: Literal["file"] = "file"
