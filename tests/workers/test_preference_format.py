"""OpenAI's preference format (DPO): its validator, its tokenization and its batches."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from workers.data import (
    IGNORE_INDEX,
    DataError,
    TokenizeOptions,
    chat_prompt_ids,
    load_tokenizer,
    tokenize_batch,
    tokenize_preference,
    tokenize_record,
)
from workers.formats import DataFormatError, validate_bytes
from workers.preference_data import collate_preference, sequence_logps

SYSTEM = {"role": "system", "content": "Answer with one animal."}
USER = {"role": "user", "content": "Which animal is red?"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup_colour",
            "description": "The colour of an animal.",
            "parameters": {"type": "object", "properties": {"animal": {"type": "string"}}},
        },
    }
]


def answer(content: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": content}]


def pair(**changes: Any) -> dict[str, Any]:
    """A valid preference line, with `changes` applied (a value of None removes the key)."""
    record: dict[str, Any] = {
        "input": {"messages": [SYSTEM, USER]},
        "preferred_output": answer("The cat."),
        "non_preferred_output": answer("The dog."),
    }
    for key, value in changes.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    return record


def with_input(**changes: Any) -> dict[str, Any]:
    prompt: dict[str, Any] = {"messages": [SYSTEM, USER]}
    for key, value in changes.items():
        if value is None:
            del prompt[key]
        else:
            prompt[key] = value
    return pair(input=prompt)


def jsonl(*records: Any) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def tool(**changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(TOOLS[0])
    spec.update(changes)
    return spec


# (case, the bad line, what the error must say). The bad line is line 2 of its file.
REFUSALS: list[tuple[str, Any, str]] = [
    ("input_missing", pair(input=None), "missing field 'input'"),
    ("input_not_an_object", pair(input="Which animal is red?"), "'input' must be an object"),
    (
        "input_unknown_field",
        with_input(temperature=0.5),
        "unknown field 'input.temperature': 'input' has the fields 'messages', 'tools'",
    ),
    ("messages_missing", with_input(messages=None), "missing field 'input.messages'"),
    ("messages_not_a_list", with_input(messages="hi"), "'input.messages' must be a non-empty list"),
    ("messages_empty", with_input(messages=[]), "'input.messages' must be a non-empty list"),
    ("message_not_an_object", with_input(messages=["hi"]), "input.messages[0] must be an object"),
    (
        "message_bad_role",
        with_input(messages=[{"role": "bot", "content": "hi"}]),
        "input.messages[0].role 'bot' is not one of system, user, assistant",
    ),
    (
        "message_content_not_a_string",
        with_input(messages=[SYSTEM, {"role": "user", "content": ["hi"]}]),
        "input.messages[1].content must be a string",
    ),
    (
        "message_content_missing",
        with_input(messages=[{"role": "user"}]),
        "input.messages[0].content must be a string",
    ),
    (
        "message_content_empty",
        with_input(messages=[{"role": "user", "content": "  "}]),
        "input.messages[0].content is empty",
    ),
    (
        "messages_end_with_assistant",
        with_input(messages=[USER, answer("The cat.")[0]]),
        "input.messages[1] is an assistant message: 'input.messages' must end with the user turn",
    ),
    ("preferred_missing", pair(preferred_output=None), "missing field 'preferred_output'"),
    (
        "non_preferred_missing",
        pair(non_preferred_output=None),
        "missing field 'non_preferred_output'",
    ),
    (
        "preferred_not_a_list",
        pair(preferred_output=answer("The cat.")[0]),
        "'preferred_output' must be a list with exactly one assistant message, got dict",
    ),
    (
        "non_preferred_not_a_list",
        pair(non_preferred_output="The dog."),
        "'non_preferred_output' must be a list with exactly one assistant message, got str",
    ),
    ("preferred_empty", pair(preferred_output=[]), "'preferred_output' is empty"),
    (
        "preferred_two_messages",
        pair(preferred_output=answer("The cat.") + answer("Or the fox.")),
        "'preferred_output' has 2 messages: it must hold exactly one assistant message",
    ),
    (
        "non_preferred_not_an_object",
        pair(non_preferred_output=["The dog."]),
        "non_preferred_output[0] must be an object",
    ),
    (
        "preferred_role_not_assistant",
        pair(preferred_output=[{"role": "user", "content": "The cat."}]),
        "preferred_output[0].role must be 'assistant', got 'user'",
    ),
    (
        "non_preferred_content_missing",
        pair(non_preferred_output=[{"role": "assistant"}]),
        "non_preferred_output[0].content must be a string",
    ),
    (
        "preferred_content_not_a_string",
        pair(preferred_output=[{"role": "assistant", "content": 3}]),
        "preferred_output[0].content must be a string",
    ),
    (
        "non_preferred_content_empty",
        pair(non_preferred_output=answer("")),
        "non_preferred_output[0].content is empty",
    ),
    (
        "same_answers",
        pair(non_preferred_output=answer("The cat.")),
        "are the same: there is nothing to prefer",
    ),
    ("tools_not_a_list", with_input(tools=TOOLS[0]), "'input.tools' must be a list of tools"),
    ("tool_not_an_object", with_input(tools=["lookup_colour"]), "input.tools[0] must be an object"),
    (
        "tool_type_not_function",
        with_input(tools=[tool(type="retrieval")]),
        "input.tools[0].type must be 'function', got 'retrieval'",
    ),
    (
        "tool_function_missing",
        with_input(tools=[{"type": "function"}]),
        "input.tools[0].function must be an object",
    ),
    (
        "tool_function_name_empty",
        with_input(tools=[TOOLS[0], tool(function={"name": ""})]),
        "input.tools[1].function.name must be a non-empty string",
    ),
    (
        "tool_function_name_missing",
        with_input(tools=[tool(function={"parameters": {}})]),
        "input.tools[0].function.name must be a non-empty string",
    ),
    (
        "tool_parameters_not_an_object",
        with_input(tools=[tool(function={"name": "f", "parameters": "animal"})]),
        "input.tools[0].function.parameters must be an object",
    ),
    (
        "parallel_tool_calls_not_a_bool",
        with_input(parallel_tool_calls="yes"),
        "'input.parallel_tool_calls' must be true or false",
    ),
    (
        "misspelt_field",
        {**pair(preferred_output=None), "prefered_output": answer("The cat.")},
        "unknown field 'prefered_output': a preference example has the fields 'input', "
        "'preferred_output', 'non_preferred_output'",
    ),
    (
        "tools_at_the_top",
        {**pair(), "tools": TOOLS},
        "unknown field 'tools'",
    ),
    (
        "mixed_with_chat",
        {**pair(), "messages": [USER, answer("The cat.")[0]]},
        "a line has 'messages' and also the preference format's 'input', 'preferred_output', "
        "'non_preferred_output'; use one format",
    ),
    (
        "mixed_with_text",
        {"text": "The cat.", "preferred_output": answer("The cat.")},
        "a line has 'text' and also the preference format's 'preferred_output'; use one format",
    ),
]


@pytest.mark.parametrize(("case", "line", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_bad_preference_line_is_refused_naming_the_line_and_field(
    case: str, line: Any, message: str
) -> None:
    with pytest.raises(DataFormatError) as info:
        validate_bytes([jsonl(pair(), line, pair())])
    assert info.value.line == 2
    assert str(info.value).startswith("line 2: ")
    assert message in info.value.detail


def test_valid_preference_files_pass() -> None:
    multi_turn = with_input(
        messages=[SYSTEM, USER, answer("The cat.")[0], {"role": "user", "content": "And blue?"}]
    )
    multi_turn["preferred_output"] = answer("The bird.")
    records = [
        pair(),
        with_input(tools=TOOLS, parallel_tool_calls=False),
        with_input(messages=[USER]),
        with_input(tools=[]),
        multi_turn,
    ]
    # Chunks cut mid-line, as an upload streams.
    content = jsonl(*records) + b"\n"
    summary = validate_bytes([content[i : i + 37] for i in range(0, len(content), 37)])
    assert (summary.format, summary.examples, summary.bytes) == ("preference", 5, len(content))
    assert summary.labels == []


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            [{"messages": [USER, answer("The cat.")[0]]}, pair()],
            "this line is in format 'preference' but the file is in format 'chat'",
        ),
        (
            [pair(), pair(), {"messages": [USER, answer("The cat.")[0]]}],
            "this line is in format 'chat' but the file is in format 'preference'",
        ),
    ],
)
def test_a_file_mixing_chat_and_preference_lines_is_refused(lines: list[Any], message: str) -> None:
    with pytest.raises(DataFormatError) as info:
        validate_bytes([jsonl(*lines)])
    assert info.value.line == len(lines)
    assert message in info.value.detail


def test_keys_of_no_format_are_refused_listing_the_preference_keys() -> None:
    with pytest.raises(DataFormatError, match="line 1: no known format") as info:
        validate_bytes([jsonl({"question": "a", "answer": "b"})])
    assert "'input'/'preferred_output'/'non_preferred_output'" in info.value.detail


# ------------------------------------------------------------------------- tokenization


def tokenizer_for(models_dir: Path, template: str) -> Any:
    tokenizer = load_tokenizer("tiny:tiny-gpt2", str(models_dir))
    if template == "fallback":
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.chat_template = None
    return tokenizer


def answer_start(labels: list[int]) -> int:
    return next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)


def trained_text(tokenizer: Any, ids: list[int], labels: list[int]) -> str:
    kept = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    return str(tokenizer.decode(kept))


MULTI_TURN = {
    "input": {
        "messages": [
            SYSTEM,
            USER,
            {"role": "assistant", "content": "The fox."},
            {"role": "user", "content": "And blue?"},
        ]
    },
    "preferred_output": answer("The bird."),
    "non_preferred_output": answer("The cow, the sheep and the goat."),
}


@pytest.mark.parametrize("template", ["chat_template", "fallback"])
def test_only_the_answers_carry_labels_and_the_pair_shares_its_prompt(
    models_dir: Path, template: str
) -> None:
    tokenizer = tokenizer_for(models_dir, template)
    row = tokenize_preference(tokenizer, MULTI_TURN, max_length=512)
    assert row is not None
    eos = tokenizer.eos_token
    # The assistant turn inside the input ("The fox.") is context, not trained on.
    assert trained_text(tokenizer, row["input_ids"], row["labels"]) == f"The bird.{eos}\n"
    assert (
        trained_text(tokenizer, row["rejected_input_ids"], row["rejected_labels"])
        == f"The cow, the sheep and the goat.{eos}\n"
    )
    start = answer_start(row["labels"])
    assert start == answer_start(row["rejected_labels"])
    assert row["input_ids"][:start] == row["rejected_input_ids"][:start]
    # Labels run from the answer's start to the end, and equal the ids there.
    assert row["labels"][start:] == row["input_ids"][start:]
    assert row["rejected_labels"][start:] == row["rejected_input_ids"][start:]
    # The shared prompt is what serving sends for the conversation.
    single = tokenize_preference(tokenizer, pair(), max_length=512)
    assert single is not None
    prompt = chat_prompt_ids(tokenizer, [SYSTEM, USER])
    assert single["input_ids"][: answer_start(single["labels"])] == prompt
    assert single["rejected_input_ids"][: answer_start(single["rejected_labels"])] == prompt
    assert row["num_tokens"] == len(row["input_ids"]) + len(row["rejected_input_ids"])
    assert row["truncated"] == 0


def test_tools_are_rendered_by_the_chat_template(models_dir: Path) -> None:
    tokenizer = copy.deepcopy(load_tokenizer("tiny:tiny-gpt2", str(models_dir)))
    tokenizer.chat_template = (
        "{% if tools %}<|tools|>\n{% for t in tools %}{{ t.function.name }}\n{% endfor %}"
        "{% endif %}" + tokenizer.chat_template
    )
    record = with_input(tools=TOOLS)
    row = tokenize_preference(tokenizer, record, max_length=512)
    plain = tokenize_preference(tokenizer, pair(), max_length=512)
    assert row is not None and plain is not None
    start = answer_start(row["labels"])
    prompt = tokenizer.decode(row["input_ids"][:start])
    assert prompt.startswith("<|tools|>\nlookup_colour\n")
    assert "lookup_colour" not in tokenizer.decode(plain["input_ids"])
    # The tools are prompt: the answer is what is trained on, as without them.
    assert trained_text(tokenizer, row["input_ids"], row["labels"]) == trained_text(
        tokenizer, plain["input_ids"], plain["labels"]
    )


def test_the_fallback_format_ignores_tools(models_dir: Path) -> None:
    tokenizer = tokenizer_for(models_dir, "fallback")
    with_tools = tokenize_preference(tokenizer, with_input(tools=TOOLS), max_length=512)
    assert with_tools == tokenize_preference(tokenizer, pair(), max_length=512)


def test_truncation_keeps_each_start_and_drops_pairs_left_without_an_answer(
    models_dir: Path,
) -> None:
    tokenizer = load_tokenizer("tiny:tiny-gpt2", str(models_dir))
    full = tokenize_preference(tokenizer, MULTI_TURN, max_length=512)
    assert full is not None
    start = answer_start(full["labels"])
    short, long = len(full["input_ids"]), len(full["rejected_input_ids"])
    assert start < short < long
    # Only the longer (rejected) answer is cut: the row says so, the chosen side is whole.
    cut = tokenize_preference(tokenizer, MULTI_TURN, max_length=short)
    assert cut is not None and cut["truncated"] == 1
    assert cut["input_ids"] == full["input_ids"]
    assert cut["rejected_input_ids"] == full["rejected_input_ids"][:short]
    assert cut["rejected_labels"] == full["rejected_labels"][:short]
    assert cut["num_tokens"] == 2 * short
    # One answer token left on each side is still something to learn from...
    one = tokenize_preference(tokenizer, MULTI_TURN, max_length=start + 1)
    assert one is not None
    assert [x != IGNORE_INDEX for x in one["labels"]].count(True) == 1
    assert [x != IGNORE_INDEX for x in one["rejected_labels"]].count(True) == 1
    # ...the prompt alone is not.
    assert tokenize_preference(tokenizer, MULTI_TURN, max_length=start) is None


def options(models_dir: Path, fmt: Any, task: Any = "causal_lm") -> TokenizeOptions:
    return TokenizeOptions("tiny:tiny-gpt2", str(models_dir), fmt, task, 512)


def test_tokenize_record_routes_preference_lines(models_dir: Path) -> None:
    tokenizer = load_tokenizer("tiny:tiny-gpt2", str(models_dir))
    row = tokenize_record(tokenizer, MULTI_TURN, options(models_dir, "preference"))
    assert row == tokenize_preference(tokenizer, MULTI_TURN, max_length=512)
    with pytest.raises(DataError, match=r"the training file is invalid: .*nothing to prefer"):
        tokenize_record(
            tokenizer,
            pair(non_preferred_output=answer("The cat.")),
            options(models_dir, "preference"),
        )
    with pytest.raises(DataError, match="classification needs 'text'/'label' examples"):
        tokenize_record(
            tokenizer, pair(), options(models_dir, "preference", "sequence_classification")
        )
    with pytest.raises(DataError, match="format 'preference' but the file is in format 'chat'"):
        tokenize_record(tokenizer, pair(), options(models_dir, "chat"))


def test_tokenize_batch_adds_the_rejected_columns_for_preference_data_only(
    models_dir: Path,
) -> None:
    lines = np.array([json.dumps(pair()), json.dumps(MULTI_TURN)], dtype=object)
    out = tokenize_batch({"text": lines}, options(models_dir, "preference"))
    assert set(out) == {
        "input_ids",
        "labels",
        "rejected_input_ids",
        "rejected_labels",
        "num_tokens",
        "truncated",
    }
    assert len(out["rejected_input_ids"]) == 2
    assert out["rejected_input_ids"][1].dtype == np.int32
    assert out["num_tokens"].tolist() == [
        len(out["input_ids"][i]) + len(out["rejected_input_ids"][i]) for i in range(2)
    ]
    chat = json.dumps({"messages": [USER, answer("The cat.")[0]]})
    plain = tokenize_batch({"text": np.array([chat], dtype=object)}, options(models_dir, "chat"))
    assert set(plain) == {"input_ids", "labels", "num_tokens", "truncated"}


# ----------------------------------------------------------------------------- batches


def ragged(*rows: list[int]) -> np.ndarray:
    out = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        out[i] = np.asarray(row, dtype=np.int32)
    return out


def test_collate_preference_stacks_chosen_then_rejected_padded_to_the_longest() -> None:
    batch = {
        "input_ids": ragged([1, 2, 3], [4, 5]),
        "labels": ragged([-100, 2, 3], [-100, 5]),
        # Equal-length rows, which numpy would happily turn into a 2-D array.
        "rejected_input_ids": ragged([1, 2, 6, 7], [4, 8]),
        "rejected_labels": ragged([-100, 2, 6, 7], [-100, 8]),
    }
    out = collate_preference(batch, pad_id=0)
    assert set(out) == {"input_ids", "attention_mask", "labels"}
    assert out["input_ids"].tolist() == [[1, 2, 3, 0], [4, 5, 0, 0], [1, 2, 6, 7], [4, 8, 0, 0]]
    assert out["attention_mask"].tolist() == [
        [1, 1, 1, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 1, 0, 0],
    ]
    ignore = IGNORE_INDEX
    assert out["labels"].tolist() == [
        [ignore, 2, 3, ignore],
        [ignore, 5, ignore, ignore],
        [ignore, 2, 6, 7],
        [ignore, 8, ignore, ignore],
    ]
    assert out["input_ids"].dtype == out["labels"].dtype == torch.long
    with pytest.raises(ValueError, match="2 chosen rows but 1 rejected"):
        collate_preference({**batch, "rejected_input_ids": ragged([1, 2])}, pad_id=0)


def test_sequence_logps_sums_the_shifted_label_log_probabilities() -> None:
    values = [
        [[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [0.0, 3.0, 1.0]],
        [[-2.0, 1.0, 0.0], [0.3, 0.3, -4.0], [9.0, 9.0, 9.0]],
    ]
    # Position 0's label never counts (nothing predicts it); row 1's last is padding.
    labels = torch.tensor([[IGNORE_INDEX, 2, 1], [IGNORE_INDEX, 0, IGNORE_INDEX]])

    def log_softmax(row: list[float], index: int) -> float:
        return row[index] - math.log(sum(math.exp(x) for x in row))

    expected = [
        log_softmax(values[0][0], 2) + log_softmax(values[0][1], 1),
        log_softmax(values[1][0], 0),
    ]
    got = sequence_logps(torch.tensor(values), labels)
    assert got.shape == (2,)
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    # Half-precision logits are summed in float32.
    half = sequence_logps(torch.tensor(values, dtype=torch.bfloat16), labels)
    assert half.dtype == torch.float32
    assert half.tolist() == pytest.approx(expected, abs=0.05)
    # A -inf logit at an ignored position does not turn the sum into nan.
    masked = torch.tensor(values)
    masked[1, 1, 0] = float("-inf")
    assert sequence_logps(masked, labels).tolist() == pytest.approx(expected, abs=1e-6)
