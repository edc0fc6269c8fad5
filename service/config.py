"""The one settings object. Nothing else in the service reads the environment."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Quotas(BaseModel):
    """Per-tenant limits; None means unlimited."""

    max_running_jobs: int | None = Field(None, ge=0, le=100_000)
    max_queued_jobs: int | None = Field(None, ge=0, le=1_000_000)
    max_gpus: int | None = Field(None, ge=0, le=100_000)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TUNEPLANE_", extra="ignore")

    data_dir: Path = Path(".tuneplane")
    # Default: a SQLite file in data_dir. PostgreSQL: postgresql+psycopg://user:pw@host/db
    database_url: str = ""
    # Default: file://<data_dir>/artifacts. Any fsspec URI (s3://bucket/prefix) works.
    storage_uri: str = ""
    # Where workers.tiny builds the offline catalog models; default <data_dir>/models.
    models_dir: Path | None = None
    # None: admin endpoints refuse every request.
    admin_key: str | None = None
    redis_url: str | None = None
    ray_address: str | None = None

    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1)
    # A JSON file listing base models; None: the embedded catalog of offline tiny models.
    catalog_path: Path | None = None
    default_quotas: Quotas = Quotas(max_running_jobs=4, max_queued_jobs=1000, max_gpus=None)
    max_workers_per_job: int = Field(64, ge=1)
    # Stored Idempotency-Key responses are kept this long.
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)
    run_migrations_on_start: bool = True

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'tuneplane.db').resolve()}"
        if not self.storage_uri:
            self.storage_uri = (self.data_dir / "artifacts").resolve().as_uri()
        if self.models_dir is None:
            self.models_dir = (self.data_dir / "models").resolve()
        return self

    @property
    def resolved_models_dir(self) -> Path:
        assert self.models_dir is not None  # set by _derive_paths
        return self.models_dir


@lru_cache
def get_settings() -> Settings:
    return Settings()
