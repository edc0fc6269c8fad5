"""Checks a base model before it is registered: it must load, fit its tasks and hold no
pickle. Only the small files are read (config, tokenizer); the weights are only listed.

A source is a local directory, a Hugging Face hub id (from the local cache when
HF_HUB_OFFLINE is set, from the hub otherwise) or an artifact-store URI (fsspec).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from workers.spec import Task

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.\-]{0,95})?$")
# The small files a model's config and tokenizer are read from.
SMALL_FILES = ("*.json", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*.py")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CONVERT_HINT = (
    "convert it once with transformers: AutoModel.from_pretrained(path)"
    ".save_pretrained(new_path, safe_serialization=True), then register new_path"
)


class ModelRejected(ValueError):
    """Why a source cannot be registered, and which request field is at fault."""

    def __init__(self, message: str, param: str = "source") -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Inspection:
    architecture: str
    # Tasks the architecture has a head for.
    supported: frozenset[Task]
    # What the checkpoint itself was saved as (e.g. a causal LM, not just an encoder).
    default_tasks: list[Task]
    chat_template: bool
    max_length: int


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _local_files(source: str, cache: Path) -> tuple[Path, list[str]]:
    """A local folder holding the source's small files, and the names of all its files."""
    if "://" in source:
        return _from_store(source, cache)
    path = Path(source).expanduser()
    if path.is_absolute() or source.startswith("."):
        if not path.is_dir():
            raise ModelRejected(f"'{source}' is not a directory on the control plane's host.")
        return path, [p.name for p in path.iterdir() if p.is_file()]
    if not HUB_ID.match(source):
        raise ModelRejected(
            f"'{source}' is neither a local directory (an absolute path), a hub id "
            "(org/name) nor a storage URI (scheme://...)."
        )
    return _from_hub(source)


def _from_hub(repo_id: str) -> tuple[Path, list[str]]:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = _offline()
    try:
        folder = Path(
            snapshot_download(repo_id, allow_patterns=list(SMALL_FILES), local_files_only=offline)
        )
    except LocalEntryNotFoundError:
        raise ModelRejected(
            f"'{repo_id}' is not in the local Hugging Face cache and this service is offline "
            "(HF_HUB_OFFLINE=1): download it into the cache first (huggingface-cli download "
            f"{repo_id}), or register a local directory."
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelRejected(f"'{repo_id}' cannot be fetched from the hub: {exc}") from None
    if offline:
        return folder, [p.name for p in folder.iterdir()]
    return folder, [PurePosixPath(f).name for f in HfApi().list_repo_files(repo_id)]


def _from_store(uri: str, cache: Path) -> tuple[Path, list[str]]:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(uri)
        names = [PurePosixPath(str(f)).name for f in fs.ls(root, detail=False)]
    except (OSError, ValueError, ImportError) as exc:
        raise ModelRejected(f"'{uri}' cannot be listed: {exc}") from None
    if not names:
        raise ModelRejected(f"'{uri}' is empty or not a directory.")
    target = cache / hashlib.sha256(uri.encode()).hexdigest()[:24]
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if any(PurePosixPath(name).match(pattern) for pattern in SMALL_FILES):
            fs.get_file(f"{root.rstrip('/')}/{name}", str(target / name))
    return target, names


def _check_weights(source: str, names: list[str]) -> None:
    if any(n.endswith(".safetensors") for n in names):
        return
    pickled = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickled:
        raise ModelRejected(
            f"'{source}' holds its weights as pickle ({', '.join(pickled[:3])}), which can run "
            f"code when loaded; Tuneplane loads safetensors only: {CONVERT_HINT}."
        )
    raise ModelRejected(f"'{source}' holds no weights (no *.safetensors file).")


def inspect_source(source: str, cache: Path) -> Inspection:
    """Reads a source's config and tokenizer; raises ModelRejected with the reason."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    )

    folder, names = _local_files(source, cache)
    if "config.json" not in names:
        raise ModelRejected(f"'{source}' has no config.json: it is not a transformers model.")
    _check_weights(source, names)
    try:
        config = AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelRejected(f"The config of '{source}' does not load: {exc}") from None
    model_type = str(getattr(config, "model_type", "") or "")
    supported: set[Task] = set()
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        supported.add("causal_lm")
    if model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        supported.add("sequence_classification")
    if not supported:
        raise ModelRejected(
            f"Architecture '{model_type or 'unknown'}' of '{source}' has neither a causal-LM "
            "nor a sequence-classification head in transformers."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelRejected(f"The tokenizer of '{source}' does not load: {exc}") from None
    # transformers builds an empty tokenizer when its files are missing rather than fail.
    if not tokenizer("Hello, world")["input_ids"]:
        raise ModelRejected(
            f"The tokenizer of '{source}' encodes nothing: its files (tokenizer.json, or "
            "vocab and merges) are missing."
        )
    saved_as = " ".join(getattr(config, "architectures", None) or [])
    generative = "CausalLM" in saved_as or "LMHead" in saved_as
    default: list[Task] = (
        ["causal_lm"]
        if generative and "causal_lm" in supported
        else ["sequence_classification"]
        if "sequence_classification" in supported
        else ["causal_lm"]
    )
    limits = [
        int(v)
        for v in (
            getattr(tokenizer, "model_max_length", None),
            getattr(config, "max_position_embeddings", None),
        )
        if isinstance(v, int) and 0 < v < 10**7
    ]
    return Inspection(
        architecture=model_type,
        supported=frozenset(supported),
        default_tasks=default,
        chat_template=bool(getattr(tokenizer, "chat_template", None)),
        max_length=min([*limits, 2048]),
    )
