"""Fault injection: named crash points where the control plane can SIGKILL itself.

The reliability tests (tests/service/reliability/) must kill the control plane *inside*
a window (between the database commit that starts a job and the Ray submission; between
storing a batch of worker events and acknowledging it). Racing a kill from outside would
land there only by luck, so the process kills itself, with a real SIGKILL (no cleanup, no
atexit, no flushed buffers: what a crash or the OOM killer does), the first time it reaches
the point named by `TUNEPLANE_FAULT_CRASH_AT` (`Settings.fault_crash_at`).

The value is a point from `service.config.CRASH_POINTS`, optionally with a tag:
`events.after_commit:result` fires only for a batch holding a `result` event. Unset (the
default, and the only sane production value) a crash point costs one comparison.

`StorageBudget` fills the artifact store's disk on purpose: once the control plane has
written `TUNEPLANE_FAULT_STORAGE_FULL_AFTER_BYTES` (`Settings.fault_storage_full_after_bytes`)
through its store, every further write fails as a full disk does (ENOSPC), so the tests
and soaks see the service's answer to a full disk without filling a real one.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import threading
from collections.abc import Collection

log = logging.getLogger(__name__)


def crash_point(armed: str | None, point: str, tags: Collection[str] = ()) -> None:
    """SIGKILL this process if `armed` names `point` (and one of `tags`, when it has one)."""
    if not armed:
        return
    name, _, tag = armed.partition(":")
    if name != point or (tag and tag not in tags):
        return
    log.critical("fault injection: SIGKILL at crash point %s", armed)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class StorageBudget:
    """Bytes the artifact store may still write before the disk is "full" (ENOSPC)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.written = 0
        # Uploads write from the request threadpool, the scheduler from its own thread.
        self._lock = threading.Lock()

    def charge(self, nbytes: int) -> None:
        """Count a write of `nbytes`, or refuse it as a full disk would (nothing written)."""
        with self._lock:
            if self.written + nbytes > self.limit:
                full = self.written >= self.limit
                self.written = self.limit
                if not full:
                    log.critical(
                        "fault injection: the artifact store is full after %d bytes", self.limit
                    )
                raise OSError(
                    errno.ENOSPC,
                    f"No space left on device (fault injection: the store is full after "
                    f"{self.limit} bytes)",
                )
            self.written += nbytes
