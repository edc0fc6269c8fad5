"""Training-data formats and the validator shared by the control plane and the workers.

A file is JSONL; every line is one example in one of four formats, and all lines of a
file share a format:

- chat:              {"messages": [{"role": "user", "content": "..."}, ...]}
- prompt_completion: {"prompt": "...", "completion": "..."}
- text:              {"text": "..."}
- classification:    {"text": "...", "label": "positive" | 3}

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
        "no known format: expected 'messages', 'prompt'/'completion', 'text', or "
        f"'text'/'label' (keys found: {keys})"
    )


def _nonempty_str(record: dict[str, Any], key: str) -> str:
    if key not in record:
        raise ValueError(f"missing field '{key}'")
    value = record[key]
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"'{key}' is empty")
    return value


def _check_chat(record: dict[str, Any]) -> None:
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list")
    has_assistant = False
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"messages[{i}] must be an object")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise ValueError(f"messages[{i}].role {role!r} is not one of {', '.join(CHAT_ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        if not content.strip():
            raise ValueError(f"messages[{i}].content is empty")
        weight = message.get("weight")
        if weight is not None and weight not in (0, 1):
            raise ValueError(f"messages[{i}].weight must be 0 or 1")
        has_assistant = has_assistant or role == "assistant"
    if not has_assistant:
        raise ValueError("no assistant message: there is nothing to learn from this example")


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
