"""What an embedded stack started, kept in its data dir, and how the processes of a started
child are found and ended.

`tuneplane up` starts its children in sessions of their own, so a SIGKILL of `up` leaves
them running. The record (`<data_dir>/stack.json`) names each child by process id and
start time, so the next `up` on that dir ends what is left and never a process that merely
got a reused id. A child's processes are those provably its own: the child itself, its
process group and session while it lives (their ids cannot be reused while it does), every
descendant, and any process whose environment carries the child's tag (Ray's workers and
job drivers inherit it, even those in sessions of their own or orphaned) or whose command
line names its marker (Ray's temp dir).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

STACK_FILE = "stack.json"
# In the environment of every child and so of everything it starts.
TAG_ENV = "TUNEPLANE_STACK_TAG"
# Start times are in clock ticks (10 ms); another process under the same id starts later.
_SAME_START_S = 0.005


def new_tag() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class ChildRecord:
    name: str
    pid: int
    create_time: float
    tag: str
    marker: str | None = None


@dataclass
class StackRecord:
    owner_pid: int
    owner_create_time: float
    children: list[ChildRecord] = field(default_factory=list)
    redis_port: int | None = None
    ray_gcs_address: str | None = None

    @classmethod
    def for_this_process(cls) -> StackRecord:
        return cls(os.getpid(), psutil.Process().create_time())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackRecord:
        data = json.loads(text)
        children = [ChildRecord(**c) for c in data.pop("children")]
        return cls(children=children, **data)


def read_record(path: Path) -> StackRecord | None:
    try:
        return StackRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        # Written atomically, so only a hand edit gets here: nothing in it can be trusted.
        log.warning("ignoring unreadable stack record %s: %s", path, exc)
        return None


def write_record(path: Path, record: StackRecord) -> None:
    """Atomically: a crash mid-write must not leave a record the next run cannot read."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(record.to_json())
    os.replace(tmp, path)


class StackRecorder:
    """The record of one running stack, rewritten as each child starts."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record = StackRecord.for_this_process()
        write_record(path, self.record)

    def add(self, child: ChildRecord) -> None:
        self.record.children.append(child)
        write_record(self.path, self.record)

    def note(self, redis_port: int | None = None, ray_gcs_address: str | None = None) -> None:
        if redis_port is not None:
            self.record.redis_port = redis_port
        if ray_gcs_address is not None:
            self.record.ray_gcs_address = ray_gcs_address
        write_record(self.path, self.record)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The process `pid` if it is still the one that started at `create_time`."""
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - create_time) > _SAME_START_S:
            return None
        if p.status() == psutil.STATUS_ZOMBIE:
            return None
        return p
    except psutil.Error:
        return None


def _ids(p: psutil.Process) -> tuple[int, int]:
    try:
        return os.getpgid(p.pid), os.getsid(p.pid)
    except OSError:
        return -1, -1


def members(child: ChildRecord) -> list[psutil.Process]:
    """The live processes provably `child`'s (see the module's doc), the child included."""
    me = os.getpid()
    table: dict[int, psutil.Process] = {}
    parent: dict[int, int] = {}
    proven: set[int] = set()
    leader = same_process(child.pid, child.create_time)
    for p in psutil.process_iter(["ppid", "cmdline", "environ", "status"]):
        if p.pid == me or p.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        table[p.pid] = p
        parent[p.pid] = p.info["ppid"] or 0
        environ = p.info["environ"] or {}
        cmdline = p.info["cmdline"] or []
        tagged = environ.get(TAG_ENV) == child.tag
        if tagged or (child.marker and any(child.marker in part for part in cmdline)):
            proven.add(p.pid)
        elif leader is not None and child.pid in _ids(p):
            # While the leader lives its id cannot be reused as a group or session id.
            proven.add(p.pid)
    if leader is not None:
        proven.add(leader.pid)
        table.setdefault(leader.pid, leader)
    # Descendants, however many levels down (a pid's parent is always listed before it
    # may be, so repeat until nothing is added).
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if pid not in proven and ppid in proven:
                proven.add(pid)
                grew = True
    # psutil checks create_time before each signal: a process found here and later
    # replaced under the same id is not signalled.
    return [table[pid] for pid in sorted(proven) if pid in table]


def still_running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def end(procs: list[psutil.Process], grace_s: float, signalled: bool = False) -> None:
    """SIGTERM (unless `signalled` already), up to `grace_s` to exit, then SIGKILL."""
    if not signalled:
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.terminate()
    deadline = time.monotonic() + grace_s
    while still_running(procs) and time.monotonic() < deadline:
        time.sleep(0.2)
    for p in still_running(procs):
        with contextlib.suppress(psutil.Error):
            p.kill()
    deadline = time.monotonic() + 5
    while still_running(procs) and time.monotonic() < deadline:
        time.sleep(0.1)


def end_leftovers(data_dir: Path, grace_s: float = 5.0) -> None:
    """End what a stack on `data_dir` left running when it did not stop (SIGKILL, a
    crash, a lost machine session), and say so; refuse if that stack is still running."""
    path = data_dir / STACK_FILE
    old = read_record(path)
    if old is None:
        return
    owner = same_process(old.owner_pid, old.owner_create_time)
    if owner is not None and owner.pid != os.getpid():
        raise StackInUse(
            f"a tuneplane up (pid {old.owner_pid}) is running on {data_dir}; stop it first"
        )
    found = {c.name: members(c) for c in old.children}
    every = [p for procs in found.values() for p in procs]
    end(every, grace_s)
    if every:
        counts = ", ".join(f"{name}: {len(procs)}" for name, procs in found.items() if procs)
        log.warning(
            "found a stack left running by an earlier tuneplane up (pid %d) that did not "
            "stop: ended %d of its processes (%s)",
            old.owner_pid,
            len(every),
            counts,
        )
    else:
        log.info(
            "the stack of an earlier tuneplane up (pid %d) left nothing running", old.owner_pid
        )
    path.unlink(missing_ok=True)


class StackInUse(RuntimeError):
    """Another live `tuneplane up` owns the data dir."""
