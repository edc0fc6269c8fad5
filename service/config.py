"""The one settings object. Nothing else in the service reads the environment."""

from __future__ import annotations

import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

# Where service/faults.py can crash the control plane (TUNEPLANE_FAULT_CRASH_AT).
CRASH_POINTS = frozenset(
    {
        # The job is committed `running` in the database; Ray has not been asked yet.
        "dispatch.after_commit",
        # Ray has accepted the submission; nothing after it has run.
        "dispatch.after_submit",
        # A batch of worker events is applied in the session but not committed.
        "events.before_commit",
        # The batch is committed but its stream entries are not acknowledged.
        "events.after_commit",
        # A pause is committed (`pausing`); the run has not been asked yet.
        "pause.after_commit",
        # A webhook was sent (tag: delivered | failed); its outcome is not recorded.
        "webhooks.after_send",
    }
)


class Quotas(BaseModel):
    """Per-tenant limits; None means unlimited."""

    # Strict: `true` is not a count, and a misspelt quota must not be silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True)

    max_running_jobs: int | None = Field(None, ge=0, le=100_000)
    max_queued_jobs: int | None = Field(None, ge=0, le=1_000_000)
    max_gpus: int | None = Field(None, ge=0, le=100_000)
    # Inference requests per minute (None: the inference_requests_per_minute setting).
    inference_requests_per_minute: int | None = Field(None, ge=1, le=100_000_000)
    # Tokens a month (trained, and prompt and completion tokens served), UTC calendar
    # months: a job submitted once they are used up is refused (429).
    monthly_token_budget: int | None = Field(None, ge=0, le=10**15)


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
    # Redis and Ray: unset in the API-only mode (jobs stay queued); `tuneplane up` sets both.
    redis_url: str | None = None
    # The Ray dashboard / Jobs API address, e.g. http://127.0.0.1:8265.
    ray_address: str | None = None
    # Override Ray's live totals, e.g. for an autoscaling cluster whose GPU nodes start at 0.
    cluster_cpus: float | None = Field(None, ge=0)
    cluster_gpus: float | None = Field(None, ge=0)
    # Held back from the scheduler's view of Ray: Ray Data's tokenize tasks and the job
    # drivers need a CPU while training workers hold the rest.
    reserved_cpus: float = Field(1.0, ge=0)
    # The most CPUs per worker a job whose cpus_per_worker is "auto" (the default) gets.
    max_auto_cpus_per_worker: float = Field(32.0, ge=1)
    # The interpreter that runs `-m workers.run_job` on the Ray head.
    worker_python: str = "python"
    scheduler_interval_s: float = Field(0.5, gt=0)
    reconcile_interval_s: float = Field(3.0, gt=0)
    leader_ttl_s: float = Field(10.0, gt=0)
    # A running job whose Ray job vanished is retried this many times in all.
    max_attempts: int = Field(3, ge=1)
    # How long a dispatched job may be missing from Ray before it counts as lost.
    dispatch_grace_s: float = Field(30.0, ge=0)
    # Environment for the Ray job; a low health-check interval keeps small jobs' reports fast.
    worker_env: dict[str, str] = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    events_group: str = "control-plane"
    # Stream entries a dead replica read but never acknowledged are taken over after this.
    events_reclaim_idle_s: float = Field(30.0, gt=0)
    replica_id: str = ""
    # Fault injection for the reliability tests (service/faults.py): the process SIGKILLs
    # itself the first time it reaches this crash point ("<point>" or "<point>:<tag>").
    # Never set it in production.
    fault_crash_at: str | None = None
    # Fault injection for the reliability tests and soaks: the control plane's artifact
    # store answers every write as a full disk does (ENOSPC) once this process has written
    # this many bytes through it. Never set it in production.
    fault_storage_full_after_bytes: int | None = Field(None, ge=0)

    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1)
    # A JSON file listing base models; None: the embedded catalog of offline tiny models.
    catalog_path: Path | None = None
    default_quotas: Quotas = Quotas(max_running_jobs=4, max_queued_jobs=1000, max_gpus=None)
    max_workers_per_job: int = Field(64, ge=1)
    # Stored Idempotency-Key responses are kept this long.
    idempotency_ttl_s: int = Field(24 * 3600, ge=60)
    run_migrations_on_start: bool = True
    # Logs: one JSON object a line ("json") or plain text ("text").
    log_format: Literal["json", "text"] = "json"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # A bearer token for Prometheus' scrapes of GET /metrics (the admin key works too;
    # anonymous scrapes and tenant keys never do: the series name every tenant).
    metrics_token: str | None = None

    # Serving (Ray Serve). The Serve HTTP proxy the control plane forwards inference to;
    # None: the Ray address's host at serve_port.
    serve_url: str | None = None
    # The port Serve's HTTP proxy listens on (Serve's http_options; fixed when Serve starts).
    serve_port: int = Field(8001, ge=1, le=65535)
    # The interface Serve's proxy binds; 0.0.0.0 where the control plane runs elsewhere (k8s).
    serve_host: str = "127.0.0.1"
    # Adapters each replica keeps loaded (LRU), and the generation batch size.
    serve_max_adapters_per_replica: int = Field(16, ge=1)
    serve_max_batch_size: int = Field(32, ge=1, le=1024)
    # How long a classification batch waits to fill (generation is continuously batched
    # and never waits): a longer wait fills batches better and costs a lone request that.
    serve_batch_wait_timeout_s: float = Field(0.02, ge=0, le=10)
    # The generation engine: vLLM where a replica has a GPU, vLLM installed and the
    # architecture supported ("auto"), or one named; and the largest LoRA rank vLLM makes
    # room for (an adapter above it is refused when it loads).
    serve_engine: Literal["auto", "vllm", "hf"] = "auto"
    serve_max_lora_rank: int = Field(64, ge=1, le=512)
    serve_max_context_tokens: int = Field(1024, ge=8)
    serve_replica_cpus: float = Field(1.0, ge=0)
    serve_replica_gpus: float = Field(0.0, ge=0)
    # The policy of a fine-tuned model called without a deployment of its own.
    serve_default_min_replicas: int = Field(0, ge=0)
    serve_default_max_replicas: int = Field(1, ge=1)
    serve_default_target_ongoing_requests: float = Field(16.0, gt=0)
    # Autoscaler timing: how long load must last before Serve scales up / down, and the
    # window it averages over.
    serve_upscale_delay_s: float = Field(10.0, ge=0)
    serve_downscale_delay_s: float = Field(300.0, ge=0)
    serve_look_back_period_s: float = Field(10.0, gt=0)
    # How long an inference request waits for its application to come up.
    serve_ready_timeout_s: float = Field(180.0, gt=0)
    serve_request_timeout_s: float = Field(300.0, gt=0)
    # Inference requests per minute per tenant, as a token bucket holding up to
    # inference_burst requests; a tenant's quota may set its own rate.
    inference_requests_per_minute: int = Field(6000, ge=1)
    inference_burst: int = Field(50, ge=1)
    # How long a resolved (key, model) is kept so that the next requests skip the database
    # (service/inference/admission.py). A revoked key, a quota change or a deleted model
    # take effect at once on the replica that made the change, within this on others.
    # 0: every request reads the database.
    inference_admission_cache_s: float = Field(1.0, ge=0, le=60)

    # Webhooks. A target that resolves to a loopback, private, link-local, metadata or
    # otherwise non-public address is refused unless this lists its host, its address or
    # a network holding it (["hooks.internal", "10.1.0.0/16"]; as JSON in the env var).
    webhook_allowed_hosts: list[str] = []
    webhook_connect_timeout_s: float = Field(5.0, gt=0, le=60)
    # Each of sending the request and reading the answer.
    webhook_timeout_s: float = Field(10.0, gt=0, le=120)
    # Attempts per event and endpoint before it is given up (`failed`).
    webhook_max_attempts: int = Field(10, ge=1, le=100)
    # Retry n waits about base * 2^(n-1) (jittered), at most the max.
    webhook_backoff_base_s: float = Field(10.0, gt=0)
    webhook_backoff_max_s: float = Field(3600.0, gt=0)
    # How often the sender looks for due deliveries (it wakes at once for this replica's).
    webhook_poll_interval_s: float = Field(1.0, gt=0)
    # Deliveries in flight at once per replica.
    webhook_concurrency: int = Field(8, ge=1, le=256)

    @field_validator("fault_crash_at")
    @classmethod
    def _known_crash_point(cls, value: str | None) -> str | None:
        if value and value.partition(":")[0] not in CRASH_POINTS:
            raise ValueError(f"unknown crash point {value!r}; known: {sorted(CRASH_POINTS)}")
        return value or None

    @model_validator(mode="after")
    def _derive_paths(self) -> Settings:
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'tuneplane.db').resolve()}"
        if not self.storage_uri:
            self.storage_uri = (self.data_dir / "artifacts").resolve().as_uri()
        if not self.replica_id:
            self.replica_id = f"{socket.gethostname()}-{os.getpid()}"
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


def client_config_path() -> Path:
    """The CLI's config file: TUNEPLANE_CONFIG, else ~/.config/tuneplane/config.toml."""
    given = os.environ.get("TUNEPLANE_CONFIG")
    if given:
        return Path(given).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tuneplane" / "config.toml"


class ClientSettings(BaseSettings):
    """Where the `tuneplane` CLI's API commands go: flags, then TUNEPLANE_URL /
    TUNEPLANE_API_KEY / TUNEPLANE_ADMIN_KEY, then the config file (`tuneplane login`)."""

    model_config = SettingsConfigDict(env_prefix="TUNEPLANE_", extra="ignore")

    url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    admin_key: str | None = None
    timeout_s: float = Field(60.0, gt=0)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=client_config_path()),
        )
