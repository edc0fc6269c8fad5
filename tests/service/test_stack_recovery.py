"""`tuneplane up` leaks nothing: a SIGKILLed one's Ray and Redis are ended by the next `up`
on its data dir, and a graceful stop during a running job leaves no job driver behind.

The fast tests drive the record and the process matching with `sleep` processes; the long
ones run `tuneplane up` itself as a user would, twice."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from service.stack import ChildProcess, free_port
from service.stack_records import (
    STACK_FILE,
    TAG_ENV,
    ChildRecord,
    StackInUse,
    StackRecord,
    end,
    end_leftovers,
    members,
    read_record,
    same_process,
    still_running,
    write_record,
)
from tests.factories import ADMIN, jsonl, prompt_completion_records
from tests.fixtures.app import ADMIN_KEY
from tests.fixtures.stack import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
LEFTOVERS = "found a stack left running by an earlier tuneplane up (pid {pid})"


def _dead_owner() -> tuple[int, float]:
    """A process id and start time of a process that has exited."""
    proc = subprocess.Popen(["true"])
    created = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, created


def _alive(pid_times: list[tuple[int, float]]) -> list[int]:
    return [pid for pid, created in pid_times if same_process(pid, created) is not None]


def _snapshot(record: StackRecord) -> list[tuple[int, float]]:
    return [(p.pid, p.create_time()) for c in record.children for p in members(c)]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "300"])
    yield proc
    proc.kill()
    proc.wait()


def test_record_round_trips_and_is_written_atomically(tmp_path: Path) -> None:
    record = StackRecord(
        1234, 5.25, [ChildRecord("ray-head", 99, 7.5, "t", "/tmp/tpray-x")], 6379, "a:1"
    )
    path = tmp_path / STACK_FILE
    write_record(path, record)
    assert read_record(path) == record
    assert [p.name for p in tmp_path.iterdir()] == [STACK_FILE]
    path.write_text("{not json")
    assert read_record(path) is None


def test_a_reused_pid_is_never_taken_for_the_recorded_process(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    created = psutil.Process(sleeper.pid).create_time()
    assert same_process(sleeper.pid, created) is not None
    # The same id with another start time: what a reused pid looks like.
    other = ChildRecord("redis", sleeper.pid, created - 3.0, "no-such-tag")
    assert same_process(other.pid, other.create_time) is None
    assert members(other) == []
    owner, owner_created = _dead_owner()
    write_record(tmp_path / STACK_FILE, StackRecord(owner, owner_created, [other]))
    end_leftovers(tmp_path)
    assert sleeper.poll() is None
    assert not (tmp_path / STACK_FILE).exists()


def test_a_live_owner_keeps_its_stack(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    created = psutil.Process(sleeper.pid).create_time()
    write_record(tmp_path / STACK_FILE, StackRecord(sleeper.pid, created, []))
    with pytest.raises(StackInUse, match=f"pid {sleeper.pid}"):
        end_leftovers(tmp_path)
    assert (tmp_path / STACK_FILE).exists()


def _orphaning_child(tmp_path: Path) -> tuple[ChildProcess, psutil.Process]:
    """A child whose own child moved to a session of its own, as Ray's job drivers do."""
    child = ChildProcess(
        "ray-head",
        ["sh", "-c", "setsid sleep 300 & exec sleep 301"],
        dict(os.environ),
        tmp_path / "child.log",
    )

    def detached() -> psutil.Process | None:
        for p in psutil.Process(child.proc.pid).children():
            if os.getsid(p.pid) == p.pid and p.cmdline()[-1:] == ["300"]:
                return p
        return None

    return child, wait_for(detached, 10, "the detached sleep", 0.05)


