"""The serving engines on a tiny real model, without Ray: batching, adapters, sampling."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.workers.lora_adapters import make_adapter
from workers.data import encode_classification, load_tokenizer
from workers.serving.classifier import ClassifierEngine
from workers.serving.engine import CausalLMEngine, Delta, GenerationRequest, SamplingParams
from workers.sources import resolve_model_source


def run(engine: CausalLMEngine, requests: list[GenerationRequest]) -> list[tuple[str, str, int]]:
    """(text, finish_reason, completion tokens) per request."""
    texts = [""] * len(requests)
    final: list[Delta | None] = [None] * len(requests)
    for deltas in engine.generate(requests):
        for i, d in enumerate(deltas):
            if d is not None:
                texts[i] += d.text
                final[i] = d
    out = []
    for text, d in zip(texts, final, strict=True):
        assert d is not None and d.finish_reason is not None
        out.append((text, d.finish_reason, d.completion_tokens))
    return out


@pytest.fixture(scope="module")
def engine(models_dir: Path) -> CausalLMEngine:
    return CausalLMEngine("tiny:tiny-gpt2", str(models_dir))


@pytest.fixture(scope="module")
def adapters(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("adapters")
    return [make_adapter(models_dir, root / f"a{i}", seed=i) for i in range(3)]


GREEDY = SamplingParams(max_tokens=8, temperature=0.0)


def test_batched_generation_equals_one_at_a_time(
    engine: CausalLMEngine, adapters: list[Path]
) -> None:
    for i, path in enumerate(adapters):
        engine.load_adapter(f"a{i}", path)
    prompts = ["red ->", "a much longer prompt about a green cat ->", "blue"]
    requests = [
        GenerationRequest(engine.encode_prompt(p), GREEDY, adapter)
        for p in prompts
        for adapter in (None, "a0", "a1", "a2")
    ]
    alone = [run(engine, [r])[0] for r in requests]
    together = run(engine, requests)
    assert together == alone
    # Each adapter changes what the model says; the same prompt differs across adapters.
    for p in range(len(prompts)):
        outputs = {alone[p * 4 + k][0] for k in range(4)}
        assert len(outputs) >= 3, outputs


def test_sampling_is_seeded_per_request(engine: CausalLMEngine) -> None:
    ids = engine.encode_prompt("red ->")
    seeded = SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
    a = run(engine, [GenerationRequest(ids, seeded)])[0]
    # The same seed gives the same text even next to other requests in the batch.
    others = [GenerationRequest(ids, SamplingParams(max_tokens=5, temperature=1.0))] * 3
    b = run(engine, [*others, GenerationRequest(ids, seeded)])[-1]
    assert a == b
    c = run(engine, [GenerationRequest(ids, SamplingParams(12, 1.0, 0.9, (), seed=8))])[0]
    assert c != a


def test_max_tokens_and_stop(engine: CausalLMEngine) -> None:
    ids = engine.encode_prompt("red ->")
    text, finish, n = run(
        engine, [GenerationRequest(ids, SamplingParams(max_tokens=5, temperature=0))]
    )[0]
    assert (finish, n) == ("length", 5)
    stop = text[2:4]
    cut, finish, _ = run(
        engine, [GenerationRequest(ids, SamplingParams(max_tokens=5, temperature=0, stop=(stop,)))]
    )[0]
    assert finish == "stop"
    assert cut == text[: text.find(stop)]


def test_adapter_unload_keeps_others(engine: CausalLMEngine, adapters: list[Path]) -> None:
    engine.load_adapter("x0", adapters[0])
    engine.load_adapter("x1", adapters[1])
    ids = engine.encode_prompt("green ->")
    before = run(engine, [GenerationRequest(ids, GREEDY, "x1")])
    engine.unload_adapter("x0")
    assert "x0" not in engine.adapters
    assert run(engine, [GenerationRequest(ids, GREEDY, "x1")]) == before


def test_classifier_adapters(models_dir: Path, tmp_path: Path) -> None:
    engine = ClassifierEngine("tiny:tiny-bert", str(models_dir), num_labels=3)
    path = make_adapter(models_dir, tmp_path / "clf", seed=1, task="sequence_classification")
    (path / "tuneplane.json").write_text('{"labels": ["x", "y", "z"]}')
    engine.load_adapter("c", path)
    results, tokens = engine.classify(["red cat", "blue"], "c")
    assert len(tokens) == 2 and all(n > 0 for n in tokens)
    assert [r["index"] for r in results] == [0, 1]
    for r in results:
        assert set(r["scores"]) == {"x", "y", "z"}
        assert abs(sum(r["scores"].values()) - 1) < 1e-5
        assert r["label"] in {"x", "y", "z"}
    base, _ = engine.classify(["red cat"], None)
    assert base[0]["scores"] != results[0]["scores"]


def test_served_classifications_equal_an_offline_forward_pass_at_the_jobs_length(
    models_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    path = make_adapter(models_dir, tmp_path / "clf", seed=2, task="sequence_classification")
    # The job trained with max_length 8: serving must cut inputs where training did.
    (path / "tuneplane.json").write_text('{"labels": ["x", "y", "z"], "max_length": 8}')
    engine = ClassifierEngine("tiny:tiny-bert", str(models_dir), num_labels=3)
    engine.load_adapter("c", path)
    texts = ["red cat", "the quick brown fox jumps over the lazy dog again and again", "blue"]
    results, tokens = engine.classify(texts, "c")

    tokenizer = load_tokenizer("tiny:tiny-bert", str(models_dir))
    ids = encode_classification(tokenizer, texts, max_length=8)
    assert tokens == [len(row) for row in ids] and max(tokens) == 8
    assert ids[1][-1] == tokenizer.sep_token_id  # the cut keeps [SEP]
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_source("tiny:tiny-bert", models_dir),
        num_labels=3,
        ignore_mismatched_sizes=True,
    )
    offline = PeftModel.from_pretrained(base, str(path)).eval()
    for row, result in zip(ids, results, strict=True):
        with torch.no_grad():
            probs = torch.softmax(offline(input_ids=torch.tensor([row])).logits[0], dim=-1)
        assert result["label"] == "xyz"[int(probs.argmax())]
        assert [result["scores"][k] for k in "xyz"] == pytest.approx(probs.tolist(), abs=1e-5)
