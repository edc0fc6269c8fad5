"""The control plane's side of a pause: the request file its run reads
(`workers.control.PauseFlag`), written, checked and taken back under the job's output URI.

The database says a job is pausing; the file is only how the run hears of it, so every
writer of it is idempotent and the reconciler writes it again if a crash lost it.
"""

from __future__ import annotations

import logging
from typing import Any

import fsspec

from service.models import Job
from workers.storage import pause_flag_uri

log = logging.getLogger(__name__)


def _flag(job: Job) -> tuple[Any, str] | None:
    output_uri = (job.spec or {}).get("output_uri")
    if not output_uri:
        return None
    fs, path = fsspec.core.url_to_fs(pause_flag_uri(str(output_uri)))
    return fs, path


def request_pause(job: Job) -> None:
    found = _flag(job)
    if found is None:
        return
    fs, path = found
    if fs.exists(path):
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    with fs.open(path, "wb") as fh:
        fh.write(job.id.encode())


def request_pause_quietly(job: Job) -> None:
    try:
        request_pause(job)
    except Exception:
        log.warning("could not write the pause request of %s; the reconciler will", job.id)


def withdraw_pause(job: Job) -> None:
    """Before a run of the job starts: a stale request must not pause it at once."""
    found = _flag(job)
    if found is None:
        return
    fs, path = found
    if fs.exists(path):
        fs.rm(path)
