"""Where a job's Ray runs keep their state under its ``output_uri``, and the URIs users see.

- ``ray/train/checkpoint-*``: a plain job's Ray Train checkpoints (`run_storage_uri`)
- ``ray/tune/``: a search's Tune experiment
- ``trials/<trial_id>/ray/train/checkpoint-*``: each search trial's checkpoints
- ``control/pause``: present while the control plane asks the run to pause

Imports neither torch nor ray: the driver resolves these before any training starts.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

# Ray Train's run name, the folder under ``{output_uri}/ray`` that holds its checkpoints.
RUN_NAME = "train"
TRIALS_DIR = "trials"


def pause_flag_uri(output_uri: str) -> str:
    """The file whose presence asks a job's run (every trial of a search) to pause."""
    return f"{output_uri.rstrip('/')}/control/pause"


def run_storage_uri(output_uri: str) -> str:
    """Where Ray Train keeps a job's run (its checkpoints), as a URI of the artifact store."""
    return f"{output_uri.rstrip('/')}/ray/{RUN_NAME}"


def checkpoint_uri(storage_uri: str, checkpoint_path: str) -> str:
    # Ray gives a filesystem path without the scheme (e.g. "bucket/key" for s3); users
    # and the control plane need the artifact-store URI.
    return f"{storage_uri}/{PurePosixPath(checkpoint_path).name}"


def storage_path(output_uri: str) -> tuple[str, Any]:
    """Ray storage under the job's output URI: a path and a pyarrow filesystem."""
    import fsspec
    from fsspec.implementations.local import LocalFileSystem

    fs, path = fsspec.core.url_to_fs(output_uri.rstrip("/") + "/ray")
    if isinstance(fs, LocalFileSystem):
        return path, None
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    return path, PyFileSystem(FSSpecHandler(fs))


def trial_output_uri(output_uri: str, trial_id: str) -> str:
    """A search trial's own output URI: its runs are kept apart from the other trials'."""
    return f"{output_uri.rstrip('/')}/{TRIALS_DIR}/{trial_id}"


def trial_checkpoint_uri(output_uri: str, trial_id: str, checkpoint_path: str | None) -> str | None:
    if not checkpoint_path:
        return None
    return checkpoint_uri(run_storage_uri(trial_output_uri(output_uri, trial_id)), checkpoint_path)
