"""The artifact store: a local directory or any fsspec URI, under server-generated keys."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import IO, Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

CHUNK = 1024 * 1024


class ArtifactStore:
    def __init__(self, uri: str) -> None:
        self.uri = uri.rstrip("/")
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
        return self.fs.open(path, "wb")

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

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)
