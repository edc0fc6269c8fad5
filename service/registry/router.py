from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from service.deps import TenantContextDep
from service.registry.schemas import ModelDeleted, ModelList, ModelOut
from service.registry.service import ModelService

router = APIRouter(prefix="/v1/models", tags=["models"])


async def _service(ctx: TenantContextDep) -> ModelService:
    return ModelService(ctx.session, ctx.tenant_id, ctx.catalog, ctx.state.serving.apply_soon)


Models = Annotated[ModelService, Depends(_service)]


@router.get("", response_model=ModelList)
def list_models(models: Models) -> ModelList:
    return models.list()


# ':path' because hub-style base model names contain '/'.
@router.get("/{model_id:path}", response_model=ModelOut)
def get_model(model_id: str, models: Models) -> ModelOut:
    return models.get(model_id)


@router.delete("/{model_id:path}", response_model=ModelDeleted)
def delete_model(model_id: str, models: Models) -> ModelDeleted:
    return models.delete(model_id)
