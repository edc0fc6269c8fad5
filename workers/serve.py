"""Serving: one Ray Serve application per base model, LoRA adapters multiplexed on it.

The control plane owns the applications (it writes Serve's declarative config) and
forwards authenticated requests to them with the adapter's artifact URI as the
multiplexed model id (``serve_multiplexed_model_id``). Tenants never reach Serve.

- `CausalLMEngine` / `ClassifierEngine` hold a base model and the adapters loaded on it,
  and know nothing of Ray: tests drive them directly with a tiny real model, and the
  deployment takes one injected through its constructor.
- `ModelServer` is the deployment: adapters come and go through `@serve.multiplexed`
  (LRU, size from the app's arguments); generation requests are batched with
  `@serve.batch` and run as one decode loop in which every row may use another adapter
  (peft's mixed-adapter batches); answers are OpenAI's completion, chat completion and
  chunk objects, streamed as Server-Sent Events when asked.
- `build_app(args)` is the application builder named in the Serve config.

A full fine-tune is served as its own application whose base is the fine-tuned model.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict
from ray import serve

from workers.data import chat_prompt_ids, encode_classification, load_tokenizer, prompt_ids
from workers.sources import local_dir, resolve_model_source
from workers.spec import ADAPTER_LOAD_HEADER, BASE_MODEL_ID, BATCH_SIZE_HEADER, ServeArgs

MANIFEST_FILE = "tuneplane.json"


# ---------------------------------------------------------------- artifacts


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    return dict(json.loads(path.read_text())) if path.exists() else {}


# ---------------------------------------------------------------- generation


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    adapter: str | None = None  # None: the base model
    stream: bool = False  # its caller wants each step's text as it comes


@dataclass
class Delta:
    """What one decode step added to one request's completion."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    batch_size: int = 1  # requests decoded together with this one


@dataclass
class _Row:
    request: GenerationRequest
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    generated: int = 0  # tokens sampled, the final EOS included (what usage counts)
    text: str = ""
    done: bool = False


def _sample(logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None) -> int:
    if params.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


class _AdapterHost:
    """Adapters loaded into one peft model under their own names."""

    def __init__(self, base: torch.nn.Module) -> None:
        self.base = base
        self.model: Any = base  # becomes a PeftModel with the first adapter
        self.loaded: set[str] = set()
        # Adapter loads and forward passes must not interleave (they change the modules).
        self.lock = threading.Lock()

    def load(self, name: str, directory: Path) -> None:
        from peft import PeftModel

        with self.lock:
            if name in self.loaded:
                return
            if self.model is self.base:
                self.model = PeftModel.from_pretrained(self.base, str(directory), adapter_name=name)
            else:
                self.model.load_adapter(str(directory), adapter_name=name)
            self.model.eval()
            self.loaded.add(name)

    def unload(self, name: str) -> None:
        with self.lock:
            if name not in self.loaded:
                return
            if len(self.loaded) == 1:
                # peft keeps at least one adapter; the last one stays until replaced.
                return
            if self.model.active_adapter == name:
                self.model.set_adapter(next(a for a in self.loaded if a != name))
            self.model.delete_adapter(name)
            self.loaded.discard(name)

    def adapter_kwargs(self, adapters: Sequence[str | None]) -> dict[str, Any]:
        """Forward arguments that apply each row's adapter; call with the lock held.

        A batch of one adapter only activates it: peft's per-row routing registers hooks
        on every LoRA layer at every forward, which costs more than a tiny model's step."""
        if self.model is self.base:
            return {}
        unique = set(adapters)
        if len(unique) == 1 and None not in unique:
            name = next(iter(unique))
            if self.model.active_adapter != name:
                self.model.set_adapter(name)
            return {}
        return {"adapter_names": [a if a is not None else "__base__" for a in adapters]}


