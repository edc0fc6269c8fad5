"""Ray job entrypoint: ``python -m workers.run_job <job-id> --spec-uri URI``.

The control plane writes the job's `JobSpec` as JSON to the artifact store and submits
this module as a Ray job (submission id = job id). It trains with Ray Train, streams
events to the Redis stream of `workers.report` (or to stdout without ``--redis-url``),
publishes the result under ``{output_uri}/model`` (`workers.publish`) and exits 0; on
failure its last event is the failed status, whose message says what to fix
(`workers.errors`), and it exits 1.

A job with a ``search`` runs `workers.tune` instead of a single Ray Train run; either
way this module reports the run's statuses and its `ResultData`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from workers.checkpoints import PAUSED_METRIC
from workers.data import JobData, StepPlan, load_job_data, load_tokenizer, plan_steps
from workers.errors import JobError, first_line, user_message
from workers.publish import publish
from workers.ray_cleanup import reap_cleaners
from workers.records import ResultData
from workers.report import JsonLinesSink, RedisEventSink, Reporter
from workers.sources import resolve_model_source
from workers.spec import (
    RUN_PREPARING,
    RUN_SAVING,
    RUN_SUCCEEDED,
    RUN_TRAINING,
    JobSpec,
    LoraAdapter,
)
from workers.storage import checkpoint_uri, run_storage_uri
from workers.tiny import default_models_dir
from workers.trackers import Tracking, take_secrets

logger = logging.getLogger("workers.run_job")


def load_spec(spec_uri: str) -> JobSpec:
    import fsspec

    with fsspec.open(spec_uri, "r", encoding="utf-8") as f:
        return JobSpec.model_validate_json(f.read())


def run(
    spec: JobSpec, reporter: Reporter, models_dir: str, tracking: Tracking | None = None
) -> ResultData | None:
    """The job's result; None when it stopped for a pause (a later run goes on)."""
    import ray

    from workers.trainer import build_trainer

    reporter.status(RUN_PREPARING, "preparing the base model and the data")
    if not ray.is_initialized():
        # Under Ray Jobs this connects to the job's cluster (RAY_ADDRESS is set).
        ray.init(logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    reap_cleaners(own_job_too=False)
    try:
        resolve_model_source(spec.base_model.source, Path(models_dir))
        load_tokenizer(spec.base_model.source, models_dir)
    except (OSError, ValueError) as exc:
        raise JobError(
            f"base model {spec.base_model.name!r} ({spec.base_model.source}) cannot be "
            f"loaded: {exc}",
            code="invalid_model",
        ) from exc

    data = load_job_data(spec, models_dir)
    plan = plan_steps(spec, data.train_examples)
    per_step = (
        plan.micro_batch_size
        * spec.resources.num_workers
        * spec.training.gradient_accumulation_steps
    )
    reporter.message(
        f"{data.train_examples} training and {data.validation_examples} validation examples; "
        f"{plan.total_steps} steps of {per_step} examples on "
        f"{spec.resources.num_workers} worker(s)",
        train_examples=data.train_examples,
        validation_examples=data.validation_examples,
        total_steps=plan.total_steps,
    )
    truncated = data.train_truncated + data.validation_truncated
    if truncated:
        reporter.message(
            f"{data.train_truncated} training and {data.validation_truncated} validation "
            f"examples are longer than max_length={spec.training.max_length} tokens and were "
            "cut to it (raise hyperparameters.max_length to keep them whole)",
            level="warn",
            train_truncated=data.train_truncated,
            validation_truncated=data.validation_truncated,
        )
    if spec.search is not None:
        return _search(spec, data, plan, reporter, models_dir, tracking)
    reporter.status(RUN_TRAINING, "training started")
    trainer = build_trainer(
        spec, data, plan, models_dir=models_dir, reporter=reporter, tracking=tracking
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise JobError("training ended without a checkpoint")
    final = result.metrics or {}
    if final.get(PAUSED_METRIC):
        reporter.paused(int(final.get("step", 0)))
        return None
    reporter.status(RUN_SAVING, "publishing the fine-tuned model")
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    with result.checkpoint.as_directory() as directory:
        uri = publish(spec, Path(directory), models_dir, metrics)
    outcome = ResultData(
        artifact_uri=uri,
        adapter=spec.adapter.type,
        trained_tokens=int(metrics.get("trained_tokens", 0)),
        steps=int(metrics.get("step", 0)),
        metrics=metrics,
        checkpoint_uri=checkpoint_uri(run_storage_uri(spec.output_uri), result.checkpoint.path),
        lora=spec.adapter.model_dump() if isinstance(spec.adapter, LoraAdapter) else None,
    )
    reporter.result(outcome)
    reporter.status(RUN_SUCCEEDED, "fine-tuning succeeded")
    return outcome


def _search(
    spec: JobSpec,
    data: JobData,
    plan: StepPlan,
    reporter: Reporter,
    models_dir: str,
    tracking: Tracking | None,
) -> ResultData | None:
    from workers.tune import SearchFailed, run_search

    assert spec.search is not None
    reporter.status(
        RUN_TRAINING,
        f"hyperparameter search started: {spec.search.num_trials} trial(s), "
        f"{spec.search.algorithm} search, {spec.search.scheduler} scheduler",
    )
    try:
        outcome = run_search(spec, data, plan, reporter, models_dir, tracking)
        if outcome is None:
            reporter.paused(None)
            return None
    except SearchFailed as exc:
        found = next((m for m in map(user_message, exc.errors) if m is not None), None)
        if found is not None:
            raise JobError(f"{exc}: {found[0]}", code=found[1]) from exc
        first = exc.errors[0] if exc.errors else exc
        raise JobError(
            f"{exc}; the first failed with {type(first).__name__}: {first_line(first)}",
            code="training_failed",
        ) from exc
    reporter.result(outcome)
    reporter.status(RUN_SUCCEEDED, "hyperparameter search succeeded")
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.run_job")
    parser.add_argument("job_id")
    parser.add_argument("--spec-uri", required=True, help="fsspec URI of the JobSpec JSON")
    parser.add_argument("--redis-url", default=None, help="events go to stdout without it")
    parser.add_argument("--models-dir", default=None, help="where tiny models are built")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    try:
        spec = load_spec(args.spec_uri)
    except Exception as exc:
        # Without a spec there is no tenant to address an event to; the exit code and log
        # are what the control plane sees.
        logger.error("cannot load the job spec from %s: %s", args.spec_uri, exc)
        return 1
    sink = RedisEventSink(args.redis_url) if args.redis_url else JsonLinesSink(stream=sys.stdout)
    reporter = Reporter(args.job_id, spec.tenant_id, sink)
    if spec.job_id != args.job_id:
        reporter.failed(f"the spec is for job {spec.job_id}, not {args.job_id}", code="bad_spec")
        return 1
    models_dir = str(Path(args.models_dir) if args.models_dir else default_models_dir())
    try:
        run(spec, reporter, models_dir, _tracking(spec, reporter))
    except (KeyboardInterrupt, SystemExit):
        # Ray's stop_job sends SIGINT (the control plane's cancel); during fit() Ray
        # Train's own handler aborts the run and leaves through sys.exit.
        _report_failure(reporter, "the job was stopped before it finished", "stopped")
        return 130
    except Exception as exc:
        logger.exception("job %s failed", args.job_id)
        found = user_message(exc)
        message, code = found or (
            f"training failed with an internal error ({type(exc).__name__}: "
            f"{first_line(exc)}); retry the job, and report it if it fails again",
            "training_failed",
        )
        # Not the user's doing (a lost Ray head or node, a bug): the control plane lets
        # Ray's view of the job decide between retrying it and failing it.
        retryable = found is None
        _report_failure(reporter, message, code, error_type=type(exc).__name__, retryable=retryable)
        return 1
    finally:
        # On a cancel too: Ray's stop_job waits RAY_JOB_STOP_WAIT_TIME_S for this.
        reap_cleaners(own_job_too=True)
    return 0


def _tracking(spec: JobSpec, reporter: Reporter) -> Tracking | None:
    """The job's trackers with the tenant's credentials for them; a job without them runs
    untracked rather than failing (`workers.trackers`)."""
    if not spec.integrations:
        return None
    try:
        secrets = take_secrets(spec.output_uri)
    except Exception as exc:
        reporter.message(
            f"the tracker credentials could not be read ({type(exc).__name__}); trackers "
            "run without them",
            level="warn",
        )
        secrets = {}
    return Tracking(tuple(spec.integrations), secrets)


def _report_failure(
    reporter: Reporter,
    message: str,
    code: str,
    error_type: str | None = None,
    retryable: bool | None = None,
) -> None:
    try:
        reporter.failed(message, code=code, error_type=error_type, retryable=retryable)
    except Exception:
        # The event sink itself may be what failed; the exit code still tells the story.
        logger.exception("could not report the failure of job %s", reporter.job_id)


if __name__ == "__main__":
    sys.exit(main())
