"""Training files to tokenized examples, through Ray Data.

The pipeline is read (`ray.data.read_text`, one JSON line per row) -> `map_batches`
(parse, check against the shared validator in `workers.formats`, tokenize) ->
materialized -> handed to `TorchTrainer(datasets=...)`, where each worker takes its part
with `ray.train.get_dataset_shard` and pads batches with `collate`.

Each tokenized row has:

- ``input_ids``: int32 token ids, truncated to ``max_length``
- ``labels``: for causal LM, int32 per token (``-100`` on prompt tokens, which carry no
  loss); for classification, the label's index in ``JobSpec.labels``
- ``num_tokens``: ``len(input_ids)``, so throughput can be counted without the padding
- ``truncated``: 1 when the example was longer than ``max_length`` and was cut to it
- preference data (DPO) only: ``rejected_input_ids`` and ``rejected_labels``, the
  non-preferred answer's sequence; ``input_ids``/``labels`` are then the preferred one's
  (see `tokenize_preference`)

Prompt masking: in chat data only assistant messages (with ``weight`` 1, the default)
carry loss; in prompt/completion data only the completion (and the EOS after it); text
data trains on every token. Chat uses the tokenizer's chat template when it has one and
`FALLBACK_CHAT_FORMAT` otherwise.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workers.formats import check_record
from workers.sources import resolve_model_source
from workers.spec import DataFormat, JobSpec, Task

if TYPE_CHECKING:
    import ray.data
    import torch

IGNORE_INDEX = -100
# Used when a tokenizer has no chat template: "<role>: <content>\n" per message, and an
# assistant turn ends with the tokenizer's EOS so the model learns to stop.
FALLBACK_CHAT_FORMAT = "{role}: {content}\n"


class DataError(ValueError):
    """A problem with a job's data that the user can fix (shown to them as is)."""


@dataclass(frozen=True)
class TokenizeOptions:
    model_source: str
    models_dir: str
    data_format: DataFormat
    task: Task
    max_length: int
    labels: tuple[str, ...] | None = None
    # Which file the rows come from, for error messages ("training" | "validation").
    split: str = "training"


_TOKENIZERS: dict[str, Any] = {}


def load_tokenizer(model_source: str, models_dir: str) -> Any:
    """The tokenizer for a model source, cached per process (Ray reuses task processes)."""
    from transformers import AutoTokenizer

    path = resolve_model_source(model_source, Path(models_dir))
    if path not in _TOKENIZERS:
        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]


def pad_token_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    return 0


