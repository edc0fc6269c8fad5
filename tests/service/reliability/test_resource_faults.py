"""A full disk, a database that went away and a Redis that is down or slow: clear errors
(507, or 503 with Retry-After, in OpenAI's shape), clear log lines, and nothing half done
(no partly written upload registered, no succeeded job whose model is missing)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import Session

from service import db
from service.config import Settings
from service.errors import install_error_handlers
from service.files.service import remove_unless_committed
from service.jobs.state import transition
from service.main import create_app
from service.models.status import JobStatus
from service.queue import FairQueue, queue_key
from service.scheduling.events import EventConsumer
from service.storage import ArtifactStore
from tests.factories import (
    TenantHandle,
    create_job,
    create_job_ok,
    jsonl,
    make_tenant,
    prompt_completion_records,
    upload,
    upload_ok,
)
from tests.fixtures.app import ADMIN_KEY
from tests.fixtures.postgres import _bin_dir, free_port
from tests.fixtures.redis_server import RedisServer
from tests.service.reliability.harness import RedisProcess
from tests.service.scheduling.conftest import FixedCluster, loop_parts
from workers.records import ResultData
from workers.report import EVENTS_STREAM, EventRecord
from workers.spec import MANIFEST_FILE

FILES = "/v1/files"
JOBS = "/v1/fine_tuning/jobs"


@pytest.fixture
def settings(settings: Settings, redis_server: RedisServer) -> Settings:
    # The session's Redis for the event stream and the queue (a test that stops Redis
    # starts its own); no CPU held back, so one FixedCluster CPU runs a job.
    return settings.model_copy(update={"redis_url": redis_server.url, "reserved_cpus": 0.0})


def _training_data(size: int) -> bytes:
    """A valid JSONL training file of at least `size` bytes."""
    line = jsonl(prompt_completion_records(1))
    return jsonl(prompt_completion_records(size // len(line) + 1))


def _assert_error(r: Any, status: int, code: str, retry_after: str | None) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", code)
    assert set(error) == {"message", "type", "param", "code"}
    assert r.headers.get("retry-after") == retry_after


def _stored_files(store_root: Path) -> list[Path]:
    return [p for p in store_root.rglob("*") if p.is_file() and "/files/" in p.as_posix()]


# -- a full disk -----------------------------------------------------------------------


def test_an_upload_that_fills_the_store_is_507_and_leaves_nothing(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    data = _training_data(3 * 1024 * 1024)  # three chunks: the first is written, then full
    full = settings.model_copy(
        update={"max_upload_bytes": 8 * 1024 * 1024, "fault_storage_full_after_bytes": 1536 * 1024}
    )
    store_root = Path(ArtifactStore(full.storage_uri).root)
    caplog.set_level(logging.INFO)
    with TestClient(create_app(full)) as client:
        t = make_tenant(client)
        r = upload(client, t, data)
        _assert_error(r, 507, "storage_full", "60")
        assert "storage" in r.json()["error"]["message"]
        # Nothing registered, no blob (partial or whole) left behind.
        assert client.get(FILES, headers=t.headers).json()["data"] == []
        assert _stored_files(store_root) == []
        # Once full the store stays full: a small upload is refused the same way.
        _assert_error(upload(client, t, _training_data(100)), 507, "storage_full", "60")
        assert _stored_files(store_root) == []
        # The rest of the API still answers.
        assert client.get(FILES, headers=t.headers).status_code == 200
    full_lines = [r for r in caplog.records if "storage full" in r.getMessage()]
    assert full_lines and all(r.levelno == logging.ERROR for r in full_lines)
    assert "POST /v1/files" in full_lines[0].getMessage()

    # The window is over (the control plane restarted without the fault): uploads work.
    healthy = settings.model_copy(update={"max_upload_bytes": 8 * 1024 * 1024})
    with TestClient(create_app(healthy)) as client:
        file_id = upload_ok(client, t, data)
        assert [f["id"] for f in client.get(FILES, headers=t.headers).json()["data"]] == [file_id]
        assert client.get(f"{FILES}/{file_id}/content", headers=t.headers).content == data
        assert [p.name for p in _stored_files(store_root)] == [f"{file_id}.jsonl"]


def test_the_fault_setting_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TUNEPLANE_FAULT_STORAGE_FULL_AFTER_BYTES", "4096")
    assert Settings().fault_storage_full_after_bytes == 4096


def test_a_full_disk_or_quota_anywhere_answers_507() -> None:
    # Any path that writes (a model export's scratch folder, say) meets the same handler.
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/full/{code}")
    def full(code: int) -> None:
        raise OSError(code, os.strerror(code))

    with TestClient(app, raise_server_exceptions=False) as client:
        _assert_error(client.get(f"/v1/full/{errno.ENOSPC}"), 507, "storage_full", "60")
        _assert_error(client.get(f"/v1/full/{errno.EDQUOT}"), 507, "storage_full", "60")
        other = client.get(f"/v1/full/{errno.EACCES}")
        assert other.status_code == 500 and other.json()["error"]["code"] is None


def test_an_upload_whose_row_never_commits_takes_its_blob_with_it(tmp_path: Path) -> None:
    """The blob is written before its row: a transaction that rolls back (the database
    went away at the commit, say) removes it; one that commits keeps it; a savepoint
    rolled back inside the request decides nothing."""
    store = ArtifactStore((tmp_path / "store").as_uri())
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    for outcome in ("rollback", "commit"):
        key = f"t/files/{outcome}.jsonl"
        store.write_bytes(key, b"{}\n")
        with db.new_session(engine) as session:
            session.execute(text("SELECT 1"))
            remove_unless_committed(session, store, key)
            with session.begin_nested() as savepoint:
                savepoint.rollback()
            assert store.exists(key)
            getattr(session, outcome)()
        assert store.exists(key) == (outcome == "commit")
    engine.dispose()


_TMPFS_SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys
    from pathlib import Path
    from fastapi.testclient import TestClient
    from service.config import Settings
    from service.main import create_app

    work, disk = Path(sys.argv[1]), Path(sys.argv[2])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    settings = Settings(
        data_dir=work, storage_uri=disk.as_uri(), admin_key=sys.argv[3],
        max_upload_bytes=8 * 1024 * 1024,
    )
    admin = {"Authorization": f"Bearer {sys.argv[3]}"}
    out = {}
    with TestClient(create_app(settings)) as c:
        t = c.post("/v1/admin/tenants", json={"name": "disk"}, headers=admin).json()
        h = {"Authorization": f"Bearer {t['api_key']}"}
        line = b'{"prompt": "a", "completion": " b"}\\n'
        big = c.post("/v1/files", files={"file": ("a.jsonl", line * 80000)},
                     data={"purpose": "fine-tune"}, headers=h)
        out["big"] = [big.status_code, big.json(), big.headers.get("retry-after")]
        out["left"] = [str(p) for p in disk.rglob("*") if p.is_file()]
        out["listed"] = c.get("/v1/files", headers=h).json()["data"]
        small = c.post("/v1/files", files={"file": ("b.jsonl", line * 10)},
                       data={"purpose": "fine-tune"}, headers=h)
        out["small"] = small.status_code
        got = c.get(f"/v1/files/{small.json()['id']}/content", headers=h)
        out["content"] = got.content.decode()
    print("RESULT " + json.dumps(out))
    """
)


