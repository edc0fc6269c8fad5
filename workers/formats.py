"""Training-data formats and the validator shared by the control plane and the workers.

A file is JSONL; every line is one example in one of five formats, and all lines of a
file share a format:

- chat:              {"messages": [{"role": "user", "content": "..."}, ...]}
- prompt_completion: {"prompt": "...", "completion": "..."}
- text:              {"text": "..."}
- classification:    {"text": "...", "label": "positive" | 3}
- preference:        {"input": {"messages": [...], "tools": [...]},
                      "preferred_output": [{"role": "assistant", "content": "..."}],
                      "non_preferred_output": [{"role": "assistant", "content": "..."}]}
                     (OpenAI's DPO format: two answers to the same conversation)

The validator consumes raw bytes incrementally so an upload can be checked while it
streams to storage, and its errors always name the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from workers.spec import DataFormat

CHAT_ROLES = ("system", "user", "assistant")
# Labels are kept for the label vocabulary only while there are few of them.
MAX_DISTINCT_LABELS = 10_000
# OpenAI's preference format: its top-level keys, and those `input` may carry. Anything
# else is refused, so that a misspelt key is not silently ignored.
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
PREFERENCE_INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")
# The keys that identify the other formats (a line mixing them with PREFERENCE_KEYS is refused).
_OTHER_FORMAT_KEYS = ("messages", "prompt", "completion", "text", "label")


class DataFormatError(ValueError):
    """A problem in a training file; `line` is 1-based, or None for the file as a whole."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        self.detail = message
        super().__init__(f"line {line}: {message}" if line is not None else message)


class FileTooLarge(DataFormatError):
    pass


@dataclass
class FileSummary:
    format: DataFormat
    examples: int
    bytes: int
    labels: list[str] = field(default_factory=list)


def detect_format(record: dict[str, Any]) -> DataFormat:
    """Which format a parsed line is in, by its keys; raises ValueError when unclear."""
    if any(key in record for key in PREFERENCE_KEYS):
        mixed = [key for key in _OTHER_FORMAT_KEYS if key in record]
        if mixed:
            raise ValueError(
                f"a line has {_quoted(mixed)} and also the preference format's "
                f"{_quoted(k for k in PREFERENCE_KEYS if k in record)}; use one format"
            )
        return "preference"
    if "messages" in record:
        if "prompt" in record or "text" in record:
            raise ValueError("a line has 'messages' and also 'prompt' or 'text'; use one format")
        return "chat"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "label" in record:
        return "classification"
    if "text" in record:
        return "text"
    keys = ", ".join(sorted(record)) or "none"
    raise ValueError(
        "no known format: expected 'messages', 'prompt'/'completion', 'text', "
        "'text'/'label', or 'input'/'preferred_output'/'non_preferred_output' "
        f"(keys found: {keys})"
    )


def _quoted(keys: Iterable[str]) -> str:
    return ", ".join(f"'{key}'" for key in keys)


def _nonempty_str(record: dict[str, Any], key: str) -> str:
    if key not in record:
        raise ValueError(f"missing field '{key}'")
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"'{key}' is empty")
    return value


