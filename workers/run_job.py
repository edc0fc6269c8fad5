"""Ray job entrypoint: ``python -m workers.run_job <job-id> --spec-uri URI``.

The control plane writes the job's `JobSpec` as JSON to the artifact store and submits
this module as a Ray job (submission id = job id). It trains with Ray Train, streams
events to the Redis stream of `workers.report` (or to stdout without ``--redis-url``),
publishes the result under ``{output_uri}/model`` and exits 0; on failure it sends a
``failed`` status event whose message says what to fix, and exits 1.

The published model directory holds the adapter (or the full model) as safetensors, the
tokenizer, and ``tuneplane.json`` (job, base model, task, labels, final metrics).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from workers.data import (
    DataError,
    JobData,
    StepPlan,
    load_job_data,
    load_tokenizer,
    plan_steps,
)
from workers.formats import DataFormatError
from workers.report import JsonLinesSink, RedisEventSink, Reporter
from workers.sources import resolve_model_source
from workers.spec import JobSpec, LoraAdapter
from workers.tiny import default_models_dir

logger = logging.getLogger("workers.run_job")

MANIFEST_FILE = "tuneplane.json"
# Errors whose message is written for the user and is shown as is.
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, DataFormatError)


class JobError(Exception):
    """A failure with a message for the user; `code` goes into the failed event."""

    def __init__(self, message: str, code: str = "training_failed") -> None:
        super().__init__(message)
        self.code = code


def load_spec(spec_uri: str) -> JobSpec:
    import fsspec

    with fsspec.open(spec_uri, "r", encoding="utf-8") as f:
        return JobSpec.model_validate_json(f.read())


def artifact_uri(spec: JobSpec) -> str:
    return spec.output_uri.rstrip("/") + "/model"


def publish(spec: JobSpec, checkpoint_dir: Path, models_dir: str, metrics: dict[str, Any]) -> str:
    """Copies the final weights, the tokenizer and a manifest to ``{output_uri}/model``."""
    import fsspec

    target = artifact_uri(spec)
    with tempfile.TemporaryDirectory(prefix="tuneplane-artifact-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        for path in (checkpoint_dir / "model").iterdir():
            if path.is_file():
                (staging / path.name).write_bytes(path.read_bytes())
        load_tokenizer(spec.base_model.source, models_dir).save_pretrained(staging)
        manifest = {
            "job_id": spec.job_id,
            "tenant_id": spec.tenant_id,
            "base_model": spec.base_model.model_dump(),
            "task": spec.task,
            "adapter": spec.adapter.type,
            "labels": spec.labels,
            # Serving encodes inputs with the same limit as training did.
            "max_length": spec.training.max_length,
            "metrics": metrics,
        }
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        fs, path = fsspec.core.url_to_fs(target)
        if fs.exists(path):
            fs.rm(path, recursive=True)  # a rerun of the job replaces its artifact
        fs.makedirs(path, exist_ok=True)
        for file in sorted(staging.iterdir()):
            fs.put_file(str(file), f"{path}/{file.name}")
    return target


def user_message(error: BaseException) -> tuple[str, str] | None:
    """The user-facing (message, code) inside a possibly Ray-wrapped exception, if any."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, JobError):
            return str(current), current.code
        if isinstance(current, USER_ERRORS):
            return str(current), "invalid_data"
        for attr in ("worker_failures",):
            failures = getattr(current, attr, None)
            if isinstance(failures, dict):
                pending.extend(e for e in failures.values() if isinstance(e, BaseException))
        for attr in ("cause", "__cause__", "__context__", "controller_failure"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                pending.append(inner)
    return None


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(error).__name__


def run(spec: JobSpec, reporter: Reporter, models_dir: str) -> dict[str, Any]:
    import ray

    from workers.train import build_trainer, checkpoint_uri, run_storage_uri

    reporter.status("preparing", "preparing the base model and the data")
    if not ray.is_initialized():
        # Under Ray Jobs this connects to the job's cluster (RAY_ADDRESS is set).
        ray.init(logging_level=logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
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
        return _search(spec, data, plan, reporter, models_dir)
    reporter.status("training", "training started")
    trainer = build_trainer(spec, data, plan, models_dir=models_dir, reporter=reporter)
    result = trainer.fit()
    if result.checkpoint is None:
        raise JobError("training ended without a checkpoint")
    reporter.status("saving", "publishing the fine-tuned model")
    metrics = {k: v for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    with result.checkpoint.as_directory() as directory:
        uri = publish(spec, Path(directory), models_dir, metrics)
    outcome = {
        "artifact_uri": uri,
        "adapter": spec.adapter.type,
        "trained_tokens": int(metrics.get("trained_tokens", 0)),
        "steps": int(metrics.get("step", 0)),
        "metrics": metrics,
        "checkpoint_uri": checkpoint_uri(run_storage_uri(spec.output_uri), result.checkpoint.path),
        "lora": spec.adapter.model_dump() if isinstance(spec.adapter, LoraAdapter) else None,
    }
    reporter.result(outcome)
    reporter.status("succeeded", "fine-tuning succeeded")
    return outcome


def _search(
    spec: JobSpec, data: JobData, plan: StepPlan, reporter: Reporter, models_dir: str
) -> dict[str, Any]:
    from workers.tune import SearchFailed, run_search

    assert spec.search is not None
    reporter.status(
        "training",
        f"hyperparameter search started: {spec.search.num_trials} trial(s), "
        f"{spec.search.algorithm} search, {spec.search.scheduler} scheduler",
    )
    try:
        outcome = run_search(spec, data, plan, reporter, models_dir)
    except SearchFailed as exc:
        found = next((m for m in map(user_message, exc.errors) if m is not None), None)
        if found is not None:
            raise JobError(f"{exc}: {found[0]}", code=found[1]) from exc
        first = exc.errors[0] if exc.errors else exc
        raise JobError(
            f"{exc}; the first failed with {type(first).__name__}: {_first_line(first)}",
            code="training_failed",
        ) from exc
    reporter.result(outcome)
    reporter.status("succeeded", "hyperparameter search succeeded")
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
        run(spec, reporter, models_dir)
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
            f"{_first_line(exc)}); retry the job, and report it if it fails again",
            "training_failed",
        )
        # Not the user's doing (a lost Ray head or node, a bug): the control plane lets
        # Ray's view of the job decide between retrying it and failing it.
        retryable = found is None
        _report_failure(reporter, message, code, error_type=type(exc).__name__, retryable=retryable)
        return 1
    return 0


def _report_failure(reporter: Reporter, message: str, code: str, **data: Any) -> None:
    try:
        reporter.failed(message, code=code, **data)
    except Exception:
        # The event sink itself may be what failed; the exit code still tells the story.
        logger.exception("could not report the failure of job %s", reporter.job_id)


if __name__ == "__main__":
    sys.exit(main())
