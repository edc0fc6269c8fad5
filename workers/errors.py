"""Failures a job reports to its user, and how to find one inside Ray's wrappers.

A `JobError` (or a data error) carries a message written for the user, which the failed
event shows as is; anything else is an internal error the job reports in general terms.
"""

from __future__ import annotations

from workers.data import DataError
from workers.formats import DataFormatError

# Errors whose message is written for the user and is shown as is.
USER_ERRORS: tuple[type[BaseException], ...] = (DataError, DataFormatError)


class JobError(Exception):
    """A failure with a message for the user; `code` goes into the failed event."""

    def __init__(self, message: str, code: str = "training_failed") -> None:
        super().__init__(message)
        self.code = code


def user_message(error: BaseException) -> tuple[str, str] | None:
    """The user-facing (message, code) inside a possibly Ray-wrapped exception, if any."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, JobError):
            return str(current), current.code
        if isinstance(current, USER_ERRORS):
            return str(current), "invalid_data"
        for attr in ("worker_failures",):
            failures = getattr(current, attr, None)
            if isinstance(failures, dict):
                pending.extend(e for e in failures.values() if isinstance(e, BaseException))
        for attr in ("cause", "__cause__", "__context__", "controller_failure"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                pending.append(inner)
    return None


def first_line(error: BaseException) -> str:
    """The line of an error's text that says what happened (Ray puts it last)."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(error).__name__
