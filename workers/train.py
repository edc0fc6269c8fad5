"""Fine-tuning on Ray Train: the per-worker recipe.

One explicit recipe, torchtune style: `FineTuneRecipe.setup()` (seed, model, adapter,
optimizer, schedule, restore), `.train()` (epochs of accumulated micro-batches, periodic
evaluation and checkpoints), `.save()` (a checkpoint reported to Ray Train) and
`.cleanup()`. The same code runs on one CPU worker or many GPU workers: Ray Train picks
the device and the process group (gloo on CPU, NCCL on GPU) and wraps the model in DDP.
`workers.trainer.build_trainer` is the driver's side: the TorchTrainer that runs it.

The recipe reads top to bottom here; what it is built from lives beside it:
`workers.modeling` (base model, LoRA, loss), `workers.checkpoints` (what a checkpoint
holds, writing and restoring it), `workers.data` (the batches), `workers.storage` (where
runs are kept), `workers.train_events` (the controller's checkpoint events) and
`workers.faults` (tests' worker crashes).
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
from ray.train import Checkpoint
from torch import nn

from workers.checkpoints import (
    PAUSED_METRIC,
    TrainerState,
    restore_state,
    write_checkpoint,
    write_probe,
    write_serving_files,
)
from workers.control import PauseFlag
from workers.data import StepPlan, load_tokenizer, pad_token_id
from workers.faults import FaultInjection, crash_if_due
from workers.loop_parts import all_reduce, lr_lambda, seed_all, with_last
from workers.modeling import unwrap
from workers.objectives import averaged, build_model
from workers.report import Reporter
from workers.sources import resolve_model_source
from workers.spec import JobSpec
from workers.trackers import Trackers, Tracking, model_reference, open_tracker

# The most rows a worker holds to shuffle an epoch: above it the shuffle is windowed.
SHUFFLE_BUFFER_ROWS = 100_000


@dataclass(frozen=True)
class LoopConfig:
    """Everything a worker needs, built by the driver and shipped with the trainer."""

    spec: JobSpec
    models_dir: str
    plan: StepPlan
    has_validation: bool
    reporter: Reporter | None = None
    # Diagnostics for tests: logits of this text are saved with the final checkpoint.
    probe_text: str | None = None
    fault: FaultInjection | None = None
    # The control plane's pause request, read by rank 0 between steps.
    pause: PauseFlag | None = None
    # A metric every report must carry (a search trial's: Tune refuses a result without
    # its metric, and Optuna reads it from each one).
    required_metric: str | None = None
    # The job's experiment trackers (MLflow, W&B), which rank 0 logs to.
    tracking: Tracking | None = None


class FineTuneRecipe:
    """Per-worker fine-tuning: setup / train / save / cleanup."""

    def __init__(self, config: LoopConfig) -> None:
        self.config = config
        self.spec = config.spec
        self.plan = config.plan
        self.state = TrainerState()
        # Step losses since the last checkpoint, averaged into its train_loss.
        self._recent_losses: list[float] = []
        self._clock = time.perf_counter()
        # Set at a step boundary when the control plane asked to pause (every rank agrees).
        self._pause = False

    # ---------------------------------------------------------------- setup

    def setup(self) -> None:
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.reporter = self.config.reporter if self.rank == 0 else None
        self.tracker: Trackers = open_tracker(
            self.config.tracking, self.spec, self.reporter, self.rank
        )
        seed_all(self.spec.seed)
        self.device = ray.train.torch.get_device()
        # bf16 autocast on GPU only: CPU autocast is slow and tests want exact fp32 numbers.
        self.autocast_dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.source = resolve_model_source(
            self.spec.base_model.source, Path(self.config.models_dir)
        )
        self.tokenizer = load_tokenizer(self.spec.base_model.source, self.config.models_dir)
        self.pad_id = pad_token_id(self.tokenizer)

        checkpoint = ray.train.get_checkpoint()
        with contextlib.ExitStack() as stack:
            restore_dir = (
                Path(stack.enter_context(checkpoint.as_directory())) if checkpoint else None
            )
            model, self.objective = build_model(
                self.spec, self.source, self.config.models_dir, restore_dir, self.pad_id
            )
            self.model = ray.train.torch.prepare_model(
                model, parallel_strategy_kwargs={"find_unused_parameters": False}
            )
            self.objective.to(self.device)
            self.trainable = [p for p in self.model.parameters() if p.requires_grad]
            self.optimizer = self._optimizer()
            warmup = math.ceil(self.spec.training.warmup_ratio * self.plan.total_steps)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer,
                lambda step: lr_lambda(
                    step, warmup, self.plan.total_steps, self.spec.training.lr_scheduler
                ),
            )
            if restore_dir is not None:
                self._restore_state(restore_dir)
        self.train_shard = ray.train.get_dataset_shard("train")
        self.validation = (
            ray.train.get_dataset_shard("validation") if self.config.has_validation else None
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        # No weight decay on biases and norms (1-d tensors), as is usual for transformers.
        decay = [p for p in self.trainable if p.ndim >= 2]
        no_decay = [p for p in self.trainable if p.ndim < 2]
        return torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.spec.training.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.spec.training.learning_rate,
        )

    def _restore_state(self, directory: Path) -> None:
        self.state = restore_state(directory, self.optimizer, self.scheduler)
        if self.reporter:
            self.reporter.message(
                f"resumed from the checkpoint at step {self.state.step}",
                level="warn",
                resumed_from_step=self.state.step,
            )

    # ---------------------------------------------------------------- train

    def train(self) -> None:
        training = self.spec.training
        if self.state.step == 0 and self.validation is not None and training.eval_at_start:
            self.evaluate()  # the base model's score, to compare the fine-tuned one with
        self._clock = time.perf_counter()
        while self.state.epoch < training.n_epochs:
            skip = self.state.micro_batches_done
            window: list[dict[str, np.ndarray]] = []
            seen = 0
            for index, (batch, is_last) in enumerate(with_last(self._micro_batches())):
                seen += 1
                if index < skip:
                    continue
                window.append(batch)
                if len(window) == training.gradient_accumulation_steps or is_last:
                    self._optimizer_step(window)
                    window = []
                    if is_last:
                        self.state.epoch += 1
                        self.state.micro_batches_done = 0
                    saved = self._after_step(end_of_epoch=is_last)
                    if self._pause and not self._finished():
                        self._pause_here(saved)
                        return
                    # Throughput counts fetching and training, not evaluation or saving.
                    self._clock = time.perf_counter()
            if seen <= skip:
                raise RuntimeError(
                    f"worker {self.rank} got {seen} batches in epoch {self.state.epoch + 1}, "
                    f"expected more than {skip}"
                )

    def _micro_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """This epoch's micro-batches, in an order drawn from the job's seed and the epoch.

        A buffer as large as the worker's part makes it a full shuffle, so a file sorted by
        label still gives mixed batches; the same seed gives the same order again, which
        is what lets a resumed run skip the micro-batches it had trained on.
        """
        assert self.train_shard is not None
        yield from self.train_shard.iter_batches(
            batch_size=self.plan.micro_batch_size,
            batch_format="numpy",
            prefetch_batches=2,
            local_shuffle_buffer_size=min(self.plan.examples_per_worker, SHUFFLE_BUFFER_ROWS),
            local_shuffle_seed=(self.spec.seed + 7919 * self.state.epoch) % 2**32,
        )

    def _optimizer_step(self, window: list[dict[str, np.ndarray]]) -> None:
        self.model.train()
        objective = self.objective
        batches = [{k: v.to(self.device) for k, v in objective.collate(b).items()} for b in window]
        # Normalising by the units (targets, or pairs) of the whole window makes
        # accumulation equal to one big batch, however they are spread over micro-batches.
        units = sum(objective.units(b) for b in batches)
        loss_total = 0.0
        tokens = 0
        sums = [0.0] * len(objective.metric_names)
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = (
                self.model.no_sync()
                if isinstance(self.model, nn.parallel.DistributedDataParallel) and not last
                else contextlib.nullcontext()
            )
            with sync:
                result = objective.loss(self.model, batch, self.autocast_dtype)
                (result.loss / max(1, units)).backward()
            loss_total += float(result.loss.detach())
            sums = [s + result.sums[n] for s, n in zip(sums, objective.metric_names, strict=True)]
            tokens += int(batch["attention_mask"].sum())
        torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.training.max_grad_norm)
        learning_rate = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

        # The pause request rides on the step's one all-reduce: every rank stops after
        # the same step without a collective of its own.
        pause = self.config.pause
        asked = float(self.rank == 0 and pause is not None and pause.requested())
        loss_sum, target_count, token_count, paused, *summed = all_reduce(
            [loss_total, float(units), float(tokens), asked, *sums], self.device
        )
        self._pause = paused > 0
        elapsed = time.perf_counter() - self._clock
        self.state.step += 1
        self.state.micro_batches_done += len(window)
        self.state.trained_tokens += int(token_count)
        self._recent_losses.append(loss_sum / max(1.0, target_count))
        if self.reporter:
            step_metrics = {
                "step": self.state.step,
                "epoch": self.state.epoch + 1,
                "train_loss": loss_sum / max(1.0, target_count),
                "learning_rate": learning_rate,
                "tokens_per_second": token_count / max(elapsed, 1e-9),
                "trained_tokens": self.state.trained_tokens,
                "total_steps": self.plan.total_steps,
                **{
                    f"train_{name}": value
                    for name, value in averaged(objective, summed, target_count).items()
                },
            }
            self.reporter.metrics(step_metrics)
            self.tracker.log(step_metrics, self.state.step)

    def _finished(self) -> bool:
        return self.state.epoch >= self.spec.training.n_epochs

    def _pause_here(self, saved: bool) -> None:
        """Ends the run at this step boundary with a checkpoint marked paused; the next run
        of the job resumes from it (Ray Train restores a run's newest checkpoint)."""
        if self.reporter:
            self.reporter.message(
                f"pausing at step {self.state.step}: saving a checkpoint to resume from",
                paused_at_step=self.state.step,
            )
        self.save(paused=True, already_saved=saved)
        self.tracker.end("paused")

    def _after_step(self, end_of_epoch: bool) -> bool:
        """Evaluates and checkpoints when due; True if it saved a checkpoint."""
        training = self.spec.training
        step = self.state.step
        last = end_of_epoch and self.state.epoch >= training.n_epochs
        every_eval, every_checkpoint = training.eval_every_steps, training.checkpoint_every_steps
        if self.validation is not None and (
            last
            or (every_eval is not None and step % every_eval == 0)
            or (every_eval is None and end_of_epoch)
        ):
            metrics = self.evaluate()
            if last:
                self._warn_if_never_improved(metrics["eval_loss"])
        if (
            last
            or (every_checkpoint is not None and step % every_checkpoint == 0)
            or (every_checkpoint is None and end_of_epoch)
        ):
            self.save(final=last)
            crash_if_due(self.config.fault, self.rank, self.state.step)
            return True
        return False

    # ---------------------------------------------------------------- evaluate

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss (and accuracy) on the validation data, split over the workers by batch."""
        assert self.validation is not None
        # The bare module: DDP's forward would sync buffers, and the workers may run
        # different numbers of evaluation batches.
        model = unwrap(self.model)
        model.eval()
        objective = self.objective
        loss_sum = units = 0.0
        sums = [0.0] * len(objective.metric_names)
        batches = self.validation.iter_batches(
            batch_size=max(self.plan.micro_batch_size, 8), batch_format="numpy"
        )
        for index, raw in enumerate(batches):
            if index % self.world_size != self.rank:
                continue
            batch = {k: v.to(self.device) for k, v in objective.collate(raw).items()}
            result = objective.loss(model, batch, self.autocast_dtype)
            loss_sum += float(result.loss)
            units += objective.units(batch)
            sums = [s + result.sums[n] for s, n in zip(sums, objective.metric_names, strict=True)]
        loss_sum, units, *sums = all_reduce([loss_sum, units, *sums], self.device)
        metrics = {"eval_loss": loss_sum / max(1.0, units)}
        metrics.update(
            {f"eval_{name}": value for name, value in averaged(objective, sums, units).items()}
        )
        if self.state.first_eval_loss is None:
            self.state.first_eval_loss = metrics["eval_loss"]
        self.state.metrics.update(metrics)
        if self.reporter:
            self.reporter.eval({"step": self.state.step, **metrics})
            self.tracker.log(metrics, self.state.step)
        return metrics

    def _warn_if_never_improved(self, final_loss: float) -> None:
        first = self.state.first_eval_loss
        if self.reporter is None or first is None or final_loss < first:
            return
        self.reporter.message(
            f"the validation loss never improved: {final_loss:.4f} at the end, {first:.4f} "
            "at the first evaluation; the model may have learned nothing useful (try a "
            "higher learning rate, more epochs or more data) or overfitted (fewer epochs)",
            level="warn",
            first_eval_loss=first,
            final_eval_loss=final_loss,
        )

    # ---------------------------------------------------------------- save

    def _report_metrics(self) -> dict[str, float]:
        metrics: dict[str, float] = dict(self.state.metrics)
        if self._recent_losses:
            metrics["train_loss"] = sum(self._recent_losses) / len(self._recent_losses)
        metrics.update(
            step=self.state.step,
            epoch=self.state.epoch,
            trained_tokens=self.state.trained_tokens,
            learning_rate=float(self.scheduler.get_last_lr()[0]),
            total_steps=self.plan.total_steps,
        )
        return metrics

    def save(self, final: bool = False, paused: bool = False, already_saved: bool = False) -> None:
        """Reports a checkpoint; rank 0 writes it, the other workers report none.

        `paused`: the run stops after it (its metrics say so); `already_saved`: this step's
        checkpoint exists, so only the paused mark is reported, with no second copy."""
        required = self.config.required_metric
        evaluated = required is not None and required.startswith("eval_")
        if evaluated and required not in self.state.metrics and self.validation is not None:
            # Saved before the first evaluation (checkpoints more often than evaluations,
            # or a pause at the first steps): evaluate now, so the report has the metric.
            self.evaluate()
        metrics = self._report_metrics()
        if paused:
            metrics[PAUSED_METRIC] = 1.0
            if already_saved:
                ray.train.report(metrics)
                return
        self._recent_losses = []
        self.state.metrics["train_loss"] = metrics.get("train_loss", float("nan"))
        name = f"checkpoint-{self.state.step:07d}"
        with tempfile.TemporaryDirectory(prefix="tuneplane-ckpt-") as tmp:
            directory = Path(tmp)
            checkpoint = None
            if self.rank == 0:
                model = unwrap(self.model)
                write_checkpoint(
                    directory, model, self.optimizer, self.scheduler, self.state, metrics, final
                )
                write_serving_files(directory, self.spec, metrics, self.tokenizer)
                if final and self.config.probe_text is not None:
                    write_probe(
                        model, self.tokenizer, self.config.probe_text, self.device, directory
                    )
                checkpoint = Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name)
        if final:
            self.tracker.end("finished", model_reference(self.spec, self.config.tracking))

    # ---------------------------------------------------------------- cleanup

    def cleanup(self) -> None:
        self.train_shard = None
        self.validation = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    recipe = FineTuneRecipe(config["loop"])
    recipe.setup()
    try:
        recipe.train()
    except BaseException:
        recipe.tracker.end("failed")
        raise
    finally:
        recipe.cleanup()
