from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fixtures.ray_cluster import RayCluster
from tests.workers.factories import make_spec, prompt_completion_rows, write_jsonl
from workers.data import (
    IGNORE_INDEX,
    DataError,
    TokenizeOptions,
    collate,
    load_job_data,
    load_tokenizer,
    plan_steps,
    tokenize_record,
)
from workers.spec import DataFormat, Resources, Task

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which animal is red?"},
        {"role": "assistant", "content": "The cat."},
        {"role": "user", "content": "And blue?"},
        {"role": "assistant", "content": "The bird.", "weight": 0},
        {"role": "user", "content": "And green?"},
        {"role": "assistant", "content": "The dog."},
    ]
}


def options(
    models_dir: Path,
    fmt: DataFormat,
    model: str = "tiny-gpt2",
    task: Task = "causal_lm",
    max_length: int = 256,
    labels: tuple[str, ...] | None = None,
) -> TokenizeOptions:
    return TokenizeOptions(f"tiny:{model}", str(models_dir), fmt, task, max_length, labels)


def trained_text(tokenizer: Any, row: dict[str, Any]) -> str:
    ids = [i for i, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    return str(tokenizer.decode(ids))


@pytest.mark.parametrize("model", ["tiny-gpt2", "tiny-llama"])
def test_chat_trains_only_on_weighted_assistant_turns(models_dir: Path, model: str) -> None:
    tokenizer = load_tokenizer(f"tiny:{model}", str(models_dir))
    row = tokenize_record(tokenizer, CHAT, options(models_dir, "chat", model))
    assert row is not None
    full = tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert tokenizer.decode(row["input_ids"]) == full
    eos = tokenizer.eos_token
    assert trained_text(tokenizer, row) == f"The cat.{eos}\nThe dog.{eos}\n"


def test_chat_without_a_template_uses_the_fallback(models_dir: Path) -> None:
    tokenizer = copy.deepcopy(load_tokenizer("tiny:tiny-gpt2", str(models_dir)))
    tokenizer.chat_template = None
    row = tokenize_record(tokenizer, CHAT, options(models_dir, "chat"))
    assert row is not None
    text = tokenizer.decode(row["input_ids"])
    assert "user: Which animal is red?\n" in text
    assert "assistant: The cat." in text
    assert trained_text(tokenizer, row) == "The cat.<|endoftext|>\nThe dog.<|endoftext|>\n"


def test_prompt_completion_masks_the_prompt_and_ends_with_eos(models_dir: Path) -> None:
    tokenizer = load_tokenizer("tiny:tiny-llama", str(models_dir))
    record = {"prompt": "red ->", "completion": " cat dog"}
    row = tokenize_record(tokenizer, record, options(models_dir, "prompt_completion", "tiny-llama"))
    assert row is not None
    assert row["input_ids"][0] == tokenizer.bos_token_id
    assert trained_text(tokenizer, row) == " cat dog</s>"
    assert row["num_tokens"] == len(row["input_ids"])


def test_text_trains_on_everything_and_truncates(models_dir: Path) -> None:
    tokenizer = load_tokenizer("tiny:tiny-gpt2", str(models_dir))
    text = "one two three four five six seven eight nine ten " * 5
    full = tokenize_record(tokenizer, {"text": text}, options(models_dir, "text"))
    cut = tokenize_record(tokenizer, {"text": text}, options(models_dir, "text", max_length=12))
    assert full is not None and cut is not None
    assert full["labels"] == full["input_ids"]
    assert len(full["input_ids"]) > 12
    assert cut["input_ids"] == full["input_ids"][:12]


def test_an_example_truncated_to_its_prompt_is_dropped(models_dir: Path) -> None:
    tokenizer = load_tokenizer("tiny:tiny-gpt2", str(models_dir))
    record = {"prompt": "red green blue yellow orange purple " * 4, "completion": "cat"}
    opts = options(models_dir, "prompt_completion", max_length=8)
    assert tokenize_record(tokenizer, record, opts) is None


def test_classification_maps_labels_through_the_job_labels(models_dir: Path) -> None:
    tokenizer = load_tokenizer("tiny:tiny-bert", str(models_dir))
    opts = options(
        models_dir,
        "classification",
        "tiny-bert",
        "sequence_classification",
        labels=("negative", "positive", "3"),
    )
    row = tokenize_record(tokenizer, {"text": "a great film", "label": "positive"}, opts)
    assert row is not None and row["labels"] == 1
    assert row["input_ids"][0] == tokenizer.cls_token_id
    assert row["input_ids"][-1] == tokenizer.sep_token_id
    numeric = tokenize_record(tokenizer, {"text": "a film", "label": 3}, opts)
    assert numeric is not None and numeric["labels"] == 2
    with pytest.raises(DataError, match="label 'neutral' in the training file is not one"):
        tokenize_record(tokenizer, {"text": "a film", "label": "neutral"}, opts)


def test_records_in_another_format_are_refused(models_dir: Path) -> None:
    tokenizer = load_tokenizer("tiny:tiny-gpt2", str(models_dir))
    with pytest.raises(DataError, match="format 'text' but the file is in format 'chat'"):
        tokenize_record(tokenizer, {"text": "hello"}, options(models_dir, "chat"))


def test_collate_pads_right_and_masks_padding() -> None:
    batch = {
        "input_ids": np.array([np.array([5, 6, 7]), np.array([8])], dtype=object),
        "labels": np.array([np.array([-100, 6, 7]), np.array([8])], dtype=object),
    }
    out = collate(batch, pad_id=0, task="causal_lm")
    assert out["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]


@pytest.mark.ray
def test_ray_data_pipeline_and_step_plan(
    ray_cluster: RayCluster, models_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(
        tmp_path,
        training_file_uri=write_jsonl(tmp_path / "train.jsonl", prompt_completion_rows(50, 0)),
        validation_file_uri="file://"
        + write_jsonl(tmp_path / "val.jsonl", prompt_completion_rows(7, 1)),
        resources={"num_workers": 2},
        training={"n_epochs": 2, "batch_size": 8, "gradient_accumulation_steps": 2},
    )
    data = load_job_data(spec, str(models_dir))
    assert (data.train_examples, data.validation_examples) == (50, 7)
    row = data.train.take(1)[0]
    assert set(row) == {"input_ids", "labels", "num_tokens", "truncated"}
    assert len(row["input_ids"]) == len(row["labels"]) == row["num_tokens"]
    plan = plan_steps(spec, data.train_examples)
    # 25 rows per worker in micro-batches of 8 // (2 workers x 2 accumulation) = 2.
    assert plan.micro_batch_size == 2
    assert plan.micro_batches_per_epoch == 13
    assert plan.steps_per_epoch == 7
    assert plan.total_steps == 14
    with pytest.raises(DataError, match="fewer than the 64 workers"):
        plan_steps(spec.model_copy(update={"resources": Resources(num_workers=64)}), 50)


def test_a_multi_turn_prompt_is_rendered_as_training_rendered_it(models_dir: Path) -> None:
    """Without a chat template too: an earlier answer ends with EOS in both."""
    from workers.data import chat_prompt_ids, tokenize_chat

    tokenizer = copy.deepcopy(load_tokenizer("tiny:tiny-gpt2", str(models_dir)))
    tokenizer.chat_template = None
    turns = [
        {"role": "user", "content": "Which animal is red?"},
        {"role": "assistant", "content": "The cat."},
        {"role": "user", "content": "And blue?"},
    ]
    answer = {"role": "assistant", "content": "The bird."}
    trained, labels = tokenize_chat(tokenizer, [*turns, answer])
    prompt = chat_prompt_ids(tokenizer, turns)
    assert trained[: len(prompt)] == prompt
    # The answer to generate starts where the prompt ends: its head carries no loss.
    assert labels[len(prompt) - 1] == -100 and labels[len(prompt)] != -100
