from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.models.status import DeploymentStatus
from service.schemas import ApiObject, CursorPage, Deleted

# The engine a deployment's model generates with: "auto" is the cluster's choice
# (TUNEPLANE_SERVE_ENGINE), "vllm" and "hf" (transformers) name one.
Engine = Literal["auto", "vllm", "hf"]


class DeploymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=512)
    min_replicas: int = Field(0, ge=0, le=1000)
    max_replicas: int = Field(1, ge=1, le=1000)
    target_ongoing_requests: float = Field(16.0, gt=0, le=100_000)
    engine: Engine = "auto"

    @model_validator(mode="after")
    def _range(self) -> DeploymentCreate:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be at least min_replicas")
        return self


class DeploymentUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_replicas: int | None = Field(None, ge=0, le=1000)
    max_replicas: int | None = Field(None, ge=1, le=1000)
    target_ongoing_requests: float | None = Field(None, gt=0, le=100_000)
    engine: Engine | None = None


class DeploymentOut(ApiObject):
    object: Literal["deployment"] = "deployment"
    model: str
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    engine: Engine
    # Live, from Serve: the model's application as a whole (adapters of one base model
    # share their application and replicas).
    status: DeploymentStatus
    running_replicas: int
    created_at: int
    updated_at: int


class DeploymentList(CursorPage[DeploymentOut]): ...


class DeploymentDeleted(Deleted):
    object: Literal["deployment"] = "deployment"