def test_a_real_full_disk_under_the_store(tmp_path: Path) -> None:
    """A 1 MiB tmpfs as the artifact store, mounted in a mount namespace of the test's own
    (the machine's mounts are untouched); skipped where namespaces cannot be made."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip("no unshare / user namespaces here: the injected fault covers this")
    disk = tmp_path / "disk"
    disk.mkdir()
    proc = subprocess.run(
        [
            "unshare",
            "-rm",
            sys.executable,
            "-c",
            _TMPFS_SCRIPT,
            str(tmp_path / "data"),
            str(disk),
            ADMIN_KEY,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[3],
    )
    results = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 and "mount" in proc.stderr and not results:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr[-300:]}")
    assert proc.returncode == 0 and results, proc.stderr[-3000:]
    import json

    out = json.loads(results[0].removeprefix("RESULT "))
    status, body, retry_after = out["big"]
    assert (status, body["error"]["code"], retry_after) == (507, "storage_full", "60")
    assert out["left"] == [] and out["listed"] == []
    assert out["small"] == 200
    assert out["content"] == '{"prompt": "a", "completion": " b"}\n' * 10
    assert "storage full" in proc.stderr


# -- the database goes away ------------------------------------------------------------


class OwnPostgres:
    """A PostgreSQL server of the test's own (the session's is shared and must keep
    running), stopped and started again on the same port."""

    def __init__(self) -> None:
        self.bindir = _bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="tuneplane-pg-down-"))
        self.data = self.root / "data"
        self.prefix: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.root, user="postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-U", "tuneplane", "-A", "trust")
        self.start()
        self._psql("CREATE DATABASE tp")
        self.url = f"postgresql+psycopg://tuneplane@127.0.0.1:{self.port}/tp"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.prefix, str(self.bindir / tool), *args], check=True, capture_output=True
        )

    def _psql(self, sql: str) -> None:
        import psycopg

        conninfo = f"host=127.0.0.1 port={self.port} user=tuneplane dbname=postgres"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(sql.encode())

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "start")  # fmt: skip

    def stop(self) -> None:
        # "fast": the server closes every connection and goes, as a restart or failover does.
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            [
                *self.prefix,
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres()
    try:
        yield server
    finally:
        server.remove()


def test_postgresql_down_answers_503_and_the_service_recovers(
    own_postgres: OwnPostgres, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=own_postgres.url,
                        admin_key=ADMIN_KEY)  # fmt: skip
    caplog.set_level(logging.INFO)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        t = make_tenant(client, "pgdown")
        file_id = upload_ok(client, t)
        assert client.get("/readyz").status_code == 200

        own_postgres.stop()
        _assert_error(client.get(FILES, headers=t.headers), 503, "database_unavailable", "5")
        r = client.post(JOBS, json={"model": "tiny-gpt2", "training_file": file_id},
                        headers=t.headers)  # fmt: skip
        _assert_error(r, 503, "database_unavailable", "5")
        _assert_error(upload(client, t), 503, "database_unavailable", "5")
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"].startswith("error:")
        lines = [r for r in caplog.records if "database unavailable" in r.getMessage()]
        assert len(lines) >= 3 and all(r.levelno == logging.ERROR for r in lines)
        # One line each, naming the cause: no traceback per request.
        assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
        assert not [r for r in caplog.records if r.getMessage() == "unhandled error"]

        own_postgres.start()
        assert client.get("/readyz").status_code == 200
        assert [f["id"] for f in client.get(FILES, headers=t.headers).json()["data"]] == [file_id]
        job = create_job_ok(client, t, training_file=file_id)
        assert job["status"] == "queued"


# -- Redis is down or slow -------------------------------------------------------------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", durable=False)
    try:
        yield server
    finally:
        if server.proc is not None and server.proc.poll() is None:
            os.kill(server.proc.pid, signal.SIGCONT)  # in case a test left it stopped
        server.stop()


def test_a_submit_while_redis_is_slow_or_down_is_stored_and_queued_once_it_is_back(
    settings: Settings, own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """The database is the truth and Redis only its index: a submit while Redis is slow
    (it never answers: the client's socket timeout) or away is accepted (the job is
    stored `queued`, never a 500), and the reconciler queues it once Redis is back."""
    app = create_app(settings.model_copy(update={"redis_url": own_redis.url}), run_loops=False)
    assert own_redis.proc is not None
    caplog.set_level(logging.INFO)
    with TestClient(app) as client:
        t = make_tenant(client, "redisdown")
        file_id = upload_ok(client, t)
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            slow = create_job(client, t, training_file=file_id)
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        assert slow.status_code == 200, slow.text
        assert any("could not enqueue" in r.getMessage() for r in caplog.records)

        own_redis.kill9()
        r = create_job(client, t, training_file=file_id)
        assert r.status_code == 200, r.text
        queued = {slow.json()["id"], r.json()["id"]}
        for job_id in queued:
            assert client.get(f"{JOBS}/{job_id}", headers=t.headers).json()["status"] == "queued"
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["redis"].startswith("error:")
        # A cancel needs no Redis either.
        other = create_job_ok(client, t, training_file=file_id)["id"]
        cancel = client.post(f"{JOBS}/{other}/cancel", headers=t.headers)
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"

        own_redis.start()
        queue = FairQueue(app.state.redis)
        assert queue.r.zrange(queue_key(t.id), 0, -1) == []  # Redis came back empty
        _, reconciler = loop_parts(app, queue, FixedCluster())
        reconciler.run_once()
        assert set(queue.r.zrange(queue_key(t.id), 0, -1)) == queued
        assert client.get("/readyz").status_code == 200


def test_redis_down_or_slow_where_a_request_needs_it_is_503_not_500(
    own_redis: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A request that must reach Redis: refused connections (down) and socket timeouts
    (slow: the server is stopped with SIGSTOP, so it accepts and never answers)."""
    client_of_redis = redis.Redis.from_url(own_redis.url, socket_timeout=0.5)
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/v1/needs-redis")
    def needs_redis() -> dict[str, bool]:
        return {"pong": bool(client_of_redis.ping())}

    assert own_redis.proc is not None
    caplog.set_level(logging.INFO)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/v1/needs-redis").json() == {"pong": True}
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        try:
            client_of_redis.connection_pool.disconnect()
            _assert_error(client.get("/v1/needs-redis"), 503, "queue_unavailable", "5")
        finally:
            os.kill(own_redis.proc.pid, signal.SIGCONT)
        own_redis.kill9()
        _assert_error(client.get("/v1/needs-redis"), 503, "queue_unavailable", "5")
    lines = [r for r in caplog.records if "queue unavailable" in r.getMessage()]
    assert len(lines) == 2 and "TimeoutError" in lines[0].getMessage()
    assert "ConnectionError" in lines[1].getMessage()