def _encode(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def _eos(tokenizer: Any) -> list[int]:
    return [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []


def _render(
    tokenizer: Any,
    messages: list[dict[str, str]],
    generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    # Only passed when there are tools: a template may test `tools is not none`.
    extra = {"tools": tools} if tools is not None else {}
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt, **extra
    )
    return str(text)


def _chat_segments(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, trains_on_it) pieces.

    Rendering the conversation one message at a time and taking the differences keeps
    the template's exact text; the cut before an assistant message is at the point where
    a generation prompt ends, which is where the model starts generating at inference.
    """
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        trains = message["role"] == "assistant" and message.get("weight", 1) != 0
        if message["role"] == "assistant":
            prompt = _render(tokenizer, plain[:i], generation_prompt=True, tools=tools)
            if not prompt.startswith(done):
                raise DataError("the tokenizer's chat template does not render incrementally")
            segments.append((prompt[len(done) :], False))
            done = prompt
        full = _render(tokenizer, plain[: i + 1], generation_prompt=False, tools=tools)
        if not full.startswith(done):
            raise DataError("the tokenizer's chat template does not render incrementally")
        segments.append((full[len(done) :], trains))
        done = full
    return [(text, trains) for text, trains in segments if text]


def tokenize_chat(
    tokenizer: Any, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
) -> tuple[list[int], list[int]]:
    """A conversation to ids and labels; `tools` go to the chat template (the fallback
    format, for tokenizers without one, has no way to show them)."""
    ids: list[int] = []
    labels: list[int] = []
    if getattr(tokenizer, "chat_template", None):
        for text, trains in _chat_segments(tokenizer, messages, tools):
            # The template writes its own BOS/EOS, so the tokenizer must not add more.
            piece = _encode(tokenizer, text, special=False)
            ids += piece
            labels += piece if trains else [IGNORE_INDEX] * len(piece)
        return ids, labels
    if tokenizer.bos_token_id is not None:
        ids.append(int(tokenizer.bos_token_id))
        labels.append(IGNORE_INDEX)
    for message in messages:
        trains = message["role"] == "assistant" and message.get("weight", 1) != 0
        if message["role"] == "assistant":
            head = _encode(tokenizer, "assistant: ", special=False)
            body = _encode(tokenizer, message["content"], special=False) + _eos(tokenizer)
            body += _encode(tokenizer, "\n", special=False)
            ids += head + body
            labels += [IGNORE_INDEX] * len(head) + (body if trains else [IGNORE_INDEX] * len(body))
        else:
            text = FALLBACK_CHAT_FORMAT.format(role=message["role"], content=message["content"])
            piece = _encode(tokenizer, text, special=False)
            ids += piece
            labels += [IGNORE_INDEX] * len(piece)
    return ids, labels


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """A conversation as a generation prompt, rendered exactly as training rendered it."""
    if getattr(tokenizer, "chat_template", None):
        return _encode(tokenizer, _render(tokenizer, messages, generation_prompt=True), False)
    # The conversation so far as training renders it (an earlier answer ends with EOS),
    # then the head of the answer to generate.
    ids, _ = tokenize_chat(tokenizer, list(messages))
    return ids + _encode(tokenizer, "assistant: ", special=False)


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """A completion prompt, encoded as `tokenize_prompt_completion` encodes prompts."""
    return _encode(tokenizer, prompt, special=True)


def tokenize_prompt_completion(
    tokenizer: Any, prompt: str, completion: str
) -> tuple[list[int], list[int]]:
    # The prompt is encoded as an inference request would be (with the tokenizer's own
    # special tokens, e.g. Llama's BOS) so training matches what serving sends.
    prompt_ids = _encode(tokenizer, prompt, special=True)
    completion_ids = _encode(tokenizer, completion, special=False) + _eos(tokenizer)
    return prompt_ids + completion_ids, [IGNORE_INDEX] * len(prompt_ids) + completion_ids


def tokenize_text(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    ids = _encode(tokenizer, text, special=True) + _eos(tokenizer)
    return ids, list(ids)


# A preference example (OpenAI's DPO format) is one conversation (``input.messages``) with
# two answers to its last turn, rendered as chat: the chosen one (``preferred_output``) as
# ``input_ids``/``labels``, the other as ``rejected_input_ids``/``rejected_labels``. Only
# the answer carries labels (an assistant message in ``input.messages`` is context), so
# the two share the prompt's tokens and differ only where the answers do.


def _conversation(record: dict[str, Any], output_key: str) -> list[dict[str, Any]]:
    context = [
        {"role": m["role"], "content": m["content"], "weight": 0}
        for m in record["input"]["messages"]
    ]
    answer = record[output_key][0]
    return [*context, {"role": "assistant", "content": answer["content"]}]


def _has_loss(labels: list[int]) -> bool:
    # A causal LM predicts token t+1 from t, so the first label never counts.
    return any(label != IGNORE_INDEX for label in labels[1:])


def tokenize_preference(
    tokenizer: Any, record: dict[str, Any], max_length: int
) -> dict[str, Any] | None:
    """One validated preference line (`workers.formats.check_record`) to a row; None when
    truncation to `max_length` left either answer without a token to learn from."""
    # An empty list shows the model no tools: render it as a conversation without them.
    tools = record["input"].get("tools") or None
    chosen_ids, chosen_labels = tokenize_chat(
        tokenizer, _conversation(record, "preferred_output"), tools
    )
    rejected_ids, rejected_labels = tokenize_chat(
        tokenizer, _conversation(record, "non_preferred_output"), tools
    )
    truncated = len(chosen_ids) > max_length or len(rejected_ids) > max_length
    # Each keeps its start, as chat rows do (tokenize_record says why).
    chosen_ids, chosen_labels = chosen_ids[:max_length], chosen_labels[:max_length]
    rejected_ids, rejected_labels = rejected_ids[:max_length], rejected_labels[:max_length]
    if not (_has_loss(chosen_labels) and _has_loss(rejected_labels)):
        return None
    return {
        "input_ids": chosen_ids,
        "labels": chosen_labels,
        "rejected_input_ids": rejected_ids,
        "rejected_labels": rejected_labels,
        "num_tokens": len(chosen_ids) + len(rejected_ids),
        "truncated": int(truncated),
    }


def tokenize_record(
    tokenizer: Any, record: dict[str, Any], options: TokenizeOptions
) -> dict[str, Any] | None:
    """One parsed line to a row; None when truncation left nothing to learn from."""
    try:
        fmt, label = check_record(record, options.data_format)
    except ValueError as exc:
        raise DataError(f"an example in the {options.split} file is invalid: {exc}") from None
    if options.task == "sequence_classification":
        if fmt != "classification":
            raise DataError(f"classification needs 'text'/'label' examples, got format '{fmt}'")
        full = _encode(tokenizer, record["text"], special=True)
        ids = encode_classification(tokenizer, [record["text"]], options.max_length)[0]
        label_index = _label_index(label, options)
        return {
            "input_ids": ids,
            "labels": label_index,
            "num_tokens": len(ids),
            "truncated": len(full) > len(ids),
        }
    if fmt == "preference":
        return tokenize_preference(tokenizer, record, options.max_length)
    if fmt == "chat":
        ids, labels = tokenize_chat(tokenizer, record["messages"])
    elif fmt == "prompt_completion":
        ids, labels = tokenize_prompt_completion(tokenizer, record["prompt"], record["completion"])
    elif fmt == "text":
        ids, labels = tokenize_text(tokenizer, record["text"])
    else:
        raise DataError("classification examples need task 'sequence_classification'")
    truncated = len(ids) > options.max_length
    # The end goes: serving likewise keeps a prompt's start (its context limit refuses
    # longer ones rather than cutting them).
    ids, labels = ids[: options.max_length], labels[: options.max_length]
    # A causal LM predicts token t+1 from t, so the first label never counts.
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return {"input_ids": ids, "labels": labels, "num_tokens": len(ids), "truncated": truncated}


def encode_classification(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Texts to classify, as training and serving both encode them.

    The tokenizer truncates inside its special tokens, so a long text keeps its closing
    [SEP] (cutting the ids after encoding would drop it and the model would see an input
    it never saw in pre-training). One function for both sides: what a classifier is
    trained on is what it is asked.
    """
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    return [list(ids) for ids in encoded["input_ids"]]


def _label_index(label: str | None, options: TokenizeOptions) -> int:
    if not options.labels:
        raise DataError("a classification job needs its list of labels")
    try:
        return options.labels.index(str(label))
    except ValueError:
        known = ", ".join(repr(x) for x in options.labels)
        raise DataError(
            f"label {label!r} in the {options.split} file is not one of the job's labels ({known})"
        ) from None


def tokenize_batch(batch: dict[str, np.ndarray], options: TokenizeOptions) -> dict[str, Any]:
    """`map_batches` function: a batch of JSON lines to a batch of tokenized rows."""
    tokenizer = load_tokenizer(options.model_source, options.models_dir)
    rows: list[dict[str, Any]] = []
    for line in batch["text"]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"a line of the {options.split} file is not valid JSON: {exc}"
            ) from None
        row = tokenize_record(tokenizer, record, options)
        if row is not None:
            rows.append(row)
    classification = options.task == "sequence_classification"
    out = {
        "input_ids": _ragged([r["input_ids"] for r in rows]),
        "labels": (
            np.array([r["labels"] for r in rows], dtype=np.int64)
            if classification
            else _ragged([r["labels"] for r in rows])
        ),
        "num_tokens": np.array([r["num_tokens"] for r in rows], dtype=np.int64),
        "truncated": np.array([r["truncated"] for r in rows], dtype=np.int64),
    }
    if options.data_format == "preference":
        out["rejected_input_ids"] = _ragged([r["rejected_input_ids"] for r in rows])
        out["rejected_labels"] = _ragged([r["rejected_labels"] for r in rows])
    return out


def _ragged(rows: Sequence[list[int]]) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = np.asarray(row, dtype=np.int32)
    return out


def read_tokenized(uri: str, options: TokenizeOptions) -> ray.data.Dataset:
    """Read one JSONL file (any fsspec URI) and tokenize it; returns a materialized dataset.

    Materializing costs one pass and lets the driver count the examples (the learning-rate
    schedule needs the number of steps) without tokenizing twice; every epoch then reads
    the tokenized blocks from the object store.
    """
    import ray.data

    # A DataError raised while tokenizing must reach the job as itself (its message is
    # for the user), not wrapped in Ray Data's UserCodeException.
    ctx = ray.data.DataContext.get_current()
    ctx.raise_original_map_exception = True
    # Blocks in file order, here and in the trainer's ingest (which inherits this): with
    # the seed, a run is then reproducible, whichever tokenize task finishes first.
    ctx.execution_options.preserve_order = True
    path, filesystem = _arrow_path(uri)
    ds = ray.data.read_text(path, filesystem=filesystem)
    ds = ds.map_batches(
        functools.partial(tokenize_batch, options=options), batch_format="numpy", batch_size=256
    )
    return ds.materialize()


def _arrow_path(uri: str) -> tuple[str, Any]:
    """A path and pyarrow filesystem for Ray Data from an fsspec URI (None: local path)."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fsspec.core.url_to_fs(uri)
    if isinstance(fs, LocalFileSystem):
        return path, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return path, PyFileSystem(FSSpecHandler(fs))


@dataclass(frozen=True)
class JobData:
    train: ray.data.Dataset
    validation: ray.data.Dataset | None
    train_examples: int
    validation_examples: int
    # Examples longer than max_length, cut to it (see tokenize_record).
    train_truncated: int = 0
    validation_truncated: int = 0


def load_job_data(spec: JobSpec, models_dir: str) -> JobData:
    def options(split: str) -> TokenizeOptions:
        return TokenizeOptions(
            model_source=spec.base_model.source,
            models_dir=models_dir,
            data_format=spec.data_format,
            task=spec.task,
            max_length=spec.training.max_length,
            labels=tuple(spec.labels) if spec.labels else None,
            split=split,
        )

    train = read_tokenized(spec.training_file_uri, options("training"))
    validation = (
        read_tokenized(spec.validation_file_uri, options("validation"))
        if spec.validation_file_uri
        else None
    )
    n_train = train.count()
    if n_train == 0:
        raise DataError(
            "the training file has no example left to learn from: every example is empty "
            f"after truncation to max_length={spec.training.max_length}"
        )
    return JobData(
        train,
        validation,
        n_train,
        validation.count() if validation else 0,
        train_truncated=_count_truncated(train),
        validation_truncated=_count_truncated(validation) if validation else 0,
    )


def _count_truncated(ds: ray.data.Dataset) -> int:
    # Read off the materialized blocks: Dataset.sum plans a hash aggregate (seconds).
    return sum(
        int(np.sum(batch["truncated"]))
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy")
    )


@dataclass(frozen=True)
class StepPlan:
    """How the examples of one epoch become optimizer steps on each worker."""

    micro_batch_size: int
    # Rows each worker gets per epoch (Ray's equal split).
    examples_per_worker: int
    micro_batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int


def plan_steps(spec: JobSpec, train_examples: int) -> StepPlan:
    """`training.batch_size` is examples per optimizer step over all workers (OpenAI's
    meaning), split into `num_workers` x `gradient_accumulation_steps` micro-batches."""
    workers = spec.resources.num_workers
    accumulation = spec.training.gradient_accumulation_steps
    # Ray's equal split gives every worker the same number of rows and drops the rest,
    # which keeps the workers' gradient all-reduces in step.
    per_worker = train_examples // workers
    if per_worker == 0:
        raise DataError(
            f"the training file has {train_examples} usable examples, fewer than the "
            f"{workers} workers requested; add data or use fewer workers"
        )
    micro = max(1, spec.training.batch_size // (workers * accumulation))
    micro_batches = math.ceil(per_worker / micro)
    steps = math.ceil(micro_batches / accumulation)
    return StepPlan(micro, per_worker, micro_batches, steps, steps * spec.training.n_epochs)


def collate(batch: dict[str, np.ndarray], pad_id: int, task: Task) -> dict[str, torch.Tensor]:
    """Right-pads a numpy batch of rows to its longest row; padding carries no loss."""
    import torch

    rows = list(batch["input_ids"])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.from_numpy(np.array(row, dtype=np.int64))
        attention_mask[i, : len(row)] = 1
    out = {"input_ids": input_ids, "attention_mask": attention_mask}
    if task == "sequence_classification":
        out["labels"] = torch.as_tensor(np.asarray(batch["labels"]), dtype=torch.long)
    else:
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        for i, row in enumerate(batch["labels"]):
            labels[i, : len(row)] = torch.from_numpy(np.array(row, dtype=np.int64))
        out["labels"] = labels
    return out