class CausalLMEngine:
    """A causal LM and its adapters; generates for a batch of requests at once."""

    def __init__(self, source: str, models_dir: str, max_context_tokens: int = 1024) -> None:
        from transformers import AutoModelForCausalLM

        path = resolve_model_source(source, Path(models_dir))
        self.tokenizer = load_tokenizer(source, models_dir)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        base: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        base = base.to(self.device).eval()
        self.host = _AdapterHost(base)
        self.max_context_tokens = max_context_tokens
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # The first forward pass pays one-off costs (kernels, allocator, lazy modules):
        # paid here, before the replica says it is ready, not by the first request.
        with torch.inference_mode():
            base(input_ids=torch.tensor([[self.pad_id] * 4], device=self.device))

    def load_adapter(self, name: str, directory: Path) -> None:
        self.host.load(name, directory)

    def unload_adapter(self, name: str) -> None:
        self.host.unload(name)

    def encode_prompt(self, prompt: str) -> list[int]:
        return prompt_ids(self.tokenizer, prompt)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return chat_prompt_ids(self.tokenizer, messages)

    def generate(self, requests: Sequence[GenerationRequest]) -> Iterator[list[Delta | None]]:
        """One list per decode step: each request's new text, None once it has finished.

        Rows are left-padded into one batch; each row samples with its own parameters and
        generator (so a seed gives the same text whatever else is in the batch)."""
        rows = [
            _Row(
                r,
                torch.Generator().manual_seed(r.params.seed) if r.params.seed is not None else None,
            )
            for r in requests
        ]
        width = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[i, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        adapters = [r.adapter for r in requests]
        steps = max(r.params.max_tokens for r in requests)
        past: Any = None
        for step in range(steps):
            with self.host.lock, torch.inference_mode():
                # Per step: an adapter load between steps may have changed the active one.
                out = self.host.model(
                    input_ids=ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=past,
                    use_cache=True,
                    **self.host.adapter_kwargs(adapters),
                )
            past = out.past_key_values
            logits = out.logits[:, -1, :].float().cpu()
            deltas: list[Delta | None] = []
            next_ids: list[int] = []
            for i, row in enumerate(rows):
                if row.done:
                    deltas.append(None)
                    next_ids.append(self.pad_id)
                    continue
                token = _sample(logits[i], row.request.params, row.generator)
                next_ids.append(token)
                deltas.append(self._advance(row, token))
            yield deltas
            if all(row.done for row in rows) or step == steps - 1:
                return
            ids = torch.tensor(next_ids, dtype=torch.long, device=self.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
            positions = positions[:, -1:] + 1

    def _advance(self, row: _Row, token: int) -> Delta:
        params = row.request.params
        finish: str | None = None
        row.generated += 1
        if token == self.eos_id:
            finish = "stop"
        else:
            row.tokens.append(token)
        text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
        # Hold back a partial UTF-8 sequence until its last byte arrives.
        if finish is None and text.endswith("\ufffd"):
            text = row.text
        for stop in params.stop:
            at = text.find(stop)
            if at >= 0:
                text, finish = text[:at], "stop"
        if finish is None and len(row.tokens) >= params.max_tokens:
            finish = "length"
        if (
            finish is None
            and len(row.request.prompt_ids) + len(row.tokens) >= self.max_context_tokens
        ):
            finish = "length"
        new = text[len(row.text) :] if text.startswith(row.text) else ""
        row.text = text if text.startswith(row.text) else row.text
        if finish is not None:
            row.done = True
        return Delta(new, finish, len(row.request.prompt_ids), row.generated)


def _unsplit(batched: Any, request: GenerationRequest) -> Any:
    """Queue `request` for the batch with no multiplexed model id in its context.

    Serve splits a batch by the callers' multiplexed model ids, which would decode each
    adapter's requests alone; our batches carry each row's adapter themselves and mix
    them in one decode loop, so the id is hidden while the request is queued."""
    import dataclasses

    from ray.serve import context

    var: Any = context._serve_request_context  # typed as holding None in Ray 2.60
    current = var.get() or context._RequestContext()
    token = var.set(dataclasses.replace(current, multiplexed_model_id=""))
    try:
        return batched(request)
    finally:
        var.reset(token)


def _run_to_end(engine: CausalLMEngine, requests: Sequence[GenerationRequest]) -> list[Delta]:
    """Generate the whole batch; each request's deltas folded into one."""
    folded = [Delta("") for _ in requests]
    for deltas in engine.generate(requests):
        for out, d in zip(folded, deltas, strict=True):
            if d is not None:
                out.text += d.text
                out.finish_reason = d.finish_reason
                out.prompt_tokens, out.completion_tokens = d.prompt_tokens, d.completion_tokens
    return folded


class ClassifierEngine:
    """A sequence classifier and its adapters (each with its own head and labels)."""

    def __init__(self, source: str, models_dir: str, num_labels: int) -> None:
        from transformers import AutoModelForSequenceClassification

        path = resolve_model_source(source, Path(models_dir))
        self.tokenizer = load_tokenizer(source, models_dir)
        base = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=num_labels, ignore_mismatched_sizes=True
        ).eval()
        self.host = _AdapterHost(base)
        self.labels: dict[str | None, list[str]] = {None: [str(i) for i in range(num_labels)]}
        # Per adapter: the max_length its job trained with (the manifest's).
        self.max_lengths: dict[str | None, int] = {}
        self.default_max_length = int(
            min(getattr(self.tokenizer, "model_max_length", 512) or 512, 512)
        )
        config_labels = getattr(base.config, "id2label", None) or {}
        if len(config_labels) == num_labels:
            self.labels[None] = [str(config_labels[i]) for i in range(num_labels)]

    def load_adapter(self, name: str, directory: Path) -> None:
        manifest = read_manifest(directory)
        labels = manifest.get("labels")
        self.host.load(name, directory)
        if labels:
            self.labels[name] = [str(x) for x in labels]
        if manifest.get("max_length"):
            self.max_lengths[name] = int(manifest["max_length"])

    def unload_adapter(self, name: str) -> None:
        self.host.unload(name)
        self.labels.pop(name, None)
        self.max_lengths.pop(name, None)

    def classify(
        self, texts: Sequence[str], adapter: str | None
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """Labels and scores of each text, and each text's tokens (one forward pass)."""
        max_length = self.max_lengths.get(adapter, self.default_max_length)
        ids = encode_classification(self.tokenizer, texts, max_length)
        enc = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        model = self.host.model
        with self.host.lock, torch.inference_mode():
            if model is self.host.base:
                logits = model(**enc).logits.float()
            elif adapter is None:
                with model.disable_adapter():
                    logits = model(**enc).logits.float()
            else:
                # One adapter per call: its classification head is its own module.
                model.set_adapter(adapter)
                logits = model(**enc).logits.float()
        probs = torch.softmax(logits, dim=-1)
        labels = self.labels.get(adapter, self.labels[None])
        results = []
        for i, row in enumerate(probs):
            best = int(torch.argmax(row))
            results.append(
                {
                    "index": i,
                    "label": labels[best],
                    "score": float(row[best]),
                    "scores": {labels[j]: float(p) for j, p in enumerate(row)},
                }
            )
        return results, [int(n) for n in enc["attention_mask"].sum(dim=1)]


# ---------------------------------------------------------------- OpenAI request parsing


class _Body(BaseModel):
    # The control plane has validated the request already; these are the fields used.
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None


class CompletionBody(_Body):
    prompt: str | list[str] | list[int]


class ChatBody(_Body):
    messages: list[dict[str, Any]]


class ClassificationBody(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    input: str | list[str]


def sampling_params(body: _Body, default_max_tokens: int) -> SamplingParams:
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    max_tokens = body.max_completion_tokens or body.max_tokens or default_max_tokens
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=tuple(s for s in stop if s),
        seed=body.seed,
    )


def message_text(content: Any) -> str:
    """OpenAI message content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


# ---------------------------------------------------------------- OpenAI responses


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class _Completion:
    """Accumulates one request's deltas into OpenAI's object for `kind`."""

    def __init__(self, kind: Literal["chat", "text"], model: str) -> None:
        self.kind = kind
        self.model = model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.text = ""
        self.finish: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, delta: Delta) -> None:
        self.text += delta.text
        self.finish = delta.finish_reason or self.finish
        self.prompt_tokens, self.completion_tokens = delta.prompt_tokens, delta.completion_tokens

    def _head(self, chunk: bool) -> dict[str, Any]:
        if self.kind == "chat":
            obj = "chat.completion.chunk" if chunk else "chat.completion"
        else:
            obj = "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def final(self) -> dict[str, Any]:
        if self.kind == "chat":
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": self.text},
                "finish_reason": self.finish,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": self.text, "finish_reason": self.finish, "logprobs": None}
        usage = _usage(self.prompt_tokens, self.completion_tokens)
        return {**self._head(False), "choices": [choice], "usage": usage}

    def chunk(self, text: str, finish: str | None, first: bool = False) -> bytes:
        if self.kind == "chat":
            delta: dict[str, Any] = {"content": text}
            if first:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {
                "index": 0,
                "delta": delta,
                "finish_reason": finish,
                "logprobs": None,
            }
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
        return _sse({**self._head(True), "choices": [choice]})

    def usage_chunk(self) -> bytes:
        usage = _usage(self.prompt_tokens, self.completion_tokens)
        return _sse({**self._head(True), "choices": [], "usage": usage})


def error_response(status: int, message: str, code: str, param: str | None = None) -> Any:
    from starlette.responses import JSONResponse

    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


# ---------------------------------------------------------------- the deployment


Engine = CausalLMEngine | ClassifierEngine


def build_engine(args: ServeArgs, cache: Path) -> Engine:
    source = args.source
    if "://" in source and not source.startswith("file://"):
        source = str(local_dir(source, cache))
    elif source.startswith("file://"):
        source = source[len("file://") :]
    if args.task == "sequence_classification":
        return ClassifierEngine(source, args.models_dir, args.num_labels or 2)
    return CausalLMEngine(source, args.models_dir, args.max_context_tokens)


# Serve's typing of `batch` knows no async generators; sizes are reset per replica.
_BATCHED: Any = serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
_BATCHED_CLASSIFY: Any = serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)


class ModelServer:
    """The Serve deployment class (wrapped by `serve.deployment` in `build_app`)."""

    def __init__(self, args: dict[str, Any] | ServeArgs, engine: Engine | None = None) -> None:
        from ray import serve

        self.args = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
        self.cache = Path(tempfile.mkdtemp(prefix="tuneplane-serve-"))
        self.engine = engine if engine is not None else build_engine(self.args, self.cache)
        self.fresh_loads: dict[str, float] = {}
        engine_ref = self.engine
        fresh = self.fresh_loads
        cache = self.cache

        async def load(model_id: str) -> _LoadedAdapter:
            if model_id == BASE_MODEL_ID:
                return _LoadedAdapter(None, engine_ref)
            started = time.perf_counter()
            directory = await asyncio.to_thread(local_dir, model_id, cache)
            name = "a" + uuid.uuid5(uuid.NAMESPACE_URL, model_id).hex
            await asyncio.to_thread(engine_ref.load_adapter, name, directory)
            fresh[model_id] = time.perf_counter() - started
            return _LoadedAdapter(name, engine_ref)

        # The LRU size is an argument of the app, so the decorator is applied per replica.
        self.get_adapter = serve.multiplexed(max_num_models_per_replica=self.args.max_adapters)(
            load
        )
        self.generate_batch.set_max_batch_size(self.args.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self.classify_batch.set_max_batch_size(self.args.max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)

    @_BATCHED_CLASSIFY
    async def classify_batch(
        self, requests: list[tuple[list[str], str | None]]
    ) -> list[tuple[list[dict[str, Any]], list[int]]]:
        """Requests for the same adapter share one forward pass, off the event loop (the
        replica keeps taking requests meanwhile)."""
        assert isinstance(self.engine, ClassifierEngine)
        engine = self.engine
        out: list[tuple[list[dict[str, Any]], list[int]]] = [([], []) for _ in requests]
        by_adapter: dict[str | None, list[int]] = {}
        for i, (_, adapter) in enumerate(requests):
            by_adapter.setdefault(adapter, []).append(i)
        for adapter, members in by_adapter.items():
            texts = [t for i in members for t in requests[i][0]]
            results, tokens = await asyncio.to_thread(engine.classify, texts, adapter)
            start = 0
            for i in members:
                n = len(requests[i][0])
                mine = [{**r, "index": k} for k, r in enumerate(results[start : start + n])]
                out[i] = (mine, tokens[start : start + n])
                start += n
        return out

    @_BATCHED
    async def generate_batch(
        self, requests: list[GenerationRequest]
    ) -> AsyncIterator[list[Delta | type[StopIteration]]]:
        assert isinstance(self.engine, CausalLMEngine)
        if not any(r.stream for r in requests):
            # Nobody streams: one hop to the decode thread for the whole batch, not one
            # per step (each hop wakes every caller of the batch).
            folded = await asyncio.to_thread(_run_to_end, self.engine, requests)
            for d in folded:
                d.batch_size = len(requests)
            yield list[Delta | type[StopIteration]](folded)
            return
        steps = self.engine.generate(requests)
        while True:
            # The decode step runs off the event loop so new requests keep queueing for
            # the next batch meanwhile.
            deltas = await asyncio.to_thread(next, steps, None)
            if deltas is None:
                return
            # A row that finished in an earlier step ends its caller's stream.
            yield [StopIteration if d is None else d for d in deltas]

    async def __call__(self, request: Any) -> Any:
        from ray import serve

        path = request.url.path.rstrip("/")
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "The body is not JSON.", "invalid_json")
        model_id = serve.get_multiplexed_model_id() or BASE_MODEL_ID
        adapter = await self.get_adapter(model_id)
        headers = {}
        load_s = self.fresh_loads.pop(model_id, None)
        if load_s is not None:
            headers[ADAPTER_LOAD_HEADER] = f"{load_s:.6f}"
        try:
            if path.endswith("/classifications"):
                return await self._classify(
                    ClassificationBody.model_validate(body), adapter, headers
                )
            if path.endswith("/chat/completions"):
                chat = ChatBody.model_validate(body)
                return await self._complete("chat", chat, adapter, headers)
            if path.endswith("/completions"):
                return await self._complete(
                    "text", CompletionBody.model_validate(body), adapter, headers
                )
        except ValueError as exc:
            return error_response(400, str(exc), "invalid_request")
        return error_response(404, f"No route {path}.", "not_found")

    async def _classify(
        self, body: ClassificationBody, adapter: _LoadedAdapter, headers: dict[str, str]
    ) -> Any:
        from starlette.responses import JSONResponse

        if not isinstance(self.engine, ClassifierEngine):
            return error_response(
                400, f"'{body.model}' is not a classifier.", "wrong_task", "model"
            )
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        results, per_text = await self.classify_batch((texts, adapter.name))
        tokens = sum(per_text)
        out = {
            "id": "clf-" + uuid.uuid4().hex,
            "object": "classification",
            "created": int(time.time()),
            "model": body.model,
            "data": results,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return JSONResponse(out, headers=headers)

    async def _complete(
        self,
        kind: Literal["chat", "text"],
        body: _Body,
        adapter: _LoadedAdapter,
        headers: dict[str, str],
    ) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        if not isinstance(self.engine, CausalLMEngine):
            return error_response(400, f"'{body.model}' is a classifier.", "wrong_task", "model")
        if isinstance(body, ChatBody):
            messages = [
                {"role": str(m.get("role", "user")), "content": message_text(m.get("content"))}
                for m in body.messages
            ]
            ids = self.engine.encode_chat(messages)
        else:
            assert isinstance(body, CompletionBody)
            prompt = body.prompt
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
                ids = [int(x) for x in prompt]
            else:
                text = prompt if isinstance(prompt, str) else "".join(str(p) for p in prompt)
                ids = self.engine.encode_prompt(text)
        room = self.args.max_context_tokens - len(ids)
        if room < 1:
            return error_response(
                400,
                f"The prompt has {len(ids)} tokens; this model's context is "
                f"{self.args.max_context_tokens}.",
                "context_length_exceeded",
                "messages" if kind == "chat" else "prompt",
            )
        params = sampling_params(body, default_max_tokens=16)
        if params.max_tokens > room:
            params = SamplingParams(
                room, params.temperature, params.top_p, params.stop, params.seed
            )
        stream = _unsplit(
            self.generate_batch, GenerationRequest(ids, params, adapter.name, body.stream)
        )
        completion = _Completion(kind, body.model)
        completion.prompt_tokens = len(ids)
        if not body.stream:
            async for delta in stream:
                completion.add(delta)
            headers[BATCH_SIZE_HEADER] = str(delta.batch_size)
            return JSONResponse(completion.final(), headers=headers)

        async def events() -> AsyncIterator[bytes]:
            first = True
            if kind == "chat":
                yield completion.chunk("", None, first=True)
                first = False
            async for delta in stream:
                completion.add(delta)
                if delta.text or delta.finish_reason:
                    yield completion.chunk(delta.text, delta.finish_reason, first=first)
                    first = False
            yield completion.usage_chunk()
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


@dataclass(frozen=True)
class _LoadedAdapter:
    name: str | None
    engine: Engine

    def __del__(self) -> None:
        # Serve calls this when the LRU evicts the adapter: free its weights.
        if self.name is not None:
            # Never let an eviction take the replica down.
            with contextlib.suppress(Exception):
                self.engine.unload_adapter(self.name)


def build_app(args: dict[str, Any]) -> Any:
    """The application builder named in the Serve config (`workers.serve:build_app`).

    Replica count, autoscaling and resources come from the config's deployment options."""
    ServeArgs.model_validate(args)
    return serve.deployment(name="model")(ModelServer).bind(args)
