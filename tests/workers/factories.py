"""Small synthetic data sets with a pattern a tiny model learns in a few steps, and specs.

Every data set is drawn from one seeded distribution, so a validation file made with
another seed is held-out data of the same distribution.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from workers.spec import JobSpec

COLORS = ["red", "green", "blue", "yellow", "orange", "purple", "black", "white", "grey", "pink"]
ANIMALS = ["cat", "dog", "bird", "fish", "horse", "cow", "sheep", "goat", "mouse", "lion"]
FRUITS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "pear", "plum"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
# Short texts: a random tiny BERT's pooled output hardly sees one word in a long sentence.
FILLERS = "{0}", "the {0}", "a {0}", "{0} {0}"

# Classification: the label is the kind of the one content word in the text.
KINDS: dict[str, list[str]] = {
    "color": COLORS,
    "animal": ANIMALS,
    "fruit": FRUITS,
    "number": NUMBERS,
}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def prompt_completion_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Colour -> two animals, a fixed mapping."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        i = rng.randrange(len(COLORS))
        rows.append(
            {
                "prompt": f"{COLORS[i]} ->",
                "completion": f" {ANIMALS[i]} {ANIMALS[(i + 1) % len(ANIMALS)]}",
            }
        )
    return rows


def chat_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        i = rng.randrange(len(COLORS))
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "Answer with an animal."},
                    {"role": "user", "content": f"Which animal is {COLORS[i]}?"},
                    {"role": "assistant", "content": f"The {ANIMALS[i]}."},
                ]
            }
        )
    return rows


def classification_rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    kinds = sorted(KINDS)
    rows = []
    for k in range(n):
        kind = kinds[k % len(kinds)]  # balanced, so a constant guess scores 1/len(kinds)
        word = rng.choice(KINDS[kind])
        rows.append({"text": rng.choice(FILLERS).format(word), "label": kind})
    rng.shuffle(rows)
    return rows


def make_spec(tmp: Path, **fields: Any) -> JobSpec:
    """A JobSpec with a tiny-gpt2 LoRA default; `fields` override the top-level fields."""
    spec: dict[str, Any] = {
        "job_id": "ftjob-test",
        "tenant_id": "tenant-test",
        "base_model": {"name": "tiny-gpt2", "source": "tiny:tiny-gpt2"},
        "task": "causal_lm",
        "data_format": "prompt_completion",
        "output_uri": str(tmp / "output"),
        "seed": 0,
        "adapter": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.0},
        "training": {"n_epochs": 3, "batch_size": 16, "learning_rate": 3e-2, "max_length": 64},
        "resources": {"num_workers": 1},
    }
    spec.update(fields)
    if "training_file_uri" not in spec:
        spec["training_file_uri"] = write_jsonl(tmp / "train.jsonl", prompt_completion_rows(96, 0))
    return JobSpec.model_validate(spec)


def preference_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Colour -> animal pairs: the preferred answer names the colour's animal, the other a
    wrong one (the same mapping `chat_rows` teaches)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        i = rng.randrange(len(COLORS))
        wrong = (i + rng.randrange(1, len(ANIMALS))) % len(ANIMALS)
        rows.append(
            {
                "input": {
                    "messages": [
                        {"role": "system", "content": "Answer with an animal."},
                        {"role": "user", "content": f"Which animal is {COLORS[i]}?"},
                    ]
                },
                "preferred_output": [{"role": "assistant", "content": f"The {ANIMALS[i]}."}],
                "non_preferred_output": [
                    {"role": "assistant", "content": f"The {ANIMALS[wrong]}."}
                ],
            }
        )
    return rows
