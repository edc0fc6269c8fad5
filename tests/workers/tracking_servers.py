"""Real experiment trackers for the tracker tests: an `mlflow server` on 127.0.0.1 (from the
Makefile's own venv for it, `.venv/mlflow-server`), MLflow's REST API to read a run back,
and a reader of the run file W&B writes in offline mode."""

from __future__ import annotations

import json
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.stack import free_port
from tests.fixtures.redis_server import _die_with_parent
from tests.fixtures.stack import wait_for

MLFLOW_SERVER = Path(__file__).resolve().parents[2] / ".venv" / "mlflow-server" / "bin" / "mlflow"


@dataclass(frozen=True)
class MlflowServer:
    url: str
    log: Path

    def api(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        r = httpx.request(method, f"{self.url}/api/2.0/mlflow/{path}", timeout=30, **kwargs)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def runs(self, experiment: str) -> list[dict[str, Any]]:
        found = self.api("GET", "experiments/get-by-name", params={"experiment_name": experiment})
        runs = self.api(
            "POST",
            "runs/search",
            json={"experiment_ids": [found["experiment"]["experiment_id"]], "max_results": 100},
        )
        return list(runs.get("runs", []))

    def history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        got = self.api(
            "GET", "metrics/get-history", params={"run_id": run_id, "metric_key": metric}
        )
        return sorted((int(m["step"]), float(m["value"])) for m in got.get("metrics", []))


def params_of(run: dict[str, Any]) -> dict[str, str]:
    return {p["key"]: p["value"] for p in run["data"].get("params", [])}


def tags_of(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow tracking server with a SQLite store, for the module's tests."""
    if not MLFLOW_SERVER.exists():
        raise AssertionError(f"{MLFLOW_SERVER} is missing: run `make setup` (mlflow-server)")
    home = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    log = home / "server.log"
    args = [str(MLFLOW_SERVER), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
            "--default-artifact-root", str(home / "artifacts"), "--workers", "1"]  # fmt: skip
    with log.open("ab") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )
    server = MlflowServer(f"http://127.0.0.1:{port}", log)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited: see {log}")
        try:
            return httpx.get(f"{server.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_for(up, 120, "the MLflow server", 0.3)
        # Its store is set up on the first request: pay for it here, not in a job.
        server.api("POST", "experiments/search", json={"max_results": 1})
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


# ---------------------------------------------------------------------------- W&B

WANDB_BLOCK = 32 * 1024
WANDB_HEADER = 7  # ":W&B", a 2-byte magic and a version byte


def wandb_records(run_file: Path) -> list[tuple[str, Any]]:
    """The records of a W&B run file (`run-<id>.wandb`): LevelDB's log format, a block of
    32 KiB holding records of (crc32, length, kind, data), a protobuf `Record` each."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B run file"
    out: list[tuple[str, Any]] = []
    pos, pending = WANDB_HEADER, b""
    while pos + 7 <= len(data):
        left = WANDB_BLOCK - pos % WANDB_BLOCK
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos : pos + length], pos + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a whole record, or the last part of one
            record: Any = pb.Record()  # type: ignore[attr-defined]  # generated protobuf
            record.ParseFromString(pending)
            which = record.WhichOneof("record_type")
            out.append((str(which), getattr(record, str(which))))
            pending = b""
    return out


@dataclass(frozen=True)
class WandbRun:
    directory: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    tags: list[str]
    project: str
    run_id: str


def _has_exit_record(run_file: Path) -> bool:
    if not run_file.is_file() or run_file.read_bytes()[:4] != b":W&B":
        return False
    return any(kind == "exit" for kind, _ in wandb_records(run_file))


def wandb_run(wandb_dir: Path, run_id: str) -> WandbRun:
    """The offline run `run_id` under WANDB_DIR: its config, history rows and summary."""
    dirs = sorted((wandb_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert dirs, f"no offline run {run_id} under {wandb_dir}: {list(wandb_dir.rglob('*'))[:20]}"
    directory = dirs[-1]
    run_file = directory / f"run-{run_id}.wandb"
    # W&B's service writes the file on its own; once in `make test` a run read right after
    # wandb.finish() had no project in it at all. Read it once its exit record is in.
    deadline = time.monotonic() + 30
    while not _has_exit_record(run_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    tags: list[str] = []
    project = ""
    for kind, record in wandb_records(run_file):
        if kind == "run":
            # A later run record (an update written under load) may leave these empty.
            project = record.project or project
            tags = list(record.tags) or tags
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.update})
        elif kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                            for i in record.item})  # fmt: skip
        elif kind == "summary":
            summary.update({"/".join(u.nested_key) or u.key: json.loads(u.value_json)
                            for u in record.update})  # fmt: skip
    return WandbRun(directory, config, history, summary, tags, project, run_id)
