"""The serving manager: the database's models and deployments -> Ray Serve's config.

Serve is driven declaratively: every apply writes the whole set of applications, and
Serve starts, updates or deletes applications to match (so a lost or restarted Ray head
is put right by the next apply). One application per base model (and task) holds all of
its LoRA adapters, its jobs' checkpoints' adapters among them; a full fine-tune (or a
checkpoint of one) is an application of its own. An application's autoscaling is the
union of the policies of the models it serves: the largest minimum, the largest maximum
and the smallest target of ongoing requests per replica.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Engine
from sqlmodel import Session

from service.config import Settings
from service.deployments.repository import ServingRepository
from service.errors import ServiceUnavailable
from service.models import Deployment, FineTunedModel, Job
from service.ray_backend import ServeAppStatus, ServeBackend
from service.registry.catalog import Catalog, CatalogEntry
from service.registry.repository import BaseModelRepository
from service.webhooks.ready import announce_ready
from workers.spec import BASE_MODEL_ID, SERVE_IMPORT_PATH, ServeArgs

log = logging.getLogger(__name__)
DEPLOYMENT_NAME = "model"  # the one deployment in each application (workers.serve)
STATUS_TTL_S = 1.0


@dataclass(frozen=True)
class Policy:
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: float
    engine: str = "auto"  # "auto": the cluster's (TUNEPLANE_SERVE_ENGINE)

    @staticmethod
    def of(deployment: Deployment) -> Policy:
        return Policy(
            deployment.min_replicas,
            deployment.max_replicas,
            deployment.target_ongoing_requests,
            deployment.engine,
        )

    def union(self, other: Policy) -> Policy:
        return Policy(
            max(self.min_replicas, other.min_replicas),
            max(self.max_replicas, other.max_replicas),
            min(self.target_ongoing_requests, other.target_ongoing_requests),
            merge_engines(self.engine, other.engine),
        )


def merge_engines(a: str, b: str) -> str:
    """The engine of an application whose deployments ask for `a` and `b`: a named engine
    over "auto"; two different ones give transformers, which serves every model."""
    if a == b or b == "auto":
        return a
    if a == "auto":
        return b
    return "hf"


@dataclass(frozen=True)
class Route:
    """Where a model's requests go: a Serve application and the multiplexed model id."""

    app: str
    multiplexed_id: str
    task: str
    base_model: str


def _slug(text: str) -> str:
    readable = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def route_of(model: FineTunedModel, job: Job) -> tuple[Route, ServeArgs]:
    """The model's route and its application's arguments (less the settings)."""
    spec = job.spec or {}
    source = str((spec.get("base_model") or {}).get("source") or model.base_model)
    labels = spec.get("labels") or []
    if model.adapter_type == "full":
        app = "full-" + hashlib.sha256(model.id.encode()).hexdigest()[:16]
        args: dict[str, Any] = {"source": model.artifact_uri, "task": model.task}
        multiplexed = BASE_MODEL_ID
    elif model.task == "sequence_classification":
        app = f"cls{len(labels)}-{_slug(source)}"
        args = {"source": source, "task": model.task}
        multiplexed = model.artifact_uri
    else:
        app = f"lm-{_slug(source)}"
        args = {"source": source, "task": model.task}
        multiplexed = model.artifact_uri
    if model.task == "sequence_classification":
        args["num_labels"] = max(2, len(labels))
    return (
        Route(app, multiplexed, model.task, model.base_model),
        ServeArgs.model_validate({**args, "models_dir": ""}),
    )


def base_route(entry: CatalogEntry) -> tuple[Route, ServeArgs]:
    """A base causal LM itself: its adapters' application, with no adapter applied, so a
    user compares a fine-tuned model with its base on the same replica."""
    route = Route(f"lm-{_slug(entry.source)}", BASE_MODEL_ID, "causal_lm", entry.name)
    return route, ServeArgs(source=entry.source, task="causal_lm", models_dir="")


def serve_url(settings: Settings) -> str:
    if settings.serve_url:
        return settings.serve_url.rstrip("/")
    host = urlsplit(settings.ray_address or "http://127.0.0.1").hostname or "127.0.0.1"
    return f"http://{host}:{settings.serve_port}"


