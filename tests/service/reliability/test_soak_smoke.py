"""The soak (bench/soak.py) for five minutes: the whole stack on PostgreSQL under the
mixed workload, with every fault kind injected once, and its checks all passing.

It runs for about a quarter of an hour on a 2-core machine (setup, the five minutes
stretched until the last fault has recovered plus a quiet minute, the drain), so it is
`slow`: `make test-real`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_a_five_minute_soak_passes_every_check() -> None:
    soak = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "bench" / "soak.py"), "--minutes", "5", "--seed", "7"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = soak.communicate(timeout=3300)
    except subprocess.TimeoutExpired:
        # SIGTERM: the soak stops the stack it started (Ray, PostgreSQL, Redis) on its way out.
        soak.terminate()
        out, _ = soak.communicate(timeout=180)
        pytest.fail(f"the soak ran past 55 minutes:\n{out[-6000:]}")
    assert "check" in out and "result" in out and "soak PASSED" in out, out[-6000:]
    assert soak.returncode == 0, out[-6000:]
