from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.auth import TenantPrincipal
from service.db import SessionDep
from service.registry.repository import LazyCatalog
from service.registry.schemas import ModelDeleted, ModelList, ModelOut
from service.registry.service import ModelService

router = APIRouter(prefix="/v1/models", tags=["models"])


async def _service(
    request: Request, session: SessionDep, principal: TenantPrincipal
) -> ModelService:
    assert principal.tenant_id is not None
    state = request.app.state
    return ModelService(
        session, principal.tenant_id, LazyCatalog(session, state.catalog), state.serving.apply_soon
    )


Models = Annotated[ModelService, Depends(_service)]


@router.get("", response_model=ModelList)
def list_models(models: Models) -> ModelList:
    return ModelList(data=models.list())


# ':path' because hub-style base model names contain '/'.
@router.get("/{model_id:path}", response_model=ModelOut)
def get_model(model_id: str, models: Models) -> ModelOut:
    return models.get(model_id)


@router.delete("/{model_id:path}", response_model=ModelDeleted)
def delete_model(model_id: str, models: Models) -> ModelDeleted:
    return models.delete(model_id)
