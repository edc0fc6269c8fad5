from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import JSONResponse, StreamingResponse

from service.deps import TenantContextDep
from service.files.schemas import FileDeleted, FileList, FileOut
from service.files.service import FileService
from service.idempotency import IdempotencyDep
from service.schemas import at_most

router = APIRouter(prefix="/v1/files", tags=["files"])


async def _service(ctx: TenantContextDep) -> FileService:
    return FileService(ctx.session, ctx.tenant_id, ctx.state.store, ctx.state.settings)


Files = Annotated[FileService, Depends(_service)]


@router.post("", response_model=FileOut)
def upload_file(
    files: Files,
    idem: IdempotencyDep,
    file: Annotated[UploadFile, File(description="JSONL training data")],
    purpose: Annotated[str, Form()],
) -> FileOut | JSONResponse:
    return idem.once(lambda: files.upload(file.file, file.filename, purpose))


@router.get("", response_model=FileList)
def list_files(
    files: Files,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1), at_most(10_000)] = 10_000,
    purpose: str | None = None,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    """Newest first, or oldest first with `order=asc` (by created_at, as OpenAI's)."""
    return files.list(after, limit, purpose, newest_first=order == "desc")


@router.get("/{file_id}", response_model=FileOut)
def get_file(file_id: str, files: Files) -> FileOut:
    return files.get(file_id)


@router.get("/{file_id}/content")
def file_content(file_id: str, files: Files) -> StreamingResponse:
    return StreamingResponse(files.content(file_id), media_type="application/octet-stream")


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(file_id: str, files: Files) -> FileDeleted:
    return files.delete(file_id)
