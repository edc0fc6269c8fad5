"""The control plane's background loops, one thread each: scheduler, events, reconciler.

Every replica consumes events (a shared consumer group splits them); only the leader
schedules and reconciles. Each loop survives errors (Redis or Ray away for a while) and
simply tries again on its next turn.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import Engine

from service.config import Settings
from service.queue import FairQueue, new_token
from service.ray_backend import ComputeBackend, RayJobsBackend, ServeBackend
from service.scheduling.events import EventConsumer
from service.scheduling.reconciler import Reconciler
from service.scheduling.scheduler import Dispatcher, Scheduler
from service.storage import ArtifactStore

log = logging.getLogger(__name__)
# How often a loop's error that keeps repeating is logged again.
REPEAT_LOG_S = 60.0


class ControlLoops:
    def __init__(
        self,
        engine: Engine,
        queue: FairQueue,
        backend: ComputeBackend,
        store: ArtifactStore,
        settings: Settings,
        serving: ServeBackend | None = None,
    ) -> None:
        self.settings = settings
        self.dispatcher = Dispatcher(engine, backend, queue, store, settings)
        if serving is None and isinstance(backend, RayJobsBackend):
            serving = backend  # Ray's Serve beside its jobs, as `service.main` pairs them
        self.scheduler = Scheduler(
            engine, queue, backend, self.dispatcher, settings, new_token(), serving
        )
        self.reconciler = Reconciler(engine, queue, backend, self.dispatcher, settings)
        self.events = EventConsumer(
            engine,
            queue.r,
            settings.events_group,
            settings.replica_id,
            reclaim_idle_ms=int(settings.events_reclaim_idle_s * 1000),
            crash_at=settings.fault_crash_at,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        s = self.settings
        self._spawn("scheduler", self.scheduler.tick, s.scheduler_interval_s)
        self._spawn("reconciler", self._reconcile, s.reconcile_interval_s)
        self._spawn("events", lambda: self.events.poll(block_ms=500), 0.0)

    def _reconcile(self) -> None:
        if self.scheduler.is_leader:
            self.reconciler.run_once()

    def _spawn(self, name: str, step: Callable[[], object], interval: float) -> None:
        def loop() -> None:
            run_every(name, step, interval, self._stop)

        thread = threading.Thread(target=loop, name=f"tuneplane-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        try:
            self.scheduler.resign()
        except Exception:
            log.warning("could not release the scheduler lock; it expires by itself")


def run_every(
    name: str, step: Callable[[], object], interval: float, stop: threading.Event
) -> None:
    """Run `step` every `interval` seconds until `stop`, surviving its errors. An error that
    repeats (a full disk, a database away for minutes) is logged with its traceback once a
    minute, not on every turn."""
    last: tuple[str, float] | None = None
    while not stop.is_set():
        try:
            step()
            last = None
        except Exception as exc:
            what, now = f"{type(exc).__name__}: {exc}", time.monotonic()
            if last is None or last[0] != what or now - last[1] >= REPEAT_LOG_S:
                log.exception("%s loop step failed; retrying", name)
                last = (what, now)
            stop.wait(1.0)
        if interval:
            stop.wait(interval)
