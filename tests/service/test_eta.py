"""`service.jobs.eta`: when a running job should finish, computed by hand here."""

from __future__ import annotations

import pytest

from service.jobs.eta import (
    JobProgress,
    StepSpan,
    TrialProgress,
    estimated_finish,
    planned_trials,
    run_finish,
    search_finish,
    step_seconds,
)

NOW = 1_000_000.0


def span(first: int, first_at: float, last: int, last_at: float, total: int | None) -> StepSpan:
    return StepSpan(first, first_at, last, last_at, total)


def test_no_step_measured_yet_gives_no_estimate() -> None:
    assert run_finish(None, NOW) is None  # the first step is not done
    # One step reported: no interval between two steps to measure yet.
    assert run_finish(span(1, NOW - 5, 1, NOW - 5, 10), NOW) is None
    # The workers did not say how many steps there are.
    assert run_finish(span(1, NOW - 20, 5, NOW, None), NOW) is None


def test_steady_steps_finish_after_the_steps_left_at_their_measured_time() -> None:
    # Steps 1..5 over 8 s: 2 s a step; 100 - 5 = 95 steps left: 190 s from now.
    steps = span(1, NOW - 10, 5, NOW - 2, 100)
    assert step_seconds(steps) == pytest.approx(2.0)
    assert run_finish(steps, NOW) == pytest.approx(NOW + 190)
    # The last step done: it finishes now (saving and publishing are not steps).
    assert run_finish(span(1, NOW - 10, 100, NOW, 100), NOW) == pytest.approx(NOW)
    # Resumed from a checkpoint at step 40: measured from there on.
    assert run_finish(span(41, NOW - 30, 51, NOW, 61), NOW) == pytest.approx(NOW + 30)


def test_a_search_runs_the_trials_left_concurrency_at_a_time() -> None:
    # 6 trials, 2 at once; 2 ended after 100 s each, 2 running for 30 s (no steps of their
    # own yet: a typical trial's length, 100 s, minus 30), 2 not started.
    trials = [
        TrialProgress("terminated", NOW - 200, NOW - 100),
        TrialProgress("early_stopped", NOW - 130, NOW - 30),
        TrialProgress("running", NOW - 30, NOW),
        TrialProgress("running", NOW - 30, NOW),
    ]
    # Work left: 70 + 70 + 2 * 100 = 340 trial-seconds over 2 slots = 170 s.
    assert search_finish(6, 2, trials, NOW) == pytest.approx(NOW + 170)
    # One at a time: 340 s.
    assert search_finish(6, 1, trials, NOW) == pytest.approx(NOW + 340)
    # More slots than trials left: the running ones' own end, 70 s.
    assert search_finish(4, 8, trials, NOW) == pytest.approx(NOW + 70)


def test_a_search_uses_its_trials_step_times() -> None:
    # Nothing ended yet; the running trial measured 1 s a step with 20 of 50 steps done:
    # 30 s left, so a trial takes 10 + 30 = 40 s. 3 more to run, 1 at a time: 30 + 120.
    running = TrialProgress("running", NOW - 10, NOW, span(1, NOW - 19, 20, NOW, 50))
    assert search_finish(4, 1, [running], NOW) == pytest.approx(NOW + 150)
    # Before any trial measured a step or ended: not known.
    assert search_finish(4, 1, [TrialProgress("running", NOW - 10, NOW)], NOW) is None
    assert search_finish(4, 2, [], NOW) is None
    # A trial that failed tells nothing of a trial's length.
    failed = TrialProgress("error", NOW - 10, NOW - 9)
    assert search_finish(2, 1, [failed], NOW) is None


def test_grids_plan_every_point_and_the_job_estimate_is_whole_seconds() -> None:
    grid = {
        "algorithm": "grid",
        "space": {
            "learning_rate": {"type": "grid", "values": [1e-4, 1e-3, 1e-2]},
            "batch_size": {"type": "grid", "values": [4, 8]},
        },
        "num_trials": 4,
    }
    assert planned_trials(grid) == 6
    assert planned_trials({"algorithm": "random", "num_trials": 5, "space": {}}) == 5
    steps = span(1, NOW - 10.4, 5, NOW, 10)  # 2.6 s a step, 5 steps left: 13 s
    assert estimated_finish(None, JobProgress(steps=steps), NOW) == round(NOW + 13)
    search = {"algorithm": "random", "num_trials": 2, "max_concurrent_trials": 2}
    trials = [
        TrialProgress("terminated", NOW - 50, NOW - 10),
        TrialProgress("running", NOW - 10, NOW),
    ]
    assert estimated_finish(search, JobProgress(trials=trials), NOW) == round(NOW + 30)
    assert estimated_finish(search, JobProgress(), NOW) is None
