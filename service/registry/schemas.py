from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import ApiObject, Deleted, ObjectList
from workers.spec import Task


class ModelOut(ApiObject):
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    # Tuneplane extensions.
    task: str
    base_model: str | None = None
    fine_tuning_job: str | None = None
    adapter: str | None = None
    # Continued training: the model (or checkpoint) this one's job started from, and the
    # whole chain from the base model down to that parent.
    parent: str | None = None
    lineage: list[str] | None = None
    # Base models: what it is for.
    description: str | None = None


class ModelList(ObjectList[ModelOut]): ...


class ModelDeleted(Deleted):
    object: Literal["model"] = "model"


class LearningRates(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    lora: float = Field(2e-4, gt=0, le=1)
    full: float = Field(2e-5, gt=0, le=1)


class BaseModelCreate(BaseModel):
    """POST /v1/admin/base_models: a base model to offer every tenant."""

    model_config = ConfigDict(extra="forbid", strict=True)

    # How tenants name it in jobs and inference ("model"); no ":", which fine-tuned ids use.
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,127}$")
    # A local directory, a hub id (org/name) or an artifact-store URI (scheme://...).
    source: str = Field(min_length=1, max_length=1024)
    # None: what the checkpoint was saved as (a causal LM, or an encoder to classify with).
    tasks: list[Task] | None = Field(None, min_length=1, max_length=2)
    description: str = Field("", max_length=1024)
    # None: the tokenizer's limit, at most 2048.
    max_length: int | None = Field(None, ge=8, le=131072)
    learning_rate: LearningRates | None = None
    # Takes chat data (needs a chat template). None: if its tokenizer has one.
    chat: bool | None = None


class BaseModelOut(ApiObject):
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    source: str
    tasks: list[str]
    architecture: str | None
    description: str
    max_length: int
    chat: bool
    # False for the models built into this deployment (not deletable).
    registered: bool


class BaseModelList(ObjectList[BaseModelOut]): ...
