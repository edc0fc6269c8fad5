"""Requests the control plane makes of a running job, read by the workers.

A pause is a file under the job's output URI (`workers.storage.pause_flag_uri`): the
artifact store is the one place every worker, trial and driver of a job can read, on one
machine or on a cluster, with no connection of its own. Reading it is throttled, so a run
of many short steps does not stat the store at every one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from workers.storage import pause_flag_uri

log = logging.getLogger(__name__)
CHECK_INTERVAL_S = 0.5


@dataclass
class PauseFlag:
    output_uri: str
    interval_s: float = CHECK_INTERVAL_S
    _checked_at: float = field(default=-1e9, init=False)
    _seen: bool = field(default=False, init=False)

    @property
    def uri(self) -> str:
        return pause_flag_uri(self.output_uri)

    def requested(self) -> bool:
        """Whether a pause is asked for; once seen, it stays seen for this run."""
        if self._seen:
            return True
        now = time.monotonic()
        if now - self._checked_at < self.interval_s:
            return False
        self._checked_at = now
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(self.uri)
            self._seen = bool(fs.exists(path))
        except Exception:
            # The store is unreachable for a moment: go on training and ask again later.
            log.warning("cannot read the pause flag %s", self.uri, exc_info=True)
        return self._seen
