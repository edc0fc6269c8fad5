"""Job events from the workers to the control plane: the record format and its sinks.

This module is a shared contract (the control plane imports it), so it imports neither
torch nor ray, and redis only when a Redis sink is used.

Redis layout
------------
All jobs write to one stream, ``tuneplane:events`` (`EVENTS_STREAM`), trimmed to about
`STREAM_MAXLEN` entries (the control plane persists events to its database and deletes
the entries it stored; the stream is transport, not storage). Each entry has four string fields:

- ``job_id``:    the job the event belongs to (lets a consumer route without parsing)
- ``tenant_id``: the job's tenant
- ``type``:      `EventType` (``status``, ``metrics``, ``eval``, ``checkpoint``,
                 ``message``, ``result``)
- ``record``:    the whole `EventRecord` as JSON (``EventRecord.model_validate_json``)

Consumers read it with ``XREADGROUP GROUP <group> <consumer> STREAMS tuneplane:events >``
and ``XACK`` once an event is stored; the stream entry id orders events of one job.

Event types and their ``data`` (the typed ones are records of `workers.records`):

- ``status``:     `StatusData`: ``status``, a `workers.spec.RunStatus` (preparing,
                  training, saving, succeeded or failed)
- ``metrics``:    one per optimizer step: ``step``, ``epoch``, ``train_loss``,
                  ``learning_rate``, ``tokens_per_second``, ``trained_tokens``
- ``eval``:       ``step``, ``eval_loss`` and, for classification, ``eval_accuracy``
- ``checkpoint``: `CheckpointData`: ``step``, ``checkpoint_uri`` and the metrics reported
                  with it
- ``message``:    free text for the user (e.g. a worker was lost and training resumed)
- ``result``:     `ResultData`, the last event of a successful job: ``artifact_uri``,
                  ``trained_tokens``, ``steps``, ``metrics`` (final train/eval metrics);
                  for a search also ``best_trial`` (`BestTrial`) and ``search``
                  (`SearchSummary`)
- ``trial``:      `TrialData`, a search trial's state: ``trial_id``, ``status`` (a
                  `workers.spec.TrialState`: running, terminated, early_stopped or
                  error), ``params``, ``metrics`` (latest), ``best_metric``,
                  ``iterations``, ``checkpoint_uri``. The per-step ``metrics``/``eval``
                  events of a trial carry its ``trial_id``.

A failed job's last event is a ``status`` event whose status is failed, with level
``error``, a ``message`` that says what went wrong and what to change, and a ``code``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from collections import deque
from typing import IO, Any, Literal, Protocol

from pydantic import BaseModel, Field

from workers.records import CheckpointData, ResultData, StatusData, TrialData
from workers.spec import RUN_FAILED, RUN_PAUSED, TRIAL_ERROR, RunStatus

EVENTS_STREAM = "tuneplane:events"
STREAM_MAXLEN = 1_000_000

EventType = Literal["status", "metrics", "eval", "checkpoint", "message", "result", "trial"]
EventLevel = Literal["info", "warn", "error"]

logger = logging.getLogger(__name__)


class EventRecord(BaseModel):
    # Unique per record: a record sent twice (a retry after Redis took it but the reply
    # was lost) is stored once.
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    job_id: str
    tenant_id: str
    type: EventType
    level: EventLevel = "info"
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)

    def stream_fields(self) -> dict[str, str]:
        return {
            "job_id": self.job_id,
            "tenant_id": self.tenant_id,
            "type": self.type,
            "record": self.model_dump_json(),
        }

    @classmethod
    def from_stream_fields(cls, fields: dict[Any, Any]) -> EventRecord:
        raw = fields.get("record", fields.get(b"record"))
        if raw is None:
            raise ValueError("stream entry has no 'record' field")
        return cls.model_validate_json(raw)


class EventSink(Protocol):
    def emit(self, record: EventRecord) -> None: ...


class RedisEventSink:
    """XADDs records to the shared stream. Picklable: it connects lazily in each process.

    While Redis is away (restarting, failing over) records wait in a buffer, oldest first,
    and go out in order with the next record that gets through: an outage delays events
    rather than losing them (up to `MAX_PENDING` of them, then the oldest are dropped).
    """

    MAX_PENDING = 100_000

    def __init__(self, url: str, stream: str = EVENTS_STREAM) -> None:
        self.url = url
        self.stream = stream
        self._client: Any = None
        self._pending: deque[EventRecord] = deque()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "stream": self.stream, "_client": None, "_pending": deque()}

    def _redis(self) -> Any:
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.url, socket_timeout=10)
        return self._client

    def emit(self, record: EventRecord) -> None:
        if len(self._pending) >= self.MAX_PENDING:
            self._pending.popleft()
            logger.warning("event buffer full while Redis is away; dropped the oldest event")
        self._pending.append(record)
        self.flush()

    def flush(self, wait_s: float = 0.0) -> None:
        """Send what is buffered; keep trying for `wait_s` before raising the last error."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                while self._pending:
                    self._redis().xadd(
                        self.stream,
                        self._pending[0].stream_fields(),
                        maxlen=STREAM_MAXLEN,
                        approximate=True,
                    )
                    self._pending.popleft()
                return
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))


