from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from service.deps import TenantContextDep
from service.registry.export import ModelExportService
from service.registry.schemas import ModelDeleted, ModelList, ModelOut
from service.registry.service import ModelService

router = APIRouter(prefix="/v1/models", tags=["models"])


async def _service(ctx: TenantContextDep) -> ModelService:
    return ModelService(
        ctx.session, ctx.tenant_id, ctx.catalog, ctx.state.serving.apply_soon, ctx.state.store
    )


async def _exports(ctx: TenantContextDep) -> ModelExportService:
    models_dir = ctx.state.settings.resolved_models_dir
    return ModelExportService(ctx.session, ctx.tenant_id, ctx.catalog, models_dir)


Models = Annotated[ModelService, Depends(_service)]
Exports = Annotated[ModelExportService, Depends(_exports)]
ExportFormat = Annotated[
    str | None,
    Query(
        alias="format",
        description="adapter (the default): the LoRA adapter as trained; merged: the "
        "adapter folded into the base model's weights, a plain transformers model.",
    ),
]


@router.get("", response_model=ModelList)
def list_models(models: Models) -> ModelList:
    return models.list()


# Before GET /{model_id:path}, which would take ".../content" as part of the id.
@router.get(
    "/{model_id:path}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-tar": {}}}},
)
def model_content(model_id: str, exports: Exports, fmt: ExportFormat = None) -> StreamingResponse:
    """The weights of a fine-tuned model or kept checkpoint, as a tar of one folder
    (safetensors weights, config, tokenizer and the `tuneplane.json` manifest).

    `format=adapter` gives a LoRA model's adapter as trained; `format=merged` gives the
    adapter merged into the base weights, which `transformers` loads without peft. A full
    fine-tune is a whole model already: both formats give all of its weights.

    A sync route: a merge loads the model, so it runs in the threadpool."""
    export = exports.export(model_id, fmt)
    return StreamingResponse(
        export.tar_chunks(),
        media_type="application/x-tar",
        headers={
            "Content-Disposition": f'attachment; filename="{export.filename}"',
            "Content-Length": str(export.tar_size()),
        },
        # The stream removes its temporary folder when it ends; this covers a response
        # that never started streaming.
        background=BackgroundTask(export.discard),
    )


# ':path' because hub-style base model names contain '/'.
@router.get("/{model_id:path}", response_model=ModelOut)
def get_model(model_id: str, models: Models) -> ModelOut:
    return models.get(model_id)


@router.delete("/{model_id:path}", response_model=ModelDeleted)
def delete_model(model_id: str, models: Models) -> ModelDeleted:
    return models.delete(model_id)
