"""What a cancel costs and what it leaves behind: `workers.run_job` stopped through Ray's
Jobs API as the control plane stops it, in the seconds after training starts.

    .venv/bin/python bench/cancel.py [--delays 0,0.5,1,2,4]

Starts a Ray head (2 CPUs, token auth, as `tuneplane up` does) and submits the control
plane's entrypoint for a tiny-gpt2 LoRA job. Once the job's log says training started it
waits each of `--delays` seconds and stops the job (`stop_job`: SIGINT), once with Ray's
default grace before SIGKILL (3 s, the baseline) and once with the scheduler's
(`STOP_GRACE_S`). Prints, for each grace:

- cleaners left: Ray Train `PlacementGroupCleaner` actors of the cancelled job still alive
  15 s after it ended (one that watches its controller exits within about 2 s). Each is
  killed before the next job starts, so each cancel counts only its own.
- "stopped" reported: cancels whose driver lived to report the job stopped (a driver
  killed by SIGKILL reports nothing; the control plane then goes by Ray's view alone).
- stop -> ended: from `stop_job` to Ray's job status being terminal, p50 and max; the
  ratio is against the baseline's.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.job_submission import JobSubmissionClient

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from service.scheduling.scheduler import STOP_GRACE_S  # noqa: E402
from service.stack import ray_auth_env, start_ray_head  # noqa: E402
from tests.workers.factories import make_spec  # noqa: E402
from workers.ray_cleanup import CLEANER_CLASS, reap_cleaners  # noqa: E402

RAY_DEFAULT_GRACE_S = 3
CLEANER_EXIT_S = 15


@dataclass
class Outcome:
    grace_s: int
    left: list[int] = field(default_factory=list)
    reported: list[bool] = field(default_factory=list)
    stop_s: list[float] = field(default_factory=list)


def cancel_once(
    client: JobSubmissionClient, tmp: Path, name: str, grace_s: int, delay_s: float
) -> tuple[int, bool, float]:
    """One job stopped `delay_s` after its training started: (cleaners of it left alive,
    whether it reported itself stopped, seconds from stop_job to a terminal status)."""
    from ray.util.state import list_actors

    spec = make_spec(
        tmp,
        job_id=name,
        training={"n_epochs": 200, "batch_size": 16, "learning_rate": 1e-2, "max_length": 64},
    )
    spec_path = tmp / f"{name}.json"
    spec_path.write_text(spec.model_dump_json())
    entrypoint = (
        f"{sys.executable} -m workers.run_job {name} --spec-uri file://{spec_path} "
        f"--models-dir {tmp / 'models'}"
    )
    env = {
        "PYTHONPATH": str(REPO_ROOT),
        "RAY_JOB_STOP_SIGNAL": "SIGINT",
        "RAY_JOB_STOP_WAIT_TIME_S": str(grace_s),
        **{k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")},
        "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2",
    }
    client.submit_job(
        entrypoint=entrypoint,
        submission_id=name,
        runtime_env={"env_vars": env},
        entrypoint_num_cpus=0,
    )
    deadline = time.monotonic() + 180
    while "training started" not in client.get_job_logs(name):
        if client.get_job_status(name).is_terminal() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} never started training:\n{client.get_job_logs(name)}")
        time.sleep(0.1)
    time.sleep(delay_s)
    stopped_at = time.monotonic()
    client.stop_job(name)
    while not client.get_job_status(name).is_terminal():
        time.sleep(0.1)
    stop_s = time.monotonic() - stopped_at
    job_id = client.get_job_info(name).job_id
    deadline = time.monotonic() + CLEANER_EXIT_S
    while True:
        left = list_actors(
            filters=[
                ("class_name", "=", CLEANER_CLASS),
                ("state", "!=", "DEAD"),
                ("job_id", "=", str(job_id)),
            ]
        )
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    reported = '"code":"stopped"' in client.get_job_logs(name)
    reap_cleaners(own_job_too=False)
    return len(left), reported, stop_s


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--delays", default="0,0.5,1,2,4", help="seconds after training starts")
    args = parser.parse_args()
    delays = [float(d) for d in args.delays.split(",")]

    with tempfile.TemporaryDirectory(prefix="tuneplane-cancel-") as root:
        tmp = Path(root)
        # Before Ray is imported: it reads its auth mode once.
        os.environ.update(ray_auth_env(tmp))
        import ray
        from ray.job_submission import JobSubmissionClient

        head = start_ray_head(tmp, num_cpus=2, env={"PYTHONPATH": str(REPO_ROOT)})
        try:
            ray.init(address=head.gcs_address, logging_level=logging.ERROR)
            client = JobSubmissionClient(head.dashboard_url)
            outcomes = [Outcome(RAY_DEFAULT_GRACE_S), Outcome(STOP_GRACE_S)]
            for i, delay in enumerate(delays):
                # Alternating, so the machine's state drifts under both alike.
                for outcome in outcomes:
                    name = f"ftjob-cancel-{outcome.grace_s}s-{i}"
                    left, reported, stop_s = cancel_once(client, tmp, name, outcome.grace_s, delay)
                    outcome.left.append(left)
                    outcome.reported.append(reported)
                    outcome.stop_s.append(stop_s)
                    print(
                        f"grace {outcome.grace_s:>2} s, stop {delay:.1f} s after training "
                        f"started: ended in {stop_s:.1f} s, cleaners left {left}, "
                        f"stopped reported: {reported}",
                        flush=True,
                    )
        finally:
            ray.shutdown()
            head.process.stop(grace_s=2.0)
    base = statistics.median(outcomes[0].stop_s)
    print()
    print(f"{len(delays)} cancels per row, at {args.delays} s after training started")
    header = ("grace before SIGKILL", "cleaners left", '"stopped" reported', "stop->ended p50",
              "max", "p50 / baseline")  # fmt: skip
    print("  ".join(f"{h:<20}" for h in header))
    for o in outcomes:
        p50 = statistics.median(o.stop_s)
        cells = (
            f"{o.grace_s} s" + (" (Ray default)" if o.grace_s == RAY_DEFAULT_GRACE_S else ""),
            f"{sum(o.left)} of {len(o.left)}",
            f"{sum(o.reported)} of {len(o.reported)}",
            f"{p50:.1f} s",
            f"{max(o.stop_s):.1f} s",
            f"{p50 / base:.2f}",
        )
        print("  ".join(f"{c:<20}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
