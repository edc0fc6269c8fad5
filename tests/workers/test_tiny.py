from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.sources import resolve_model_source
from workers.tiny import BUILDERS, build

REPO_ROOT = Path(__file__).resolve().parents[2]


def digest(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
        if path.is_file()
    }


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_builds_are_deterministic_fast_and_loadable(name: str, tmp_path: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    build(name, tmp_path / "warm-up")  # imports transformers and tokenizers once
    started = time.perf_counter()
    first = build(name, tmp_path / "a")
    elapsed = time.perf_counter() - started
    second = build(name, tmp_path / "b")
    assert elapsed < 1.0
    assert digest(first) == digest(second)
    assert (first / "model.safetensors").is_file()
    config = AutoConfig.from_pretrained(first)
    assert config.num_hidden_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(first)
    ids = tokenizer("The quick brown fox", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == "The quick brown fox"
    has_template = bool(getattr(tokenizer, "chat_template", None))
    assert has_template == (name != "tiny-bert")


def test_build_is_idempotent(tmp_path: Path) -> None:
    path = build("tiny-gpt2", tmp_path)
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert build("tiny-gpt2", tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-gpt2"], "no staging dirs left"


def test_concurrent_builders_never_see_half_a_model(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from workers.tiny import build; "
        "p = build('tiny-llama', Path(sys.argv[1])); "
        "from transformers import AutoModelForCausalLM; AutoModelForCausalLM.from_pretrained(p)"
    )
    processes = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT)
        for _ in range(2)
    ]
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llama"]


def test_resolve_builds_tiny_sources_and_passes_others_through(tmp_path: Path) -> None:
    assert resolve_model_source("tiny:tiny-bert", tmp_path) == str(tmp_path / "tiny-bert")
    assert (tmp_path / "tiny-bert" / "config.json").is_file()
    assert resolve_model_source("openai-community/gpt2", tmp_path) == "openai-community/gpt2"
    assert resolve_model_source("/models/llama-3-8b", tmp_path) == "/models/llama-3-8b"
    with pytest.raises(ValueError, match="unknown tiny model 'tiny-nope'"):
        resolve_model_source("tiny:tiny-nope", tmp_path)
