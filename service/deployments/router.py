from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.deployments.schemas import (
    DeploymentCreate,
    DeploymentDeleted,
    DeploymentList,
    DeploymentOut,
    DeploymentUpdate,
)
from service.deployments.service import DeploymentService
from service.deps import TenantContextDep

router = APIRouter(prefix="/v1/deployments", tags=["deployments"])
Limit = Annotated[int, Query(ge=1, le=100)]


async def _service(ctx: TenantContextDep) -> DeploymentService:
    return DeploymentService(ctx.session, ctx.tenant_id, ctx.state.serving)


Deployments = Annotated[DeploymentService, Depends(_service)]


@router.post("", response_model=DeploymentOut)
def create_deployment(body: DeploymentCreate, deployments: Deployments) -> DeploymentOut:
    return deployments.show(deployments.create(body))


@router.get("", response_model=DeploymentList)
def list_deployments(
    deployments: Deployments, after: str | None = None, limit: Limit = 20
) -> DeploymentList:
    return deployments.list(after, limit)


@router.get("/{deployment_id}", response_model=DeploymentOut)
def get_deployment(deployment_id: str, deployments: Deployments) -> DeploymentOut:
    return deployments.get(deployment_id)


@router.patch("/{deployment_id}", response_model=DeploymentOut)
def update_deployment(
    deployment_id: str, body: DeploymentUpdate, deployments: Deployments
) -> DeploymentOut:
    return deployments.show(deployments.update(deployment_id, body))


@router.delete("/{deployment_id}", response_model=DeploymentDeleted)
def delete_deployment(deployment_id: str, deployments: Deployments) -> DeploymentDeleted:
    return deployments.delete(deployment_id)
