"""/v1/admin/base_models: register, list, read and delete base models (admin key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service.auth import AdminPrincipal
from service.db import SessionDep
from service.registry.base_models import BaseModelService
from service.registry.schemas import BaseModelCreate, BaseModelList, BaseModelOut

router = APIRouter(prefix="/v1/admin/base_models", tags=["admin"])


async def _service(request: Request, session: SessionDep, _: AdminPrincipal) -> BaseModelService:
    state = request.app.state
    return BaseModelService(
        session, state.catalog, state.settings.data_dir / "cache" / "base_models"
    )


BaseModels = Annotated[BaseModelService, Depends(_service)]


@router.post("", response_model=BaseModelOut)
def register_base_model(body: BaseModelCreate, base_models: BaseModels) -> BaseModelOut:
    return base_models.register(body)


@router.get("", response_model=BaseModelList)
def list_base_models(base_models: BaseModels) -> BaseModelList:
    return base_models.list()


# ':path' because hub-style names contain '/'.
@router.get("/{name:path}", response_model=BaseModelOut)
def get_base_model(name: str, base_models: BaseModels) -> BaseModelOut:
    return base_models.get(name)


@router.delete("/{name:path}", response_model=BaseModelOut)
def delete_base_model(name: str, base_models: BaseModels) -> BaseModelOut:
    return base_models.delete(name)
