"""A background loop's errors (service/scheduling/loops.py): survived, and one that repeats
on every turn (a full disk under the scheduler's spec writes) logged once, not each turn."""

from __future__ import annotations

import errno
import logging
import threading

import pytest

from service.scheduling.loops import run_every


def test_a_repeating_error_is_logged_once_and_a_new_one_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = threading.Event()
    turns: list[int] = []

    def step() -> None:
        turns.append(1)
        if len(turns) == 6:
            stop.set()
        if len(turns) <= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        if len(turns) == 4:
            return  # recovered: the next failure is news
        raise OSError(errno.ENOSPC, "No space left on device")

    stop_wait = stop.wait
    # The loop waits 1 s after an error: not in a unit test.
    stop.wait = lambda timeout=None: stop_wait(0)  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="service.scheduling.loops"):
        run_every("scheduler", step, 0.0, stop)
    logged = [r for r in caplog.records if "scheduler loop step failed" in r.getMessage()]
    assert len(turns) == 6
    # Turns 1-3 fail alike (one line), 4 succeeds, 5-6 fail alike again (one line).
    assert len(logged) == 2
    assert all(r.exc_info for r in logged)
