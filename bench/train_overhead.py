"""What Ray Train costs: the fine-tuning recipe with and without it.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/train_overhead.py [--cpus 2] [--steps 60] [--repeats 3]

Runs the same LoRA fine-tune of tiny-gpt2 on the same synthetic data, with the same
micro-batches, (a) as a plain PyTorch loop in this process, using the recipe's own
pieces (model load, LoRA, collate, loss, AdamW, schedule, clipping), and (b) through
`workers.trainer.build_trainer` on a local Ray cluster with one worker, then (c) the same
fit with two workers for its memory. (a) and (b) alternate `--repeats` times and each
keeps its best figures, so a neighbour's burst of CPU on a shared machine hurts neither
side more than the other. Prints one table:

- tokens/s: non-padding tokens per second of wall time over the training phase (from the
  end of step 1 to the end of the last step, so start-up is not in it)
- start -> first step: from loading the data (tokenizing) to the end of the first step;
  for Ray this includes starting the worker group, the data split and the model load
  (the cluster itself is already running, as in the service)
- peak memory: the largest memory summed over this process and every process it started
  (the local Ray cluster and its workers). For (a) and (b) it is RSS sampled every 0.5 s,
  cheap enough not to slow the timed runs but counting shared pages once per process (an
  over-estimate); for (c), which is not timed, it is PSS (shared pages split between the
  processes that map them) sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

import psutil  # noqa: E402

WORDS = [
    *("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "red", "green", "blue"),
    *("yellow", "cat", "bird", "fish", "one", "two", "three", "four", "five", "six", "seven"),
    *("apple", "banana", "cherry", "grape"),
]


class PeakMemory:
    """Samples the memory of this process and all its descendants in a background thread."""

    def __init__(self, precise: bool, interval_s: float, children: bool = True) -> None:
        self.precise = precise
        self.children = children
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            family = [me, *me.children(recursive=True)] if self.children else [me]
            for process in family:
                # A process may exit between listing and reading it.
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    if self.precise:
                        total += process.memory_full_info().pss
                    else:
                        total += process.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval_s)


@dataclass
class Measured:
    tokens_per_s: float
    to_first_step_s: float
    peak_bytes: int
    steps: int


def write_data(path: Path, n: int, seed: int) -> str:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rng.choices(WORDS, k=rng.randint(120, 180)))}))
            f.write("\n")
    return str(path)


def make_spec(tmp: Path, train_uri: str, steps: int, workers: int, cpus: int, tag: str) -> Any:
    from workers.spec import JobSpec

    batch = 16
    examples = len(Path(train_uri).read_text().splitlines())
    return JobSpec.model_validate(
        {
            "job_id": "bench",
            "tenant_id": "bench",
            "base_model": {"name": "tiny-gpt2", "source": "tiny:tiny-gpt2"},
            "data_format": "text",
            "training_file_uri": train_uri,
            "output_uri": str(tmp / f"out-{tag}"),
            "seed": 0,
            "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
            "training": {
                "n_epochs": max(1, steps * batch // examples),
                "batch_size": batch,
                "learning_rate": 1e-3,
                "max_length": 256,
                "checkpoint_every_steps": 10_000_000,  # one checkpoint, at the end
            },
            "resources": {"num_workers": workers, "cpus_per_worker": cpus},
        }
    )


def run_plain(spec: Any, models_dir: str, cpus: int) -> Measured:
    """The recipe's pieces in a plain loop: no Ray, no DDP, the same batches."""
    import numpy as np
    import torch

    from workers.data import (
        TokenizeOptions,
        collate,
        load_tokenizer,
        pad_token_id,
        plan_steps,
        tokenize_record,
    )
    from workers.loop_parts import lr_lambda
    from workers.modeling import (
        apply_lora,
        causal_lm_loss_sum,
        count_targets,
        load_base_model,
    )
    from workers.sources import resolve_model_source

    torch.set_num_threads(cpus)
    # This process only: the idle Ray cluster started for (b) is not part of (a).
    with PeakMemory(precise=False, interval_s=0.5, children=False) as memory:
        started = time.perf_counter()
        tokenizer = load_tokenizer(spec.base_model.source, models_dir)
        options = TokenizeOptions(
            spec.base_model.source, models_dir, "text", "causal_lm", spec.training.max_length
        )
        with open(spec.training_file_uri) as f:
            rows = [tokenize_record(tokenizer, json.loads(line), options) for line in f]
        examples = [r for r in rows if r is not None]
        plan = plan_steps(spec, len(examples))
        torch.manual_seed(spec.seed)
        source = resolve_model_source(spec.base_model.source, Path(models_dir))
        model: Any = apply_lora(load_base_model(spec, source), spec, spec.adapter)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=spec.training.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_lambda(s, 0, plan.total_steps, spec.training.lr_scheduler)
        )
        pad = pad_token_id(tokenizer)
        step_ends: list[float] = []
        step_tokens: list[int] = []
        micro = plan.micro_batch_size
        for _ in range(spec.training.n_epochs):
            for start in range(0, len(examples), micro):
                chunk = examples[start : start + micro]
                batch = collate(
                    {
                        "input_ids": np.array(
                            [np.array(r["input_ids"]) for r in chunk], dtype=object
                        ),
                        "labels": np.array([np.array(r["labels"]) for r in chunk], dtype=object),
                    },
                    pad,
                    "causal_lm",
                )
                model.train()
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
                loss = causal_lm_loss_sum(logits, batch["labels"])
                (loss / max(1, count_targets(batch["labels"], "causal_lm"))).backward()
                torch.nn.utils.clip_grad_norm_(trainable, spec.training.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step_tokens.append(int(batch["attention_mask"].sum()))
                step_ends.append(time.perf_counter())
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
    return Measured(
        tokens_per_s=sum(step_tokens[1:]) / (step_ends[-1] - step_ends[0]),
        to_first_step_s=step_ends[0] - started,
        peak_bytes=memory.peak,
        steps=len(step_ends),
    )


def run_ray(spec: Any, models_dir: str, tmp: Path, precise_memory: bool) -> Measured:
    from workers.data import load_job_data, plan_steps
    from workers.report import JsonLinesSink, Reporter, read_json_lines
    from workers.trainer import build_trainer

    events_path = Path(spec.output_uri) / "events.jsonl"
    events_path.parent.mkdir(parents=True, exist_ok=True)
    reporter = Reporter("bench", "bench", JsonLinesSink(path=str(events_path)))
    interval = 0.2 if precise_memory else 0.5
    with PeakMemory(precise=precise_memory, interval_s=interval) as memory:
        started = time.time()
        data = load_job_data(spec, models_dir)
        plan = plan_steps(spec, data.train_examples)
        build_trainer(spec, data, plan, models_dir=models_dir, reporter=reporter).fit()
    metrics = [e for e in read_json_lines(str(events_path)) if e.type == "metrics"]
    # Each metrics event is sent right after its step: its timestamp marks the step's end.
    ends = [e.created_at for e in metrics]
    tokens = [e.data["trained_tokens"] for e in metrics]
    return Measured(
        tokens_per_s=(tokens[-1] - tokens[0]) / (ends[-1] - ends[0]),
        to_first_step_s=ends[0] - started,
        peak_bytes=memory.peak,
        steps=len(metrics),
    )


def best(runs: list[Measured]) -> Measured:
    return Measured(
        tokens_per_s=max(r.tokens_per_s for r in runs),
        to_first_step_s=min(r.to_first_step_s for r in runs),
        peak_bytes=max(r.peak_bytes for r in runs),
        steps=runs[0].steps,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cpus", type=int, default=2, help="threads / CPUs per worker")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import logging

    import ray

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-") as name:
        tmp = Path(name)
        models_dir = str(tmp / "models")
        train_uri = write_data(tmp / "train.jsonl", 240, seed=0)
        two = make_spec(tmp, train_uri, args.steps, workers=2, cpus=1, tag="pair")

        cluster_started = time.perf_counter()
        ray.init(
            num_cpus=max(4, 2 * args.cpus),
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
        ray.data.DataContext.get_current().enable_progress_bars = False
        cluster_s = time.perf_counter() - cluster_started
        plains: list[Measured] = []
        singles: list[Measured] = []
        for repeat in range(args.repeats):
            one = make_spec(tmp, train_uri, args.steps, 1, args.cpus, tag=f"one-{repeat}")
            plains.append(run_plain(one, models_dir, args.cpus))
            singles.append(run_ray(one, models_dir, tmp, precise_memory=False))
        plain, single = best(plains), best(singles)
        pair = run_ray(two, models_dir, tmp, precise_memory=True)
        ray.shutdown()

    gib = 1024**3
    rows = [
        ("(a) plain PyTorch loop", plain),
        ("(b) TorchTrainer, 1 worker", single),
        ("(c) TorchTrainer, 2 workers", pair),
    ]
    print(f"\ntiny-gpt2 LoRA, {args.cpus} CPU thread(s) per worker, best of {args.repeats}")
    print("tokens/s of each repeat:")
    print("  (a) " + " ".join(f"{r.tokens_per_s:.0f}" for r in plains))
    print("  (b) " + " ".join(f"{r.tokens_per_s:.0f}" for r in singles))
    print(f"local Ray cluster start (not in the figures below): {cluster_s:.1f} s")
    print(f"{'run':<30} {'steps':>5} {'tokens/s':>10} {'start->step 1':>14} {'peak memory':>16}")
    for label, m in rows:
        print(
            f"{label:<30} {m.steps:>5} {m.tokens_per_s:>10.0f} {m.to_first_step_s:>12.1f} s "
            f"{m.peak_bytes / gib:>8.2f} GiB {'PSS' if m is pair else 'RSS'}"
        )
    ratio = single.tokens_per_s / plain.tokens_per_s
    overhead = single.to_first_step_s - plain.to_first_step_s
    print(f"\nthroughput ratio (b)/(a): {ratio:.3f}   (target >= 0.95)")
    print(
        f"fixed overhead (b) start->step 1: {single.to_first_step_s:.1f} s, "
        f"{overhead:+.1f} s over (a)   (target <= 15 s)"
    )
    print(f"2-worker fit peak memory (PSS): {pair.peak_bytes / gib:.2f} GiB   (target < 4 GiB)")


if __name__ == "__main__":
    main()
