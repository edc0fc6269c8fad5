"""What a hyperparameter search samples and how its trials are scheduled.

The `SearchSpec` of a job becomes a Ray Tune parameter space, a search algorithm (random,
grid or Optuna TPE) and a trial scheduler (ASHA or FIFO); `apply_params` turns a sampled
configuration back into the trial's own `JobSpec`. The driver in `workers.tune` puts
these together.
"""

from __future__ import annotations

import math
from typing import Any

from workers.data import plan_steps
from workers.spec import (
    Choice,
    Grid,
    JobSpec,
    LogUniform,
    LoraAdapter,
    SearchSpec,
    Uniform,
)
from workers.storage import trial_output_uri

# ASHA keeps the best 1/REDUCTION_FACTOR of the trials at each rung. 2 rather than Tune's 4:
# searches here have few trials, and with 4 almost every trial would be stopped at once.
REDUCTION_FACTOR = 2
LORA_FIELDS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout"}
INT_PARAMS = frozenset({"batch_size", "n_epochs", "lora_r", "lora_alpha"})


def apply_params(spec: JobSpec, params: dict[str, Any], trial_id: str) -> JobSpec:
    """The job's spec with a trial's hyperparameters and its own output directory."""
    training = spec.training.model_dump()
    adapter = spec.adapter.model_dump()
    dpo = spec.dpo.model_dump() if spec.dpo is not None else None
    for name, value in params.items():
        value = round(value) if name in INT_PARAMS else value
        if name == "beta":
            if dpo is None:
                raise ValueError("'beta' needs method 'dpo'")
            dpo["beta"] = value
        elif name in LORA_FIELDS:
            if not isinstance(spec.adapter, LoraAdapter):
                raise ValueError(f"'{name}' needs a LoRA adapter")
            adapter[LORA_FIELDS[name]] = value
        else:
            training[name] = value
    return spec.model_validate(
        {
            **spec.model_dump(),
            "training": training,
            "adapter": adapter,
            "dpo": dpo,
            "output_uri": trial_output_uri(spec.output_uri, trial_id),
            "search": None,
        }
    )


def param_space(search: SearchSpec) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {}
    for name, dist in search.space.items():
        if isinstance(dist, Grid):
            space[name] = tune.grid_search(list(dist.values))
        elif isinstance(dist, Choice):
            space[name] = tune.choice(list(dist.values))
        elif isinstance(dist, Uniform):
            space[name] = tune.uniform(dist.low, dist.high)
        elif isinstance(dist, LogUniform):
            space[name] = tune.loguniform(dist.low, dist.high)
    return space


def _candidates(spec: JobSpec, name: str) -> list[float]:
    assert spec.search is not None
    dist = spec.search.space.get(name)
    if dist is None:
        return [float(getattr(spec.training, name))]
    if isinstance(dist, Choice | Grid):
        return [float(v) for v in dist.values]
    return [dist.low, dist.high]


def step_bounds(spec: JobSpec, train_examples: int) -> tuple[int, int]:
    """(first report step of the quickest trial, total steps of the longest trial).

    ASHA needs both: it stops every trial at `max_t`, so that must not fall short of any
    trial's length, and its first rung must come at a step some trial reports at.
    """
    longest, first = 1, math.inf
    for batch_size in _candidates(spec, "batch_size"):
        for n_epochs in _candidates(spec, "n_epochs"):
            training = spec.training.model_copy(
                update={"batch_size": round(batch_size), "n_epochs": round(n_epochs)}
            )
            plan = plan_steps(spec.model_copy(update={"training": training}), train_examples)
            longest = max(longest, plan.total_steps)
            every = spec.training.checkpoint_every_steps or plan.steps_per_epoch
            first = min(first, every, plan.total_steps)
    return int(first), longest


def search_algorithm(search: SearchSpec, seed: int) -> Any:
    # More trials at once than the control plane planned for would hold the CPUs that the
    # trials' data pipelines need, and the cluster deadlocks.
    concurrency = search.max_concurrent_trials or 1
    if search.algorithm == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=concurrency)
    from ray.tune.search import BasicVariantGenerator

    # Seeded: the same job samples the same trials (and a benchmark can give ASHA and FIFO
    # the same ones). TuneConfig cannot limit this generator's concurrency; it can itself.
    return BasicVariantGenerator(random_state=seed, max_concurrent=concurrency)


def trial_scheduler(search: SearchSpec, first_report: int, longest: int) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if search.scheduler == "fifo":
        return FIFOScheduler()
    # Rungs on optimizer steps, so trials of different lengths are compared at equal
    # training; the first rung at the first report, so a poor trial is stopped early.
    return ASHAScheduler(
        time_attr="step",
        max_t=longest,
        grace_period=min(first_report, longest),
        reduction_factor=REDUCTION_FACTOR,
    )
