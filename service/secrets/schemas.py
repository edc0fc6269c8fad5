from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas import ApiObject, CompleteList, Deleted

# Environment-variable names: what the trackers' clients read (WANDB_API_KEY, ...).
SECRET_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
MAX_SECRETS = 64
SecretName = Annotated[str, Field(pattern=SECRET_NAME)]


class SecretPut(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    value: str = Field(min_length=1, max_length=8192)


class SecretOut(ApiObject):
    """A secret as the API shows it: its name and times, never its value."""

    object: Literal["secret"] = "secret"
    name: str
    created_at: int
    updated_at: int


class SecretList(CompleteList[SecretOut]): ...


class SecretDeleted(Deleted):
    object: Literal["secret"] = "secret"