# -- never a succeeded job whose model is missing ---------------------------------------


def _running_job(client: TestClient, app: FastAPI, t: TenantHandle) -> str:
    job_id = str(create_job_ok(client, t)["id"])
    with Session(app.state.engine) as s:
        assert transition(s, job_id, JobStatus.RUNNING)
        s.commit()
    return job_id


def _publish(folder: Path, *, manifest: bool = True, weights: bool = True) -> str:
    folder.mkdir(parents=True)
    if manifest:
        (folder / MANIFEST_FILE).write_text('{"metrics": {}}')
    if weights:
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 64)
    (folder / "adapter_config.json").write_text("{}")
    return folder.as_uri()


def _send_result(r: redis.Redis, job_id: str, tenant_id: str, artifact_uri: str) -> None:
    data = ResultData(
        artifact_uri=artifact_uri, adapter="lora", trained_tokens=10, steps=1, metrics={}
    ).event_data()
    record = EventRecord(job_id=job_id, tenant_id=tenant_id, type="result", data=data)
    r.xadd(EVENTS_STREAM, record.stream_fields())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("published", "why"),
    [
        (None, "its folder does not exist"),
        ({"manifest": True, "weights": False}, "its weights are missing"),
        ({"manifest": False, "weights": True}, "manifest"),
    ],
)
def test_a_result_whose_model_is_missing_fails_the_job_and_registers_nothing(
    client: TestClient,
    app: FastAPI,
    redis_client: redis.Redis,
    tmp_path: Path,
    published: dict[str, bool] | None,
    why: str,
) -> None:
    t = make_tenant(client)
    job_id = _running_job(client, app, t)
    folder = tmp_path / "published" / "model"
    uri = folder.as_uri() if published is None else _publish(folder, **published)
    _send_result(redis_client, job_id, t.id, uri)
    EventConsumer(app.state.engine, redis_client, f"cp-{job_id}", "r").poll(block_ms=100)

    job = client.get(f"{JOBS}/{job_id}", headers=t.headers).json()
    assert job["status"] == "failed"
    assert job["fine_tuned_model"] is None
    assert job["error"]["code"] == "model_missing" and why in job["error"]["message"]
    models = client.get("/v1/models", headers=t.headers).json()["data"]
    assert [m["id"] for m in models if m["id"].startswith("ft:")] == []


