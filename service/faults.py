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
"""

from __future__ import annotations

import logging
import os
import signal
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
