"""Runs a job's training through Ray Train the way run_job does, for the tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

from workers.data import StepPlan, load_job_data, plan_steps
from workers.faults import FaultInjection
from workers.report import EventRecord, JsonLinesSink, Reporter, read_json_lines
from workers.spec import JobSpec
from workers.trainer import build_trainer


@dataclass
class Run:
    result: Any  # ray.train.Result
    events: list[EventRecord]
    plan: StepPlan

    def of_type(self, type_: str) -> list[EventRecord]:
        return [e for e in self.events if e.type == type_]

    def series(self, type_: str, key: str) -> list[tuple[int, float]]:
        return [(e.data["step"], e.data[key]) for e in self.of_type(type_) if key in e.data]

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.result.checkpoint.path)


def fit(
    spec: JobSpec,
    models_dir: Path,
    events_path: Path,
    probe_text: str | None = None,
    fault: FaultInjection | None = None,
    callbacks: Sequence[UserCallback] = (),
) -> Run:
    reporter = Reporter(spec.job_id, spec.tenant_id, JsonLinesSink(path=str(events_path)))
    data = load_job_data(spec, str(models_dir))
    plan = plan_steps(spec, data.train_examples)
    trainer = build_trainer(
        spec,
        data,
        plan,
        models_dir=str(models_dir),
        reporter=reporter,
        probe_text=probe_text,
        fault=fault,
        callbacks=callbacks,
    )
    result = trainer.fit()
    return Run(result=result, events=read_json_lines(str(events_path)), plan=plan)
