"""Ray Train's placement-group cleaners left by ended runs are killed, on a real cluster.

The orphan is made as Ray Train makes it when a run's controller dies too early: the real
`PlacementGroupCleaner` class, detached, whose `start_monitoring` never came."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.ray_cluster import RayCluster
from workers.ray_cleanup import reap_cleaners

pytestmark = pytest.mark.ray
REPO_ROOT = Path(__file__).resolve().parents[2]


def start_cleaner() -> str:
    """A detached cleaner in the caller's job, as Ray Train starts it, never told to watch."""
    import ray
    from ray.train.v2._internal.execution.controller.placement_group_cleaner import (
        PlacementGroupCleaner,
    )

    cleaner = ray.remote(num_cpus=0)(PlacementGroupCleaner).options(lifetime="detached")
    handle: Any = cleaner.remote(
        controller_actor_id="ff" * 16,
        check_interval_s=1.0,
        get_actor_timeout_s=1.0,
        stop_timeout=1.0,
    )
    ray.get(handle.__ray_ready__.remote())
    return str(handle._actor_id.hex())


def _actor_state(actor_id: str) -> str:
    from ray.util.state import get_actor

    actor = get_actor(actor_id)
    assert actor is not None
    return str(actor.state)


def _wait_dead(actor_id: str) -> str:
    deadline = time.monotonic() + 10
    while (state := _actor_state(actor_id)) != "DEAD" and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


def test_cleaners_of_ended_jobs_are_killed_and_a_live_jobs_only_when_asked(
    ray_cluster: RayCluster,
) -> None:
    # One left by a driver that has since exited (its job ended) ...
    script = "import ray; ray.init(); from tests.workers.test_ray_cleanup import start_cleaner; "
    script += "print(start_cleaner())"
    ended = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env={**os.environ, **ray_cluster.env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()[-1]
    # ... and one of this test's own job, which is still running.
    own = start_cleaner()
    assert _actor_state(ended) == _actor_state(own) == "ALIVE"

    assert reap_cleaners(own_job_too=False) >= 1
    assert _wait_dead(ended) == "DEAD"
    assert _actor_state(own) == "ALIVE"

    assert reap_cleaners(own_job_too=True) >= 1
    assert _wait_dead(own) == "DEAD"
    assert reap_cleaners(own_job_too=True) == 0
