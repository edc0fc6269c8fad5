"""Taking weights home: GET /v1/models/{id}/content, a tar of a model's folder.

The folder is `workers.export`'s (the adapter as published, or merged into the base
weights). A merge loads the base model, so its result is kept per tenant and model id
under the models dir (``exports/``) and later downloads stream it again; the database is
asked first on every download, so a deleted model, or a checkpoint that retention
removed, is never served from there (its kept folder is removed when it is next asked
for). Other exports are written to a temporary folder that goes once the tar is sent.

The tar is written as it streams (headers computed here, file bytes read in chunks), so
neither a second copy of the weights nor the whole tar is ever held.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sqlmodel import Session

from service.errors import BadRequest, Conflict
from service.registry.catalog import Catalog
from service.registry.repository import ModelRepository
from service.registry.service import model_not_found
from workers.export import EXPORT_FORMATS, ExportError, export_folder

EXPORTS_DIR = "exports"
CHUNK = 1024 * 1024
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


def safe_name(model_id: str) -> str:
    """A file name made of a model id (``ft:tiny-gpt2:acme::ftjob-1`` ->
    ``ft-tiny-gpt2-acme-ftjob-1``)."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", model_id).strip("-.") or "model"


def _padding(size: int, unit: int) -> int:
    return -size % unit


@dataclass(frozen=True)
class ModelExport:
    """A model's export folder, sent as a tar whose one top folder is `name`."""

    folder: Path
    name: str
    # A temporary folder holding `folder`, removed once the tar is sent (None: the kept
    # merge, which stays).
    scratch: Path | None

    @property
    def filename(self) -> str:
        return f"{self.name}.tar"

    @cached_property
    def _members(self) -> list[tuple[tarfile.TarInfo, Path | None]]:
        now = int(time.time())
        top = tarfile.TarInfo(self.name)
        top.type, top.mode, top.mtime = tarfile.DIRTYPE, 0o755, now
        members: list[tuple[tarfile.TarInfo, Path | None]] = [(top, None)]
        for path in sorted(self.folder.iterdir()):
            if not path.is_file():
                continue
            info = tarfile.TarInfo(f"{self.name}/{path.name}")
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, now
            members.append((info, path))
        return members

    @staticmethod
    def _header(info: tarfile.TarInfo) -> bytes:
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def tar_size(self) -> int:
        """The tar's length in bytes (what `tar_chunks` yields in all)."""
        size = sum(
            len(self._header(info)) + info.size + _padding(info.size, _BLOCK)
            for info, _ in self._members
        )
        size += 2 * _BLOCK
        return size + _padding(size, _RECORD)

    def tar_chunks(self) -> Iterator[bytes]:
        """The folder as a POSIX (pax) tar, in chunks; the scratch folder goes at the end
        (or when the stream is dropped half way, as a client that hangs up drops it)."""
        try:
            written = 0
            for info, path in self._members:
                header = self._header(info)
                yield header
                written += len(header)
                if path is None:
                    continue
                with path.open("rb") as fh:
                    while chunk := fh.read(CHUNK):
                        yield chunk
                pad = _padding(info.size, _BLOCK)
                yield b"\0" * pad
                written += info.size + pad
            end = 2 * _BLOCK
            yield b"\0" * (end + _padding(written + end, _RECORD))
        finally:
            self.discard()

    def discard(self) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


class ModelExportService:
    """Exports of the tenant's fine-tuned models and kept checkpoints."""

    def __init__(
        self, session: Session, tenant_id: str, catalog: Catalog, models_dir: Path
    ) -> None:
        self.repo = ModelRepository(session, tenant_id)
        self.tenant_id = tenant_id
        self.catalog = catalog
        self.models_dir = models_dir
        self.exports_dir = models_dir / EXPORTS_DIR

    def _kept_merge(self, model_id: str) -> Path:
        key = hashlib.sha256(f"{self.tenant_id}\n{model_id}".encode()).hexdigest()[:32]
        return self.exports_dir / key

    def export(self, model_id: str, fmt: str | None) -> ModelExport:
        """The export of `model_id` in `fmt` (default ``adapter``). Sync and slow (a merge
        loads the model): call it from a worker thread."""
        fmt = fmt or "adapter"
        if fmt not in EXPORT_FORMATS:
            raise BadRequest(
                f"Unknown format '{fmt}': one of {', '.join(EXPORT_FORMATS)}.", param="format"
            )
        if self.catalog.get(model_id) is not None:
            raise BadRequest(
                f"'{model_id}' is a base model: there is nothing to export (its weights are "
                "the catalog's source, not a fine-tune's).",
                param="model",
                code="base_model_not_exportable",
            )
        found = self.repo.servable_with_job(model_id)
        if found is None:
            # Gone (deleted, removed by retention) or never this tenant's: a merge kept
            # from before must not outlive it.
            shutil.rmtree(self._kept_merge(model_id), ignore_errors=True)
            raise model_not_found(
                self.repo, model_id, f"The model '{model_id}' does not exist.", "not_found"
            )
        model, job = found
        base_source = str(((job.spec or {}).get("base_model") or {}).get("source") or "")
        name = f"{safe_name(model_id)}-{fmt}"
        if fmt == "merged" and model.adapter_type != "full":
            folder = self._merge(model_id, model.artifact_uri, base_source, model.task)
            return ModelExport(folder, name, None)
        scratch = self._scratch()
        try:
            folder = self._run(model.artifact_uri, base_source, model.task, fmt, scratch / "model")
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return ModelExport(folder, name, scratch)

    def _scratch(self) -> Path:
        self.exports_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".export-", dir=self.exports_dir))

    def _merge(self, model_id: str, artifact_uri: str, base_source: str, task: str) -> Path:
        """The kept merge of the model, made now if there is none (written beside its
        place and renamed into it: a concurrent download sees all of it or none)."""
        target = self._kept_merge(model_id)
        if target.is_dir():
            return target
        scratch = self._scratch()
        try:
            folder = self._run(artifact_uri, base_source, task, "merged", scratch / "model")
            try:
                os.rename(folder, target)
            except OSError:
                # Another download of the same model merged it first; theirs is the same.
                if not target.is_dir():
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target

    def _run(self, artifact_uri: str, base_source: str, task: str, fmt: str, dest: Path) -> Path:
        try:
            return export_folder(artifact_uri, base_source, task, fmt, self.models_dir, dest)
        except ExportError as exc:
            raise Conflict(
                f"The model cannot be exported: {exc}.", param="model", code="export_failed"
            ) from exc