class JsonLinesSink:
    """Appends records as JSON lines to a file (or writes them to a text stream).

    Used when a job runs without Redis (its events then end up in the Ray job's log) and
    by tests that run training without the control plane.
    """

    def __init__(self, path: str | None = None, stream: IO[str] | None = None) -> None:
        self.path = path
        self._stream = stream

    def __getstate__(self) -> dict[str, Any]:
        # A process-local stream cannot travel; a copy elsewhere writes to its own stdout.
        return {"path": self.path, "_stream": None}

    def emit(self, record: EventRecord) -> None:
        line = record.model_dump_json() + "\n"
        if self.path is not None:
            # One write call per line: appends from several processes do not interleave.
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
            return
        out = self._stream if self._stream is not None else sys.stdout
        out.write(line)
        out.flush()


def read_json_lines(path: str) -> list[EventRecord]:
    with open(path, encoding="utf-8") as f:
        return [EventRecord.model_validate_json(line) for line in f if line.strip()]


class Reporter:
    """Builds the records of one job and hands them to a sink.

    Losing an event must not kill a training run, so `emit` logs sink errors and goes on;
    `strict=True` (used for the final result) raises them instead.
    """

    def __init__(
        self,
        job_id: str,
        tenant_id: str,
        sink: EventSink,
        trial_id: str | None = None,
        strict_wait_s: float = 120.0,
    ) -> None:
        self.job_id = job_id
        self.tenant_id = tenant_id
        self.sink = sink
        # How long a strict record (a status, the result) waits for a sink that can buffer
        # (Redis restarting) before its error is raised.
        self.strict_wait_s = strict_wait_s
        # A search trial's reporter tags every event of the trial with its id.
        self.trial_id = trial_id

    def emit(
        self,
        type: EventType,
        message: str = "",
        data: dict[str, Any] | None = None,
        level: EventLevel = "info",
        strict: bool = False,
    ) -> EventRecord:
        data = dict(data or {})
        if self.trial_id is not None:
            data.setdefault("trial_id", self.trial_id)
        record = EventRecord(
            job_id=self.job_id,
            tenant_id=self.tenant_id,
            type=type,
            level=level,
            message=message,
            data=_jsonable(data),
        )
        try:
            self.sink.emit(record)
        except Exception:
            if not strict:
                logger.warning(
                    "could not send a %s event for job %s yet", type, self.job_id, exc_info=True
                )
                return record
            flush = getattr(self.sink, "flush", None)
            if flush is None:
                raise
            logger.warning("waiting for the event sink to send a %s event", type)
            flush(self.strict_wait_s)
        return record

    def status(
        self, status: RunStatus, message: str = "", level: EventLevel = "info"
    ) -> EventRecord:
        data = StatusData(status=status).event_data()
        return self.emit("status", message or f"job {status}", data, level=level, strict=True)

    def paused(self, step: int | None) -> EventRecord:
        """`step`: a run's last one; None for a search (each trial has its own)."""
        data = StatusData(status=RUN_PAUSED, step=step).event_data()
        where = f" at step {step}" if step is not None else ""
        text = f"paused{where}; a resumed run goes on from there"
        return self.emit("status", text, data, strict=True)

    def metrics(self, data: dict[str, Any]) -> EventRecord:
        return self.emit("metrics", f"step {data.get('step')}", data)

    def eval(self, data: dict[str, Any]) -> EventRecord:
        return self.emit("eval", f"evaluation at step {data.get('step')}", data)

    def checkpoint(self, data: CheckpointData) -> EventRecord:
        return self.emit("checkpoint", f"checkpoint at step {data.step}", data.event_data())

    def message(self, text: str, level: EventLevel = "info", **data: Any) -> EventRecord:
        return self.emit("message", text, data, level=level)

    def result(self, data: ResultData) -> EventRecord:
        return self.emit("result", "fine-tuning finished", data.event_data(), strict=True)

    def trial(self, data: TrialData, level: EventLevel | None = None) -> EventRecord:
        """A search trial's state; a trial that ended in error is a warning by default."""
        if level is None:
            level = "warn" if data.status == TRIAL_ERROR else "info"
        text = f"trial {data.trial_id} {data.status.replace('_', ' ')}"
        return self.emit("trial", text, data.event_data(), level=level)

    def failed(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retryable: bool | None = None,
        error_type: str | None = None,
    ) -> EventRecord:
        """The failed status, the last event of a job that did not succeed."""
        given = {"code": code, "param": param, "retryable": retryable, "error_type": error_type}
        # Only what the caller decided goes out (see `StatusData.event_data`).
        status = StatusData.model_validate(
            {"status": RUN_FAILED, **{k: v for k, v in given.items() if v is not None}}
        )
        return self.emit("status", message, status.event_data(), level="error", strict=True)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    # Round-trip through json so numpy/torch scalars or paths never reach the sink raw.
    return dict(json.loads(json.dumps(data, default=_default)))


def _default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
