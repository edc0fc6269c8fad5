"""The artifact store: a local directory or any fsspec URI, under server-generated keys."""

from __future__ import annotations

import errno
import posixpath
from collections.abc import Iterator
from types import TracebackType
from typing import IO, Any, cast

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from service.faults import StorageBudget
from workers.spec import MANIFEST_FILE

CHUNK = 1024 * 1024
# What a write to a full disk (or past a quota) fails with.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# The weights of a published model (save_pretrained's; a large one in shards).
WEIGHT_SUFFIXES = (".safetensors", ".bin")


def is_storage_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


def missing_model_files(artifact_uri: str) -> str | None:
    """What a published model folder lacks (its manifest, its weights), or None when it
    is all there. Only a definite absence is reported; a store that cannot be reached
    raises, so the caller retries rather than deciding the model is gone."""
    fs, path = url_to_fs(artifact_uri)
    try:
        entries = fs.ls(path.rstrip("/"), detail=True)
    except FileNotFoundError:
        return "its folder does not exist"
    sizes = {
        posixpath.basename(str(e["name"]).rstrip("/")): int(e.get("size") or 0) for e in entries
    }
    if MANIFEST_FILE not in sizes:
        return f"its manifest ({MANIFEST_FILE}) is missing"
    if not any(n.endswith(WEIGHT_SUFFIXES) and size > 0 for n, size in sizes.items()):
        return "its weights are missing"
    return None


class _MeteredWriter:
    """A store file whose writes are charged to the fault injection's budget."""

    def __init__(self, fh: IO[Any], budget: StorageBudget) -> None:
        self._fh = fh
        self._budget = budget

    def write(self, data: bytes) -> int:
        self._budget.charge(len(data))
        return int(self._fh.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _MeteredWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._fh.close()


class ArtifactStore:
    def __init__(self, uri: str, *, full_after_bytes: int | None = None) -> None:
        """`full_after_bytes`: fault injection (`Settings.fault_storage_full_after_bytes`),
        every write fails with ENOSPC once this store has written that many bytes."""
        self.uri = uri.rstrip("/")
        self._budget = StorageBudget(full_after_bytes) if full_after_bytes is not None else None
        fs, root = url_to_fs(self.uri)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/")
        if isinstance(self.fs, LocalFileSystem):
            self.fs.makedirs(self.root, exist_ok=True)

    def _path(self, key: str) -> str:
        # Keys come from the server, never from users; refuse anything that could escape.
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid storage key: {key!r}")
        return posixpath.join(self.root, key)

    def uri_for(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def open_write(self, key: str) -> IO[Any]:
        path = self._path(key)
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        fh: IO[Any] = self.fs.open(path, "wb")
        if self._budget is None:
            return fh
        return cast(IO[Any], _MeteredWriter(fh, self._budget))

    def open_read(self, key: str) -> IO[Any]:
        return self.fs.open(self._path(key), "rb")

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        with self.open_read(key) as fh:
            while chunk := fh.read(chunk_size):
                yield chunk

    def move(self, src: str, dst: str) -> None:
        self.fs.mv(self._path(src), self._path(dst))

    def write_bytes(self, key: str, data: bytes) -> None:
        with self.open_write(key) as fh:
            fh.write(data)

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def delete_uri(self, uri: str) -> bool:
        """Delete what `uri` names if it is in this store; False (nothing done) if not."""
        prefix = self.uri + "/"
        if not uri.startswith(prefix):
            return False
        self.delete(uri[len(prefix) :].rstrip("/"))
        return True

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
