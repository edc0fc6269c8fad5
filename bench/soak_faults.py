"""The soak's stack and its faults: PostgreSQL it can stop and start, a Redis it can wipe,
a TCP proxy that slows Redis down, a Ray head and a worker node it can kill, and the
control plane as a child process it can restart (armed with a crash point, or with the
storage layer's full-disk injection).

Each fault is one function; `FaultScheduler` runs them one after another while the
workload goes on, and records each one's window: from the moment it is injected to the
moment the stack answers again (readiness, and inference where Ray was hit) plus a grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from service.config import Settings
from service.stack import ChildProcess, RayHead, _nodes, free_port, start_ray_head, start_ray_worker
from tests.fixtures.postgres import _bin_dir
from tests.fixtures.stack import ControlPlaneProcess
from tests.service.reliability.harness import RedisProcess, kill9

# Seconds a fault's window stays open after the stack answers again: requests that were
# in flight (or backing off) at the recovery land inside it.
GRACE_S = 10.0


class Postgres:
    """A throwaway PostgreSQL (initdb + pg_ctl, as tests/fixtures/postgres.py), which the
    soak stops (`-m fast`) and starts again on the same port and data."""

    def __init__(self, root: Path) -> None:
        self.bindir = _bin_dir()
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        # initdb refuses to run as root: the server runs as the 'postgres' user then.
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(root, user="postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "tuneplane", "-A", "trust")
        self.start()
        import psycopg

        conninfo = f"host=127.0.0.1 port={self.port} user=tuneplane dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(b"CREATE DATABASE tuneplane")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://tuneplane@127.0.0.1:{self.port}/tuneplane"

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=tuneplane dbname=tuneplane"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.prefix, str(self.bindir / tool), *args], check=True, capture_output=True
        )

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200"
        )
        log = str(self.root / "postgres.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", log, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")


class SlowProxy:
    """A TCP proxy on 127.0.0.1 in front of Redis, in a thread of its own; while `delay_s`
    is above 0 every chunk Redis sends back waits that long. It dials Redis afresh for each
    connection, so it outlives Redis restarts on the same port."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.delay_s = 0.0
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port)
        )
        started.set()
        with contextlib.suppress(RuntimeError):
            self.loop.run_forever()
        server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, slow: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if slow and self.delay_s > 0:
                        await asyncio.sleep(self.delay_s)
                    dst.write(chunk)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_w, False), pipe(up_r, writer, True))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


class _Plane(ControlPlaneProcess):
    """A control plane that may take longer than the tests' 60 s to start on a loaded
    machine (it is given 180 s in all)."""

    def __init__(self, settings: Settings, port: int, log: Path) -> None:
        try:
            super().__init__(settings, port, log)
        except AssertionError:
            if self.proc.poll() is not None or not wait_until(self._ready, 120, 0.5):
                self.stop()
                raise


class _MayCrash(_Plane):
    """A control plane armed to crash, which may do so before it ever answers /readyz."""

    def _ready(self) -> bool:
        return self.proc.poll() is not None or super()._ready()


@dataclass
class Window:
    fault: str
    start: float
    end: float = 0.0
    note: str = ""


@dataclass
class Stack:
    """Everything the soak runs on, and the means to hurt each part."""

    root: Path
    settings: Settings
    postgres: Postgres
    redis: RedisProcess
    proxy: SlowProxy
    head: RayHead
    worker: ChildProcess
    ray_env: dict[str, str]
    ports: tuple[int, int]  # the Ray head's dashboard and GCS ports, kept across restarts
    port: int  # the control plane's, kept across restarts
    plane: ControlPlaneProcess | None = None
    planes_started: int = 0
    plane_started_at: float = 0.0
    workers_started: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_plane(self, **update: Any) -> None:
        """A control plane on the stack's settings and port; `update` arms its faults
        (fault_crash_at, fault_storage_full_after_bytes)."""
        self.planes_started += 1
        settings = self.settings.model_copy(
            update={"replica_id": f"soak-cp-{self.planes_started}", **update}
        )
        log = self.root / f"control-plane-{self.planes_started}.log"
        kind = _MayCrash if update.get("fault_crash_at") else _Plane
        self.plane = kind(settings, self.port, log)
        self.plane_started_at = time.monotonic()

    def stop_plane(self) -> None:
        if self.plane is not None:
            self.plane.stop()
            self.plane = None

    def start_head(self) -> None:
        self.head = start_ray_head(
            self.root,
            num_cpus=2,
            env=self.ray_env,
            extra_args=("--num-gpus=0",),
            dashboard_port=self.ports[0],
            gcs_port=self.ports[1],
        )

    def start_worker(self) -> None:
        self.workers_started += 1
        name = f"ray-node{self.workers_started}"
        self.worker = start_ray_worker(self.head, self.root, name, num_cpus=1, env=self.ray_env)

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self.stop_plane()
        for stop in (self.worker.stop, self.head.process.stop, self.redis.stop, self.proxy.close):
            with contextlib.suppress(Exception):
                stop()
        with contextlib.suppress(Exception):
            self.postgres.stop("immediate")


