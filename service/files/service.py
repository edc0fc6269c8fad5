"""File rules: validate while streaming to storage; only complete files ever get a row."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import IO

from sqlalchemy import event
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session

from service.common import known_page, new_id, now
from service.config import Settings
from service.errors import BadRequest, Conflict, PayloadTooLarge, or_not_found
from service.files.repository import FileRepository
from service.files.schemas import FileDeleted, FileList, FileOut
from service.models import StoredFile
from service.schemas import shown
from service.storage import CHUNK, ArtifactStore
from workers.formats import DataFormatError, FileTooLarge, StreamingValidator

log = logging.getLogger(__name__)
PURPOSES = ("fine-tune",)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def clean_filename(name: str | None) -> str:
    # Only ever displayed, never used as a path; still, keep the last path component only.
    base = re.split(r"[/\\]", name or "")[-1]
    base = _UNSAFE.sub("", base).strip()
    if base in ("", ".", ".."):
        base = "upload.jsonl"
    return base[:255]


def remove_unless_committed(session: Session, store: ArtifactStore, key: str) -> None:
    """The blob is stored before its row; should the row never commit (the database went
    away, a retry with the same Idempotency-Key won), the blob goes too, so an upload
    leaves both or neither."""
    # The listeners stay (they cannot be removed while the session runs them) and go with
    # the request's session; `state` makes them act once.
    state = {"committed": False, "ended": False}

    def _committed(_: Session) -> None:
        state["committed"] = True

    def _ended(_: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is not None or state["ended"]:
            return  # a savepoint (the request's transaction goes on), or already handled
        state["ended"] = True
        if state["committed"]:
            return
        try:
            store.delete(key)
        except Exception as exc:
            log.warning("could not remove the uncommitted upload %s: %s", key, exc)

    event.listen(session, "after_commit", _committed)
    event.listen(session, "after_transaction_end", _ended)


def file_out(f: StoredFile) -> FileOut:
    return shown(FileOut, f, created_at=int(f.created_at))


class FileService:
    def __init__(
        self, session: Session, tenant_id: str, store: ArtifactStore, settings: Settings
    ) -> None:
        self.session = session
        self.repo = FileRepository(session, tenant_id)
        self.tenant_id = tenant_id
        self.store = store
        self.settings = settings

    def _get(self, file_id: str) -> StoredFile:
        return or_not_found(
            self.repo.get(file_id), f"No such File object: {file_id}", param="file_id"
        )

    def upload(self, stream: IO[bytes], filename: str | None, purpose: str) -> FileOut:
        if purpose not in PURPOSES:
            raise BadRequest(
                f"purpose '{purpose}' is not supported; use one of: {', '.join(PURPOSES)}",
                param="purpose",
            )
        file_id = new_id("file")
        key = f"{self.tenant_id}/files/{file_id}.jsonl"
        partial = f"{key}.partial"
        validator = StreamingValidator(max_bytes=self.settings.max_upload_bytes)
        try:
            with self.store.open_write(partial) as out:
                while chunk := stream.read(CHUNK):
                    validator.feed(chunk)
                    out.write(chunk)
            summary = validator.finish()
        except FileTooLarge as exc:
            self.store.delete(partial)
            raise PayloadTooLarge(str(exc), param="file") from None
        except DataFormatError as exc:
            self.store.delete(partial)
            raise BadRequest(f"Invalid file: {exc}", param="file", code="invalid_file") from None
        except BaseException:
            # A full disk included (ENOSPC, answered 507): no partial blob stays behind.
            self.store.delete(partial)
            raise
        # Readers only ever see the final key, and only once it is complete.
        try:
            self.store.move(partial, key)
        except BaseException:
            self.store.delete(partial)
            raise
        remove_unless_committed(self.session, self.store, key)
        stored = StoredFile(
            id=file_id,
            tenant_id=self.tenant_id,
            filename=clean_filename(filename),
            purpose=purpose,
            bytes=summary.bytes,
            storage_key=key,
            format=summary.format,
            examples=summary.examples,
            labels=summary.labels or None,
            created_at=now(),
        )
        self.repo.add(stored)
        return file_out(stored)

    def list(
        self, after: str | None, limit: int, purpose: str | None, *, newest_first: bool = True
    ) -> FileList:
        page = known_page(
            self.repo.list_page(after, limit, purpose, newest_first=newest_first), after, "file"
        )
        return FileList.of(page, file_out)

    def get(self, file_id: str) -> FileOut:
        return file_out(self._get(file_id))

    def content(self, file_id: str) -> Iterator[bytes]:
        return self.store.iter_bytes(self._get(file_id).storage_key)

    def delete(self, file_id: str) -> FileDeleted:
        stored = self._get(file_id)
        job = self.repo.active_job_using(file_id)
        if job is not None:
            raise Conflict(
                f"File {file_id} is used by fine-tuning job {job.id}, which is {job.status}; "
                "delete it after the job ends.",
                param="file_id",
                code="file_in_use",
            )
        self.repo.delete(stored)
        self.store.delete(stored.storage_key)
        return FileDeleted(id=file_id)