def test_a_result_whose_model_is_there_succeeds(
    client: TestClient, app: FastAPI, redis_client: redis.Redis, tmp_path: Path
) -> None:
    t = make_tenant(client)
    job_id = _running_job(client, app, t)
    _send_result(redis_client, job_id, t.id, _publish(tmp_path / "model"))
    EventConsumer(app.state.engine, redis_client, f"cp-{job_id}", "r").poll(block_ms=100)
    job = client.get(f"{JOBS}/{job_id}", headers=t.headers).json()
    assert job["status"] == "succeeded", job
    assert client.get(f"/v1/models/{job['fine_tuned_model']}", headers=t.headers).status_code == 200


def test_a_recovered_result_without_weights_fails_the_job(
    client: TestClient, app: FastAPI, redis_client: redis.Redis
) -> None:
    """The reconciler's path to success (the result event was lost; the manifest the
    worker published is read instead) checks the model the same way."""
    queue = FairQueue(redis_client)
    cluster = FixedCluster()
    t = make_tenant(client)
    job_id = create_job_ok(client, t)["id"]
    sched, reconciler = loop_parts(app, queue, cluster)
    sched.tick()
    app.state.store.write_bytes(f"{t.id}/jobs/{job_id}/model/{MANIFEST_FILE}", b'{"metrics": {}}')
    # The run's other events are stored: nothing is on its way, so the result is lost.
    EventConsumer(app.state.engine, redis_client, "control-plane", "r").poll(block_ms=100)
    cluster.states[job_id] = "SUCCEEDED"
    reconciler.run_once()
    job = client.get(f"{JOBS}/{job_id}", headers=t.headers).json()
    assert (job["status"], job["error"]["code"]) == ("failed", "model_missing"), job
    assert job["fine_tuned_model"] is None
