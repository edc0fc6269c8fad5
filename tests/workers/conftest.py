from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tiny models are built once for the session (workers build on demand)."""
    return tmp_path_factory.mktemp("models")