class ServingManager:
    def __init__(
        self,
        engine: Engine,
        backend: ServeBackend | None,
        settings: Settings,
        catalog: Catalog | None = None,
    ) -> None:
        self.engine = engine
        self.catalog = catalog
        self.backend = backend
        self.settings = settings
        self.url = serve_url(settings)
        self._lock = threading.Lock()
        self._applied: str | None = None  # fingerprint of the last config Serve accepted
        self._apps: set[str] = set()
        self._status: dict[str, ServeAppStatus] = {}
        self._status_at = 0.0
        # Applications seen running: requests to them skip the status check until one
        # fails (`forget`).
        self._running: set[str] = set()

    # ------------------------------------------------------------ desired state

    def _app_config(self, name: str, args: ServeArgs, policy: Policy) -> dict[str, Any]:
        s = self.settings
        args = args.model_copy(
            update={
                "models_dir": str(s.resolved_models_dir),
                "max_adapters": s.serve_max_adapters_per_replica,
                "max_batch_size": s.serve_max_batch_size,
                "batch_wait_timeout_s": s.serve_batch_wait_timeout_s,
                "max_context_tokens": s.serve_max_context_tokens,
                "engine": s.serve_engine if policy.engine == "auto" else policy.engine,
                "max_lora_rank": s.serve_max_lora_rank,
            }
        )
        actor: dict[str, Any] = {"num_cpus": s.serve_replica_cpus}
        if s.serve_replica_gpus:
            actor["num_gpus"] = s.serve_replica_gpus
        return {
            "name": name,
            "route_prefix": f"/{name}",
            "import_path": SERVE_IMPORT_PATH,
            "runtime_env": {"env_vars": dict(s.worker_env)},
            "args": args.model_dump(mode="json"),
            "deployments": [
                {
                    "name": DEPLOYMENT_NAME,
                    # Batching needs many requests in a replica at once.
                    "max_ongoing_requests": max(64, 2 * s.serve_max_batch_size),
                    "autoscaling_config": {
                        "min_replicas": policy.min_replicas,
                        "initial_replicas": policy.min_replicas,
                        "max_replicas": max(policy.max_replicas, policy.min_replicas, 1),
                        "target_ongoing_requests": policy.target_ongoing_requests,
                        "upscale_delay_s": s.serve_upscale_delay_s,
                        "downscale_delay_s": s.serve_downscale_delay_s,
                        "look_back_period_s": s.serve_look_back_period_s,
                    },
                    "ray_actor_options": actor,
                    # A log line per request costs a tiny model's replica more than the
                    # request; the control plane logs every request already.
                    "logging_config": {"enable_access_log": False},
                }
            ],
        }

    def desired(self) -> dict[str, Any]:
        return self._desired()[0]

    def _desired(self) -> tuple[dict[str, Any], set[str]]:
        """Serve's config, and the applications in it that only serve on demand (base
        models, checkpoints without a deployment): they alone never start Serve."""
        s = self.settings
        default = Policy(
            s.serve_default_min_replicas,
            s.serve_default_max_replicas,
            s.serve_default_target_ongoing_requests,
        )
        with Session(self.engine) as session:
            repo = ServingRepository(session)
            explicit = {(d.tenant_id, d.model): Policy.of(d) for d in repo.deployments()}
            models = repo.live_models()
            checkpoints = repo.checkpoint_models()
            catalog = BaseModelRepository(session).catalog(self.catalog) if self.catalog else None
        apps: dict[str, tuple[ServeArgs, Policy]] = {}
        needed: set[str] = set()

        def add(route: Route, args: ServeArgs, policy: Policy) -> None:
            if route.app in apps:
                apps[route.app] = (apps[route.app][0], apps[route.app][1].union(policy))
            else:
                apps[route.app] = (args, policy)

        for model, job in models:
            route, args = route_of(model, job)
            add(route, args, explicit.get((model.tenant_id, model.id), default))
            needed.add(route.app)
        # A job's kept checkpoints answer like its model: a LoRA checkpoint shares its base
        # model's application; a full fine-tune's is an application of its own.
        for model, job in checkpoints:
            route, args = route_of(model, job)
            deployed = explicit.get((model.tenant_id, model.id))
            add(route, args, deployed or default)
            if deployed is not None:
                needed.add(route.app)
        # Every causal-LM base model answers inference too; at the default minimum of 0
        # replicas an application costs nothing until its first request.
        for entry in catalog.entries() if catalog else []:
            if "causal_lm" in entry.tasks:
                route, args = base_route(entry)
                if route.app not in apps:
                    apps[route.app] = (args, default)
        config = {
            "http_options": {"host": s.serve_host, "port": s.serve_port},
            "applications": [
                self._app_config(name, args, policy)
                for name, (args, policy) in sorted(apps.items())
            ],
        }
        return config, set(apps) - needed

    # ------------------------------------------------------------ applying

    def apply(self, force: bool = False, start: bool = False) -> bool:
        """Write the desired config to Serve if it changed (or `force`); True if written.

        Serve is started only when a fine-tuned model (or a deployed checkpoint) needs it,
        or when a request needs it (`start`: a base model or a checkpoint asked for); a
        config of on-demand applications alone leaves it down.
        """
        if self.backend is None:
            return False
        config, on_demand = self._desired()
        fingerprint = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        needed = any(app["name"] not in on_demand for app in config["applications"])
        with self._lock:
            if fingerprint == self._applied and not force:
                return False
            if not needed and self._applied is None and not force and not start:
                # Nothing to serve and nothing served by us: do not start Serve for it.
                return False
            self.backend.deploy_serve(config)
            self._applied = fingerprint
            self._apps = {app["name"] for app in config["applications"]}
            self._status_at = 0.0
        log.info("serve config applied: %d applications", len(self._apps))
        return True

    def apply_soon(self) -> None:
        """Apply in the background (after a change was committed); the periodic
        reconcile retries if Serve cannot be reached now."""

        def run() -> None:
            try:
                self.apply()
            except Exception:
                log.exception("applying the serve config failed; the reconciler retries")

        threading.Thread(target=run, name="tuneplane-serve-apply", daemon=True).start()

    def reconcile(self) -> None:
        """Periodic: re-apply when the database changed, or when Serve lost applications
        (a restarted head) that it should run."""
        if self.backend is None:
            return
        changed = self.apply()
        if not changed and self._apps:
            missing = self._apps - set(self.status(fresh=True))
            if missing:
                log.warning("Serve lacks applications %s; re-applying", sorted(missing))
                self.apply(force=True)
        # Deployments whose application now runs: `deployment.ready` (once each).
        announce_ready(self.engine, lambda m, j: route_of(m, j)[0].app, self.status)

    # ------------------------------------------------------------ status

    def status(self, fresh: bool = False) -> dict[str, ServeAppStatus]:
        if self.backend is None:
            return {}
        if fresh or time.monotonic() - self._status_at > STATUS_TTL_S:
            self._status = self.backend.serve_status()
            self._status_at = time.monotonic()
        return self._status

    async def ready(self, app: str) -> None:
        """Wait until `app` runs in Serve (applying the config first if it is new)."""
        if self.backend is None:
            raise ServiceUnavailable("Serving is not configured on this server (no Ray address).")
        if app in self._running:
            return
        if app not in self._apps:
            await asyncio.to_thread(self.apply, False, True)
        deadline = time.monotonic() + self.settings.serve_ready_timeout_s
        forced = False
        while True:
            status = (await asyncio.to_thread(self.status)).get(app)
            if status is not None and status.status == "RUNNING":
                self._running.add(app)
                return
            if status is not None and status.status == "DEPLOY_FAILED":
                raise ServiceUnavailable(
                    f"The model's server failed to start: {status.message[:500]}",
                    code="model_unavailable",
                )
            if status is None and not forced and app in self._apps:
                # Serve lost it (a restarted head): write the config again, once.
                await asyncio.to_thread(self.apply, True)
                forced = True
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    "The model's server is still starting; retry shortly.",
                    code="model_unavailable",
                    headers={"Retry-After": "10"},
                )
            await asyncio.sleep(0.25)

    def forget(self, app: str) -> None:
        """A request found `app` missing in Serve: the next `ready` re-checks it."""
        self._status_at = 0.0
        self._status.pop(app, None)
        self._running.discard(app)


class ServingLoop:
    """Reconciles Serve with the database every `interval_s` on its own thread. Every
    replica may run one: applying the same desired config twice changes nothing."""

    def __init__(self, manager: ServingManager, interval_s: float) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tuneplane-serving", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.manager.reconcile()
            except Exception:
                log.warning("serve reconcile failed; retrying", exc_info=True)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
