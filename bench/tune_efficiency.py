"""What ASHA early stopping saves: the same search with the ASHA and the FIFO scheduler.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/tune_efficiency.py [--trials 8] [--epochs 3]

Runs `workers.tune.run_search` twice on a local Ray cluster, on the same synthetic data
(a fixed colour -> animal mapping tiny-gpt2 learns in a few dozen steps, with held-out
validation data from the same distribution) and with the same seeded random search, so
both schedulers see the same trial configurations in the same order: learning rate
log-uniform over [1e-4, 1e-1] and LoRA rank in {4, 8}. Each trial evaluates and reports
every `--report-every` steps. Prints, per scheduler:

- training steps: optimizer steps summed over all trials (what the search cost)
- wall time: the whole search, trials started two at a time
- best eval loss: the winning trial's validation loss (the published model's)

and the ASHA/FIFO ratios, against the target (ASHA uses <= 60% of FIFO's steps and finds
a best loss within 2% of FIFO's).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# A throwaway local cluster needs no token, and must not write one to ~/.ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
)

COLORS = ["red", "green", "blue", "yellow", "orange", "purple", "black", "white", "grey", "pink"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat", "mouse", "lion"]


def write_data(path: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as f:
        for _ in range(n):
            i = rng.randrange(len(COLORS))
            row = {"prompt": f"{COLORS[i]} ->", "completion": f" {ANIMALS[i]}"}
            f.write(json.dumps(row) + "\n")
    return str(path)


@dataclass
class Outcome:
    scheduler: str
    steps: int
    wall_s: float
    best_loss: float
    trials: int
    early_stopped: int


def run(scheduler: str, args: argparse.Namespace, tmp: Path, models_dir: str) -> Outcome:
    from workers.data import load_job_data, plan_steps
    from workers.report import JsonLinesSink, Reporter
    from workers.spec import JobSpec
    from workers.tune import run_search

    spec = JobSpec.model_validate(
        {
            "job_id": f"ftjob-bench-{scheduler}",
            "tenant_id": "bench",
            "base_model": {"name": "tiny-gpt2", "source": "tiny:tiny-gpt2"},
            "data_format": "prompt_completion",
            "training_file_uri": str(tmp / "train.jsonl"),
            "validation_file_uri": str(tmp / "val.jsonl"),
            "output_uri": str(tmp / scheduler),
            "seed": args.seed,
            "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
            "training": {
                "n_epochs": args.epochs,
                "batch_size": 16,
                "max_length": 32,
                "lr_scheduler": "constant",
                "eval_every_steps": args.report_every,
                "checkpoint_every_steps": args.report_every,
            },
            "search": {
                "space": {
                    "learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-1},
                    "lora_r": {"type": "choice", "values": [4, 8]},
                },
                "num_trials": args.trials,
                "algorithm": "random",
                "scheduler": scheduler,
                "max_concurrent_trials": args.concurrency,
            },
        }
    )
    reporter = Reporter(spec.job_id, spec.tenant_id, JsonLinesSink(path=str(tmp / "events.jsonl")))
    data = load_job_data(spec, models_dir)
    started = time.perf_counter()
    outcome = run_search(spec, data, plan_steps(spec, data.train_examples), reporter, models_dir)
    wall = time.perf_counter() - started
    assert outcome is not None, "nothing asked the search to pause"
    search, best = outcome.search, outcome.best_trial
    assert search is not None and best is not None
    return Outcome(
        scheduler=scheduler,
        steps=search.total_steps,
        wall_s=wall,
        best_loss=best.value,
        trials=search.trials,
        early_stopped=search.early_stopped_trials,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--report-every", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=4, help="logical CPUs of the local cluster")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import ray

    from service.stack import start_ray_head

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-tune-") as name:
        tmp = Path(name)
        models_dir = str(tmp / "models")
        write_data(tmp / "train.jsonl", 192, seed=0)
        write_data(tmp / "val.jsonl", 48, seed=1)
        # A head of its own on free ports (the way the service starts one): the workers
        # are told its address, so Ray Train's clean-up of a trial that ASHA stopped finds
        # this cluster even when another one runs on the machine.
        head = start_ray_head(
            Path(tempfile.mkdtemp(dir=tmp, prefix="ray-")),
            num_cpus=args.cpus,
            env={
                k: os.environ[k]
                for k in ("PYTHONPATH", "RAY_AUTH_MODE", "HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY")
            },
            extra_args=("--num-gpus=0",),
        )
        ray.init(address=head.gcs_address, logging_level=logging.WARNING, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            fifo = run("fifo", args, tmp, models_dir)
            asha = run("asha", args, tmp, models_dir)
        finally:
            ray.shutdown()
            head.process.stop()

    print(
        f"\n{args.trials} trials, tiny-gpt2 LoRA, {args.epochs} epochs of 12 steps, "
        f"reports every {args.report_every} steps, {args.concurrency} trials at a time"
    )
    header = f"{'scheduler':<10} {'steps':>7} {'wall s':>8} {'best eval loss':>15} {'stopped':>8}"
    print(header)
    print("-" * len(header))
    for o in (fifo, asha):
        print(
            f"{o.scheduler:<10} {o.steps:>7} {o.wall_s:>8.1f} {o.best_loss:>15.4f} "
            f"{o.early_stopped:>4}/{o.trials:<3}"
        )
    step_ratio = asha.steps / fifo.steps
    wall_ratio = asha.wall_s / fifo.wall_s
    loss_ratio = asha.best_loss / fifo.best_loss
    print(f"\nASHA/FIFO training steps: {step_ratio:.2f}  (target <= 0.60)")
    print(f"ASHA/FIFO wall time:      {wall_ratio:.2f}")
    print(f"ASHA/FIFO best eval loss: {loss_ratio:.3f} (target <= 1.02)")
    met = step_ratio <= 0.60 and loss_ratio <= 1.02
    print("target met" if met else "target NOT met")


if __name__ == "__main__":
    main()
