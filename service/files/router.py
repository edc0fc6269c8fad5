from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from service.auth import TenantPrincipal
from service.db import SessionDep
from service.files.schemas import FileDeleted, FileList, FileOut
from service.files.service import FileService
from service.idempotency import IdempotencyDep

router = APIRouter(prefix="/v1/files", tags=["files"])


async def _service(
    request: Request, session: SessionDep, principal: TenantPrincipal
) -> FileService:
    assert principal.tenant_id is not None
    state = request.app.state
    return FileService(session, principal.tenant_id, state.store, state.settings)


Files = Annotated[FileService, Depends(_service)]


@router.post("", response_model=FileOut)
def upload_file(
    files: Files,
    idem: IdempotencyDep,
    file: Annotated[UploadFile, File(description="JSONL training data")],
    purpose: Annotated[str, Form()],
) -> FileOut | JSONResponse:
    if (replayed := idem.replay()) is not None:
        return replayed
    out = files.upload(file.file, file.filename, purpose)
    idem.remember(out)
    return out


@router.get("", response_model=FileList)
def list_files(
    files: Files,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    purpose: str | None = None,
) -> FileList:
    return files.list(after, limit, purpose)


@router.get("/{file_id}", response_model=FileOut)
def get_file(file_id: str, files: Files) -> FileOut:
    return files.get(file_id)


@router.get("/{file_id}/content")
def file_content(file_id: str, files: Files) -> StreamingResponse:
    return StreamingResponse(files.content(file_id), media_type="application/octet-stream")


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, files: Files) -> FileDeleted:
    return files.delete(file_id)