def wait_until(check: Callable[[], Any], timeout_s: float, interval_s: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return True
        time.sleep(interval_s)
    return False


# The soak's workload supplies these: something that makes the armed crash point be
# reached (a submit, a pause), and a check that inference answers.
Poke = Callable[[str], None]
Answers = Callable[[], bool]


def crash_at(stack: Stack, point: str, poke: Poke) -> str:
    """Restart the control plane armed at `point`; make work that reaches it; wait for the
    SIGKILL (or deliver one from outside when the point is not reached in time); start a
    plane on the same database and port."""
    stack.stop_plane()
    stack.start_plane(fault_crash_at=point)
    assert stack.plane is not None
    proc = stack.plane.proc
    if proc.poll() is None:
        with contextlib.suppress(Exception):
            poke(point)
    try:
        code = proc.wait(timeout=120)
        note = "killed itself" if code == -signal.SIGKILL else f"exited {code}"
    except subprocess.TimeoutExpired:
        stack.plane.kill9()
        note = "point not reached in 120 s: SIGKILL from outside"
    stack.stop_plane()
    stack.start_plane()
    return note


def redis_wipe(stack: Stack) -> str:
    stack.redis.kill9()
    stack.redis.wipe()
    stack.redis.start()
    return "SIGKILL, data dir removed, started empty"


def postgres_restart(stack: Stack) -> str:
    stack.postgres.stop("fast")
    time.sleep(3)
    stack.postgres.start()
    return "pg_ctl stop -m fast, 3 s down, start"


def slow_redis(stack: Stack, seconds: float = 30.0, delay_s: float = 0.2) -> str:
    stack.proxy.delay_s = delay_s
    time.sleep(seconds)
    stack.proxy.delay_s = 0.0
    return f"{delay_s * 1000:.0f} ms per reply chunk for {seconds:.0f} s"


def storage_full(stack: Stack, seconds: float = 25.0, after_bytes: int = 2048) -> str:
    """A control plane whose artifact store is full once it has written `after_bytes`
    (the storage layer's injection counts this process's writes): the tenants' uploads,
    a few hundred bytes each, pass for a moment and then meet ENOSPC. The workers write
    checkpoints to storage themselves, so training is not affected."""
    stack.stop_plane()
    stack.start_plane(fault_storage_full_after_bytes=after_bytes)
    time.sleep(seconds)
    stack.stop_plane()
    stack.start_plane()
    return f"control plane with ENOSPC after {after_bytes} bytes for {seconds:.0f} s"


def ray_worker_kill(stack: Stack) -> str:
    kill9(stack.worker)
    gone = wait_until(lambda: len(_nodes(stack.head.dashboard_url)) == 1, 90)
    stack.start_worker()
    return "worker node SIGKILLed" + ("" if gone else " (Ray still listed it after 90 s)")


def ray_head_restart(stack: Stack) -> str:
    # The head's GCS goes with it; the worker node's raylet does not survive that either.
    kill9(stack.head.process)
    kill9(stack.worker)
    stack.start_head()
    stack.start_worker()
    return "head (GCS, drivers, Serve) SIGKILLed, restarted at the same ports, node rejoined"


@dataclass
class FaultScheduler:
    """Runs the faults in order, the i-th no earlier than `offset + i * spacing` seconds
    after `t0` and never two at once, recording a window for each."""

    stack: Stack
    poke: Poke
    answers: Answers
    t0: float
    offset_s: float
    spacing_s: float
    # Only the faults whose names hold one of these (lower case); None: every fault.
    only: list[str] | None = None
    # The whole plan this many times over (a long soak meets each fault more than once).
    rounds: int = 1
    windows: list[Window] = field(default_factory=list)
    # One thread, kept until the soak ends, injects every fault: a child started there
    # with a parent-death signal (the Redis restarted by a fault) dies with its thread.
    thread: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))

    def plan(self) -> list[tuple[str, Callable[[], str]]]:
        s = self.stack
        return [
            (
                "cp kill -9 @dispatch.after_commit",
                lambda: crash_at(s, "dispatch.after_commit", self.poke),
            ),
            (
                "cp kill -9 @events.after_commit",
                lambda: crash_at(s, "events.after_commit", self.poke),
            ),
            ("disk full (ENOSPC)", lambda: storage_full(s)),
            (
                "cp kill -9 @pause.after_commit",
                lambda: crash_at(s, "pause.after_commit", self.poke),
            ),
            (
                "cp kill -9 @dispatch.after_submit",
                lambda: crash_at(s, "dispatch.after_submit", self.poke),
            ),
            ("Redis restart, data lost", lambda: redis_wipe(s)),
            ("PostgreSQL restart", lambda: postgres_restart(s)),
            ("Ray worker node kill", lambda: ray_worker_kill(s)),
            ("slow Redis", lambda: slow_redis(s)),
            ("Ray head restart", lambda: ray_head_restart(s)),
        ]

    async def run(self, stop_at: float, log: Callable[[str], None]) -> None:
        chosen = [
            (name, inject)
            for name, inject in self.plan() * self.rounds
            if self.only is None or any(o in name.lower() for o in self.only)
        ]
        for i, (name, inject) in enumerate(chosen):
            due = self.t0 + self.offset_s + i * self.spacing_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() > stop_at:
                self.windows.append(Window(name, time.monotonic(), time.monotonic(), "skipped"))
                continue
            window = Window(name, time.monotonic())
            self.windows.append(window)
            log(f"fault {i + 1}: {name} ...")
            try:
                window.note = await asyncio.get_running_loop().run_in_executor(self.thread, inject)
            except Exception as exc:  # the soak goes on; the table says it failed
                window.note = f"injection failed: {type(exc).__name__}: {exc}"
            hit_ray = name.startswith("Ray")
            await asyncio.to_thread(wait_until, self.stack.ready, 300)
            if hit_ray:  # Serve comes back with the cluster: wait for inference to answer
                await asyncio.to_thread(wait_until, self.answers, 300, 3.0)
            window.end = time.monotonic() + GRACE_S
            log(
                f"fault {i + 1}: {name}: {window.note}; recovered in "
                f"{window.end - GRACE_S - window.start:.0f} s"
            )
            await asyncio.sleep(GRACE_S)