def _check_messages(messages: Any, where: str) -> list[dict[str, Any]]:
    """A list of chat messages; `where` is its path in the line, for the error messages."""
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"'{where}' must be a non-empty list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"{where}[{i}] must be an object")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise ValueError(f"{where}[{i}].role {role!r} is not one of {', '.join(CHAT_ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"{where}[{i}].content must be a string")
        if not content.strip():
            raise ValueError(f"{where}[{i}].content is empty")
        weight = message.get("weight")
        if weight is not None and weight not in (0, 1):
            raise ValueError(f"{where}[{i}].weight must be 0 or 1")
    return messages


def _check_chat(record: dict[str, Any]) -> None:
    messages = _check_messages(record["messages"], "messages")
    if not any(message["role"] == "assistant" for message in messages):
        raise ValueError("no assistant message: there is nothing to learn from this example")


def _check_tools(tools: Any) -> None:
    # The shape chat templates read: tool.type, tool.function.name (and .parameters).
    if not isinstance(tools, list):
        raise ValueError(f"'input.tools' must be a list of tools, got {type(tools).__name__}")
    for i, tool in enumerate(tools):
        where = f"input.tools[{i}]"
        if not isinstance(tool, dict):
            raise ValueError(f"{where} must be an object")
        if tool.get("type") != "function":
            raise ValueError(f"{where}.type must be 'function', got {tool.get('type')!r}")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise ValueError(f"{where}.function must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}.function.name must be a non-empty string")
        if "parameters" in function and not isinstance(function["parameters"], dict):
            raise ValueError(f"{where}.function.parameters must be an object (a JSON Schema)")


def _check_output(record: dict[str, Any], key: str) -> str:
    """One of the two answers: a list of exactly one assistant message; returns its text."""
    if key not in record:
        raise ValueError(f"missing field '{key}'")
    output = record[key]
    if not isinstance(output, list):
        raise ValueError(
            f"'{key}' must be a list with exactly one assistant message, "
            f"got {type(output).__name__}"
        )
    if not output:
        raise ValueError(f"'{key}' is empty: it must hold exactly one assistant message")
    if len(output) > 1:
        raise ValueError(
            f"'{key}' has {len(output)} messages: it must hold exactly one assistant message"
        )
    message = output[0]
    if not isinstance(message, dict):
        raise ValueError(f"{key}[0] must be an object")
    if message.get("role") != "assistant":
        raise ValueError(f"{key}[0].role must be 'assistant', got {message.get('role')!r}")
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(f"{key}[0].content must be a string")
    if not content.strip():
        raise ValueError(f"{key}[0].content is empty")
    return content


def _check_preference(record: dict[str, Any]) -> None:
    unknown = [key for key in record if key not in PREFERENCE_KEYS]
    if unknown:
        raise ValueError(
            f"unknown field {_quoted(unknown)}: a preference example has the fields "
            f"{_quoted(PREFERENCE_KEYS)}"
        )
    if "input" not in record:
        raise ValueError("missing field 'input'")
    prompt = record["input"]
    if not isinstance(prompt, dict):
        raise ValueError(f"'input' must be an object, got {type(prompt).__name__}")
    unknown = [f"input.{key}" for key in prompt if key not in PREFERENCE_INPUT_KEYS]
    if unknown:
        raise ValueError(
            f"unknown field {_quoted(unknown)}: 'input' has the fields "
            f"{_quoted(PREFERENCE_INPUT_KEYS)}"
        )
    if "messages" not in prompt:
        raise ValueError("missing field 'input.messages'")
    messages = _check_messages(prompt["messages"], "input.messages")
    if messages[-1]["role"] == "assistant":
        raise ValueError(
            f"input.messages[{len(messages) - 1}] is an assistant message: 'input.messages' "
            "must end with the user turn that preferred_output and non_preferred_output answer"
        )
    if "tools" in prompt:
        _check_tools(prompt["tools"])
    if "parallel_tool_calls" in prompt and not isinstance(prompt["parallel_tool_calls"], bool):
        raise ValueError("'input.parallel_tool_calls' must be true or false")
    preferred = _check_output(record, "preferred_output")
    non_preferred = _check_output(record, "non_preferred_output")
    if preferred == non_preferred:
        raise ValueError(
            "preferred_output[0].content and non_preferred_output[0].content are the same: "
            "there is nothing to prefer"
        )


def _label_of(record: dict[str, Any]) -> str:
    label = record.get("label")
    if label is None:
        raise ValueError("missing field 'label'")
    # bool is an int subclass; a true/false label is almost always a mistake.
    if isinstance(label, bool) or not isinstance(label, str | int):
        raise ValueError(f"'label' must be a string or an integer, got {type(label).__name__}")
    if isinstance(label, str) and not label.strip():
        raise ValueError("'label' is empty")
    return str(label)


def check_record(record: Any, expected: DataFormat | None) -> tuple[DataFormat, str | None]:
    """Validate one parsed line; returns its format and, for classification, its label."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    fmt = detect_format(record)
    if expected is not None and fmt != expected:
        raise ValueError(f"this line is in format '{fmt}' but the file is in format '{expected}'")
    label: str | None = None
    if fmt == "chat":
        _check_chat(record)
    elif fmt == "prompt_completion":
        _nonempty_str(record, "prompt")
        _nonempty_str(record, "completion")
    elif fmt == "text":
        _nonempty_str(record, "text")
    elif fmt == "preference":
        _check_preference(record)
    else:
        _nonempty_str(record, "text")
        label = _label_of(record)
    return fmt, label


class StreamingValidator:
    """Feed raw bytes in chunks of any size, then call `finish()` for the summary."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._pending = b""
        self._line_no = 0
        self._bytes = 0
        self._examples = 0
        self._format: DataFormat | None = None
        self._labels: dict[str, None] = {}

    def feed(self, chunk: bytes) -> None:
        self._bytes += len(chunk)
        if self.max_bytes is not None and self._bytes > self.max_bytes:
            raise FileTooLarge(f"file is larger than the limit of {self.max_bytes} bytes")
        data = self._pending + chunk
        # A NUL byte never occurs in UTF-8 JSON text: this is a binary file, whatever
        # line would first fail to decode.
        nul = data.find(b"\x00")
        if nul >= 0:
            line = self._line_no + data.count(b"\n", 0, nul) + 1
            raise DataFormatError("binary data (NUL byte): the file must be UTF-8 JSONL text", line)
        *lines, self._pending = data.split(b"\n")
        for raw in lines:
            self._line(raw)

    def finish(self) -> FileSummary:
        if self._pending:
            self._line(self._pending)
            self._pending = b""
        if self._format is None or self._examples == 0:
            raise DataFormatError("file is empty: it has no examples")
        if self._format == "classification" and len(self._labels) < 2:
            raise DataFormatError("a classification file needs at least two distinct labels")
        return FileSummary(
            format=self._format,
            examples=self._examples,
            bytes=self._bytes,
            labels=sorted(self._labels),
        )

    def _line(self, raw: bytes) -> None:
        self._line_no += 1
        n = self._line_no
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataFormatError(f"not valid UTF-8 at byte {exc.start}", n) from None
        if not text.strip():
            return  # blank lines (a trailing newline, say) carry no example
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"not valid JSON: {exc.msg} (column {exc.colno})", n) from None
        except RecursionError:
            raise DataFormatError("JSON nested too deeply", n) from None
        try:
            fmt, label = check_record(record, self._format)
        except ValueError as exc:
            raise DataFormatError(str(exc), n) from None
        self._format = fmt
        if label is not None and len(self._labels) < MAX_DISTINCT_LABELS:
            self._labels[label] = None
        self._examples += 1


def validate_bytes(chunks: Iterable[bytes], max_bytes: int | None = None) -> FileSummary:
    validator = StreamingValidator(max_bytes=max_bytes)
    for chunk in chunks:
        validator.feed(chunk)
    return validator.finish()
