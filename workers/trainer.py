"""The driver's side of a fine-tune: the Ray Train run (`TorchTrainer`) around the
per-worker recipe of `workers.train`: its workers and their resources, its datasets,
where its checkpoints go and how many Ray keeps, and the callbacks that report it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.train.v2.api.callback import UserCallback

from workers.control import PauseFlag
from workers.data import JobData, StepPlan
from workers.faults import FaultInjection
from workers.report import Reporter
from workers.spec import JobSpec
from workers.storage import RUN_NAME, run_storage_uri, storage_path
from workers.trackers import Tracking
from workers.train import LoopConfig, train_loop_per_worker
from workers.train_events import TrainEventsCallback


def build_trainer(
    spec: JobSpec,
    data: JobData,
    plan: StepPlan,
    *,
    models_dir: str,
    reporter: Reporter | None = None,
    probe_text: str | None = None,
    fault: FaultInjection | None = None,
    checkpoint_events: bool = True,
    callbacks: Sequence[UserCallback] = (),
    pause: PauseFlag | None = None,
    required_metric: str | None = None,
    tracking: Tracking | None = None,
) -> TorchTrainer:
    """`pause`: where the run reads a pause request; by default its own output URI's
    (a search's trials read the job's)."""
    from ray.train import DataConfig

    resources = spec.resources
    per_worker: dict[str, float] = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    datasets: dict[str, Any] = {"train": data.train}
    if data.validation is not None:
        datasets["validation"] = data.validation
    path, filesystem = storage_path(spec.output_uri)
    loop = LoopConfig(
        spec=spec,
        models_dir=models_dir,
        plan=plan,
        has_validation=data.validation is not None,
        reporter=reporter,
        probe_text=probe_text,
        fault=fault,
        pause=pause or PauseFlag(spec.output_uri),
        required_metric=required_metric,
        tracking=tracking,
    )
    # Checkpoints reported to the control plane are retained by it (the last K and the
    # best; Ray Train can keep one or the other), so Ray keeps them all: a checkpoint
    # Ray deleted would still be listed. Other runs keep Ray's newest K.
    retained_by_control_plane = reporter is not None and checkpoint_events
    keep = None if retained_by_control_plane else spec.training.num_checkpoints_to_keep
    run_callbacks: list[Any] = list(callbacks)
    if reporter is not None:
        run_callbacks.append(
            TrainEventsCallback(
                reporter, run_storage_uri(spec.output_uri), checkpoints=checkpoint_events
            )
        )
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop},
        # NCCL between GPUs; gloo on CPU, where NCCL does not exist.
        torch_config=TorchConfig(backend="nccl" if resources.use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=resources.use_gpu,
            resources_per_worker=per_worker,
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=path,
            storage_filesystem=filesystem,
            checkpoint_config=CheckpointConfig(num_to_keep=keep),
            failure_config=FailureConfig(max_failures=spec.training.max_failures),
            callbacks=run_callbacks,
        ),
        datasets=datasets,
        # Validation is not split: each worker evaluates every world_size-th batch of it,
        # so no example is dropped to even out the parts.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