def test_leftovers_of_a_killed_stack_are_found_and_ended(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    child, detached = _orphaning_child(tmp_path)
    owner, owner_created = _dead_owner()
    write_record(tmp_path / STACK_FILE, StackRecord(owner, owner_created, [child.record()]))
    try:
        # Its group only: the detached one is orphaned, found by the tag in its environment.
        os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
        assert detached.is_running() and detached.environ()[TAG_ENV] == child.tag
        assert [p.pid for p in members(child.record())] == [detached.pid]
        with caplog.at_level(logging.WARNING, logger="service.stack_records"):
            end_leftovers(tmp_path, grace_s=2)
        assert still_running([detached]) == []
        assert LEFTOVERS.format(pid=owner) in caplog.text
        assert "ended 1 of its processes (ray-head: 1)" in caplog.text
        assert not (tmp_path / STACK_FILE).exists()
    finally:
        end([detached], 0)
        child.log.close()


def test_stopping_a_child_ends_what_left_its_session(tmp_path: Path) -> None:
    child, detached = _orphaning_child(tmp_path)
    try:
        child.stop(grace_s=2)
        assert child.proc.poll() is not None
        assert still_running([detached]) == []
    finally:
        end([detached], 0)


# The `tuneplane up` scenarios: each starts Ray (twice in the first).


class Up:
    """`tuneplane up` in a child process, as a user runs it."""

    def __init__(self, data_dir: Path, log: Path, models_dir: Path) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.data_dir = data_dir
        self.log_path = log
        # Not the test session's cluster, Redis or settings: its own, as on a fresh shell.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("TUNEPLANE_")
            and k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
        }
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            TUNEPLANE_ADMIN_KEY=ADMIN_KEY,
            TUNEPLANE_MODELS_DIR=str(models_dir),
            TUNEPLANE_SCHEDULER_INTERVAL_S="0.2",
            TUNEPLANE_MAX_AUTO_CPUS_PER_WORKER="1.0",
        )
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "up", "--data-dir", str(data_dir),
                 "--port", self.url.rsplit(":", 1)[1], "--num-cpus", "2"],
                cwd=REPO_ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_for(self._ready, 120, f"tuneplane up to be ready (log: {log})", 0.5)
        record = read_record(data_dir / STACK_FILE)
        assert record is not None and record.owner_pid == self.proc.pid
        self.record = record

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"tuneplane up exited: see {self.log_path}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=90)

    def cleanup(self) -> None:
        """Whatever a failed test left: nothing of it may outlive the test."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        end([p for c in self.record.children for p in members(c)], 2)


@pytest.fixture
def ups(tmp_path: Path) -> Iterator[list[Up]]:
    started: list[Up] = []
    yield started
    for up in started:
        up.cleanup()


@pytest.mark.long
def test_a_killed_up_is_cleaned_up_after_by_the_next(
    tmp_path: Path, tiny_models_dir: Path, ups: list[Up]
) -> None:
    data = tmp_path / "data"
    first = Up(data, tmp_path / "up1.log", tiny_models_dir)
    ups.append(first)
    assert {c.name for c in first.record.children} == {"redis", "ray-head"}
    first.proc.kill()
    first.proc.wait()
    # The precondition: `up` is gone, its Redis and Ray head (and Ray's processes) are not.
    left = _snapshot(first.record)
    for c in first.record.children:
        assert same_process(c.pid, c.create_time) is not None, c.name
    assert len(left) > 3

    second = Up(data, tmp_path / "up2.log", tiny_models_dir)
    ups.append(second)
    assert _alive(left) == []
    assert LEFTOVERS.format(pid=first.proc.pid) in second.log()

    running = _snapshot(second.record)
    assert second.terminate() == 0
    assert _alive(running) == []
    assert _snapshot(first.record) == [] and _snapshot(second.record) == []
    assert not (data / STACK_FILE).exists()


def _job_drivers(job_id: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "workers.run_job" in cmdline and job_id in cmdline:
            out.append(p)
    return out


@pytest.mark.long
def test_a_graceful_stop_during_a_job_leaves_no_job_driver(
    tmp_path: Path, tiny_models_dir: Path, ups: list[Up]
) -> None:
    up = Up(tmp_path / "data", tmp_path / "up.log", tiny_models_dir)
    ups.append(up)
    with httpx.Client(base_url=up.url, timeout=30) as http:
        r = http.post("/v1/admin/tenants", json={"name": "stopper"}, headers=ADMIN)
        assert r.status_code == 200, r.text
        key = {"Authorization": f"Bearer {r.json()['api_key']}"}
        r = http.post(
            "/v1/files",
            files={"file": ("t.jsonl", jsonl(prompt_completion_records(64)), "text/plain")},
            data={"purpose": "fine-tune"},
            headers=key,
        )
        assert r.status_code == 200, r.text
        # Long enough to be running whenever the stop comes.
        body = {
            "model": "tiny-gpt2",
            "training_file": r.json()["id"],
            "hyperparameters": {"n_epochs": 50, "batch_size": 4},
        }
        r = http.post("/v1/fine_tuning/jobs", json=body, headers=key)
        assert r.status_code == 200, r.text
        job_id = str(r.json()["id"])

        def running() -> bool:
            job = http.get(f"/v1/fine_tuning/jobs/{job_id}", headers=key).json()
            assert job["status"] in ("validating_files", "queued", "running"), job
            return job["status"] == "running"

        wait_for(running, 60, f"job {job_id} to run (log: {up.log_path})", 0.5)
    # `running` comes with the Ray job's submission; its driver may start a moment later.
    found = wait_for(lambda: _job_drivers(job_id), 60, "the job's workers.run_job process")
    drivers = [(p.pid, p.create_time()) for p in found]
    everything = _snapshot(up.record)
    assert set(drivers) <= set(everything)

    assert up.terminate() == 0
    assert _alive(drivers) == [] and _job_drivers(job_id) == []
    assert _alive(everything) == [] and _snapshot(up.record) == []
