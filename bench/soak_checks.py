"""What the soak records, and the checks it runs on the record at the end.

Each check is a function returning a `Check`: its name, whether it passed, and a short
detail (counts, and the first offenders by id). They read the API (as the tenants), the
database (PostgreSQL, read-only: row counts and storage keys), Ray's state API and the
artifact store's directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.soak_faults import Window
from service.ray_backend import RayJobsBackend, submission_id
from tests.service.reliability.harness import TERMINAL, starts, transitions

# Rows one of the soak's jobs may hold (its runs are at most a few hundred steps).
MAX_EVENT_ROWS = 3000
MAX_TRIAL_ROWS = 16
# Retention keeps the last K (2 unless the job says) and the best one.
DEFAULT_KEEP = 2
# Redis' used_memory may not pass this at any sample.
MAX_REDIS_BYTES = 64 * 1024 * 1024
RSS_GROWTH = 0.15
# Actor classes Serve keeps for itself (controller, proxies, replicas of live apps).
SERVE_ACTORS = ("ServeController", "ProxyActor", "ServeReplica")
# Ray Data's per-cluster singletons (detached, named: one for every job there will be).
RAY_SINGLETONS = ("_StatsActor", "_AutoscalingCoordinatorActor")
# What a job's processes are called ("ray::<class>") besides its driver's command line.
JOB_PROCESSES = ("Train", "Trainable", "Tune", "_Inner")


@dataclass
class Request:
    id: int
    kind: str
    tenant: str
    start: float
    end: float = 0.0
    status: int | None = None  # None: a transport error (no answer)
    error: str = ""
    retry_of: int | None = None  # the first attempt's id
    # For the first attempt: how the call ended after its retries (its last answer).
    final_status: int | None = None


@dataclass
class JobRecord:
    id: str
    tenant: str
    kind: str
    submitted_at: float
    keep: int = DEFAULT_KEEP


@dataclass
class Upload:
    file_id: str
    tenant: str
    sha256: str
    deleted: bool = False


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Record:
    requests: list[Request] = field(default_factory=list)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    uploads: dict[str, Upload] = field(default_factory=dict)
    deleted_models: set[str] = field(default_factory=set)
    windows: list[Window] = field(default_factory=list)
    # (monotonic time, control plane number, RSS bytes)
    rss: list[tuple[float, int, int]] = field(default_factory=list)
    redis_bytes: list[int] = field(default_factory=list)


def _first(items: Iterable[str], n: int = 4) -> str:
    items = list(items)
    more = f" (+{len(items) - n})" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def events_of(http: httpx.Client, headers: dict[str, str], job_id: str) -> list[dict[str, Any]]:
    """Every event of the job, oldest first (the API pages newest first)."""
    out: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, **({"after": after} if after else {})}
        r = http.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params, headers=headers)
        r.raise_for_status()
        page = r.json()
        out += page["data"]
        if not page["has_more"]:
            return list(reversed(out))
        after = page["data"][-1]["id"]


def jobs_ended_once(
    rec: Record,
    http: httpx.Client,
    headers: dict[str, dict[str, str]],
    ray: RayJobsBackend,
    events: dict[str, list[dict[str, Any]]],
) -> Check:
    """Every accepted job is terminal, with one terminal transition and at most one result
    (one for a success), each attempt started once, and Ray ran no submission of it that
    the database did not start (no job ran twice behind its back)."""
    bad: list[str] = []
    statuses: Counter[str] = Counter()
    for job in rec.jobs.values():
        got = http.get(f"/v1/fine_tuning/jobs/{job.id}", headers=headers[job.tenant]).json()
        status = got.get("status", "?")
        statuses[status] += 1
        evs = events[job.id]
        if status not in TERMINAL:
            bad.append(f"{job.id} {status}")
            continue
        ends = sum(len(transitions(evs, s)) for s in TERMINAL)
        results = [e for e in evs if (e.get("data") or {}).get("kind") == "result"]
        attempts = starts(evs)
        if ends != 1 or len(results) > 1 or (status == "succeeded" and len(results) != 1):
            bad.append(f"{job.id} ends={ends} results={len(results)}")
        if len(attempts) != len(set(attempts)):
            bad.append(f"{job.id} attempts {attempts}")
        # Every submission Ray knows is an attempt the database started (a pause ends a
        # run SUCCEEDED and its resume is the next attempt), none still runs, and there
        # is none after the last.
        top = max(attempts, default=0)
        on_ray = {n: ray.state(submission_id(job.id, n)) for n in range(1, top + 2)}
        unknown = [n for n, st in on_ray.items() if st != "MISSING" and n not in attempts]
        if unknown or {"PENDING", "RUNNING"} & set(on_ray.values()):
            bad.append(f"{job.id} ray {on_ray} starts {attempts}")
    detail = f"{len(rec.jobs)} jobs: {dict(statuses)}" + (f"; bad: {_first(bad)}" if bad else "")
    return Check("every job terminal exactly once", not bad and bool(rec.jobs), detail)


def _segments(evs: list[dict[str, Any]]) -> list[list[tuple[int, float]]]:
    """(step, time) of each run segment's training steps: a new segment starts where the
    job (re)started a run or resumed from a checkpoint, or Ray Train restarted a failed
    worker group."""
    segments: list[list[tuple[int, float]]] = [[]]
    for e in evs:
        data = e.get("data") or {}
        msg = str(e.get("message", ""))
        started = e["type"] == "message" and data.get("status") == "running" and "kind" not in data
        if (started or "resumed from the checkpoint" in msg or "training worker" in msg) and (
            segments[-1]
        ):
            segments.append([])
        if e["type"] == "metrics" and data.get("kind") == "metrics" and "trial_id" not in data:
            segments[-1].append((int(data["step"]), float(e["created_at"])))
    return [s for s in segments if s]


def events_in_order(rec: Record, events: dict[str, list[dict[str, Any]]]) -> Check:
    """Within each run segment the training steps go up one at a time, in the order the
    worker reported them; a segment starts no later than the step after the highest one
    before it (so no step is missing)."""
    bad: list[str] = []
    checked = 0
    for job in rec.jobs.values():
        highest = 0
        for seg in _segments(events[job.id]):
            checked += 1
            steps = [s for s, _ in seg]
            times = [t for _, t in seg]
            if steps != list(range(steps[0], steps[0] + len(steps))) or steps[0] > highest + 1:
                bad.append(f"{job.id} steps {steps[:3]}..{steps[-2:]} after {highest}")
                break
            if times != sorted(times):
                bad.append(f"{job.id} steps reported out of time order")
                break
            highest = max(highest, steps[-1])
    detail = f"{len(rec.jobs)} jobs, {checked} run segments" + (
        f"; bad: {_first(bad)}" if bad else ""
    )
    return Check("job events in order, no gap", not bad, detail)


def uploads_intact(rec: Record, http: httpx.Client, headers: dict[str, dict[str, str]]) -> Check:
    bad: list[str] = []
    kept = 0
    for up in rec.uploads.values():
        r = http.get(f"/v1/files/{up.file_id}/content", headers=headers[up.tenant])
        if up.deleted:
            if r.status_code != 404:
                bad.append(f"{up.file_id} deleted but {r.status_code}")
            continue
        kept += 1
        if r.status_code != 200 or hashlib.sha256(r.content).hexdigest() != up.sha256:
            bad.append(f"{up.file_id} {r.status_code}")
    detail = f"{len(rec.uploads)} uploads ({kept} kept)" + (f"; bad: {_first(bad)}" if bad else "")
    return Check("2xx uploads byte-identical", not bad and kept > 0, detail)


def errors_in_windows(rec: Record) -> Check:
    """Each 5xx or transport error fell inside a fault window, and its call ended with an
    answer (2xx, or a 4xx that says the first attempt's effect already happened)."""
    firsts = {r.id: r for r in rec.requests if r.retry_of is None}
    failed = [r for r in rec.requests if r.status is None or r.status >= 500]
    outside = [
        r for r in failed if not any(w.start <= r.end and r.start <= w.end for w in rec.windows)
    ]
    unresolved = {
        f.id
        for r in failed
        if (f := firsts.get(r.retry_of if r.retry_of is not None else r.id)) is not None
        and (f.final_status is None or f.final_status >= 500)
    }
    retried_ok = len({r.id if r.retry_of is None else r.retry_of for r in failed} - unresolved)
    kinds = Counter(f"{r.kind}:{r.status or 'conn'}" for r in failed)
    detail = (
        f"{len(failed)} of {len(rec.requests)} attempts; {len(outside)} outside windows; "
        f"{retried_ok} calls retried to an answer, {len(unresolved)} not"
    )
    if kinds:
        detail += f"; {dict(kinds.most_common(5))}"
    if outside:
        detail += f"; outside: {_first(f'{r.kind}@{r.start:.0f}:{r.status}' for r in outside)}"
    return Check("5xx only in fault windows, retried", not outside and not unresolved, detail)


def _job_processes(roots: list[int]) -> list[str]:
    """Job drivers and training processes still running under the Ray nodes' processes."""
    found = []
    for root in roots:
        with contextlib.suppress(psutil.Error):
            for p in psutil.Process(root).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    line = " ".join(p.cmdline())
                    if "workers.run_job" in line or (
                        line.startswith("ray::") and any(k in line for k in JOB_PROCESSES)
                    ):
                        found.append(f"{p.pid}:{line[:40]}")
    return found


def nothing_left(dashboard_url: str, served_apps: int, node_pids: list[int]) -> Check:
    """With every job ended: no actor but Serve's and Ray Data's singletons, no placement
    group but Serve's, no job driver or training process, no Ray job still running. Ray
    tears a run down asynchronously (a PlacementGroupCleaner exits a few seconds after
    its controller), so this looks for up to a minute."""
    deadline = time.monotonic() + 60
    while True:
        ok, detail = _left_behind(dashboard_url, served_apps, node_pids)
        if ok or time.monotonic() > deadline:
            return Check("nothing left behind by ended jobs", ok, detail)
        time.sleep(5)


def _left_behind(dashboard_url: str, served_apps: int, node_pids: list[int]) -> tuple[bool, str]:
    from ray.util.state import list_actors, list_jobs, list_placement_groups

    actors = list_actors(address=dashboard_url, filters=[("state", "=", "ALIVE")], limit=10_000)
    names = Counter(str(a.class_name) for a in actors)
    stray = [
        f"{n} x{k}"
        for n, k in names.items()
        if not n.startswith(SERVE_ACTORS) and not (n in RAY_SINGLETONS and k == 1)
    ]
    replicas = names_starting(names, "ServeReplica")
    groups = list_placement_groups(
        address=dashboard_url, filters=[("state", "=", "CREATED")], limit=10_000
    )
    stray_groups = [
        str(g.placement_group_id)[:8] for g in groups if not str(g.name or "").startswith("SERVE")
    ]
    running = [
        str(j.submission_id)
        for j in list_jobs(address=dashboard_url)
        if str(j.status).rsplit(".", 1)[-1] in ("PENDING", "RUNNING")
    ]
    procs = _job_processes(node_pids)
    ok = not (stray or stray_groups or running or procs) and replicas <= served_apps
    detail = (
        f"actors: {len(actors)} alive ({replicas} Serve replicas for {served_apps} "
        f"served apps), stray: {_first(stray) or 'none'}; placement groups: "
        f"{len(stray_groups)} stray; Ray jobs running: {_first(running) or 'none'}; "
        f"job processes: {_first(procs) or 'none'}"
    )
    return ok, detail


def names_starting(names: Counter[str], prefix: str) -> int:
    return sum(k for n, k in names.items() if n.startswith(prefix))


def rss_bounded(rec: Record, warmup_s: float, plane_started_at: float) -> Check:
    """The last control plane's RSS at the end against its first sample after warm-up."""
    last = max((n for _, n, _ in rec.rss), default=0)
    mine = [(t, b) for t, n, b in rec.rss if n == last and t >= plane_started_at + warmup_s]
    if len(mine) < 2:
        return Check("control plane RSS within 15%", False, "too few samples after warm-up")
    warm, end = mine[0][1], mine[-1][1]
    growth = (end - warm) / warm
    mib = 1024 * 1024
    detail = (
        f"plane #{last}: {warm / mib:.0f} MiB after warm-up, {end / mib:.0f} MiB at the end "
        f"({growth:+.1%}, over {mine[-1][0] - mine[0][0]:.0f} s); peak "
        f"{max(b for _, b in mine) / mib:.0f} MiB"
    )
    return Check("control plane RSS within 15%", growth <= RSS_GROWTH, detail)


def redis_bounded(rec: Record) -> Check:
    if not rec.redis_bytes:
        return Check("Redis memory bounded", False, "no samples")
    mib = 1024 * 1024
    peak, end = max(rec.redis_bytes), rec.redis_bytes[-1]
    detail = f"used_memory peak {peak / mib:.1f} MiB, end {end / mib:.1f} MiB"
    return Check("Redis memory bounded", peak <= MAX_REDIS_BYTES, detail)


def _bytes_under(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def storage_reclaimed(rec: Record, conninfo: str, artifacts: Path) -> Check:
    """No file object in the store without its row (deleted files' bytes are gone), and a
    deleted model's weights hold no bytes."""
    import psycopg

    with psycopg.connect(conninfo) as db:
        keys = {str(k) for (k,) in db.execute("SELECT storage_key FROM files").fetchall()}
        models: dict[str, str] = dict(db.execute("SELECT id, artifact_uri FROM models").fetchall())
    on_disk = {
        str(p.relative_to(artifacts))
        for p in artifacts.glob("*/files/*")
        if p.is_file() and not p.name.endswith(".partial")
    }
    orphans = sorted(on_disk - keys)
    held = {}
    for model_id in rec.deleted_models:
        uri = str(models.get(model_id, ""))
        if uri.startswith("file://"):
            size = _bytes_under(Path(uri.removeprefix("file://")))
            if size:
                held[model_id] = size
    deleted_files = sum(1 for u in rec.uploads.values() if u.deleted)
    detail = (
        f"{deleted_files} files deleted, {len(orphans)} file objects without a row; "
        f"{len(rec.deleted_models)} models deleted, {len(held)} still hold "
        f"{sum(held.values()) / 1024:.0f} KiB"
    )
    if orphans:
        detail += f"; orphans: {_first(orphans)}"
    return Check("storage of deleted files/models reclaimed", not orphans and not held, detail)


def rows_bounded(
    rec: Record, conninfo: str, http: httpx.Client, headers: dict[str, dict[str, str]]
) -> Check:
    """Events and trials per job under fixed bounds; a finished job's checkpoints as its
    retention policy keeps them (last K and the best)."""
    import psycopg

    with psycopg.connect(conninfo) as db:
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        for table in ("job_events", "checkpoints", "trials"):
            q = f"SELECT job_id, count(*) FROM {table} GROUP BY job_id"  # fixed table names
            for job_id, n in db.execute(q.encode()).fetchall():
                counts[table][str(job_id)] = int(n)
    bad = []
    for job in rec.jobs.values():
        ev = counts["job_events"].get(job.id, 0)
        tr = counts["trials"].get(job.id, 0)
        if ev > MAX_EVENT_ROWS or tr > MAX_TRIAL_ROWS:
            bad.append(f"{job.id} events={ev} trials={tr}")
        if job.kind == "search":
            continue
        r = http.get(f"/v1/fine_tuning/jobs/{job.id}/checkpoints", headers=headers[job.tenant])
        listed = len(r.json().get("data", [])) if r.status_code == 200 else -1
        if listed > job.keep + 1 or counts["checkpoints"].get(job.id, 0) > job.keep + 1:
            bad.append(f"{job.id} checkpoints={listed} keep={job.keep}")
    top = max(counts["job_events"].values(), default=0)
    detail = f"max events/job {top}, max checkpoints/job " + str(
        max(counts["checkpoints"].values(), default=0)
    )
    if bad:
        detail += f"; bad: {_first(bad)}"
    return Check("rows per job bounded, retention kept", not bad, detail)


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  result  detail", "-" * (width + 60)]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {'PASS' if c.passed else 'FAIL':<6}  {c.detail}")
    return "\n".join(lines)
