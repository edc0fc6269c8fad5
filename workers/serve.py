"""Serving: one Ray Serve application per base model, LoRA adapters multiplexed on it.

The control plane owns the applications (it writes Serve's declarative config) and
forwards authenticated requests to them with the adapter's artifact URI as the
multiplexed model id (``serve_multiplexed_model_id``). Tenants never reach Serve.

This module is the deployment; the engines, batching, adapters and OpenAI shapes it
composes live in `workers.serving`.

- `ModelServer` is the deployment: adapters come and go through `@serve.multiplexed`
  (LRU, size from the app's arguments); generation requests join one continuously
  batched decode loop (`workers.serving.continuous`) in which every row may use another
  adapter; classification requests are batched with `@serve.batch`;
  answers are OpenAI's objects, streamed as Server-Sent Events when asked.
- `build_app(args)` is the application builder named in the Serve config.

A full fine-tune is served as its own application whose base is the fine-tuned model.
A job's checkpoint is served like its model: its ``model/`` folder is the adapter (or the
whole model) it names.
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ray import serve

from workers.serving.adapters import LoadedAdapter, adapter_loader
from workers.serving.batching import ClassifyRequest, ClassifyResult, classify_grouped
from workers.serving.classifier import ClassifierEngine
from workers.serving.continuous import ContinuousBatcher, TextGenerator
from workers.serving.engine import CausalLMEngine, GenerationRequest, SamplingParams
from workers.serving.openai_api import (
    ChatBody,
    ClassificationBody,
    Completion,
    CompletionBody,
    GenerationBody,
    Kind,
    error_response,
    prompt_token_ids,
    sampling_params,
    sse_events,
)
from workers.sources import local_dir
from workers.spec import ADAPTER_LOAD_HEADER, BASE_MODEL_ID, BATCH_SIZE_HEADER, ServeArgs

Engine = TextGenerator | ClassifierEngine


def build_engine(args: ServeArgs, cache: Path) -> Engine:
    source = args.source
    if "://" in source and not source.startswith("file://"):
        source = str(local_dir(source, cache))
    elif source.startswith("file://"):
        source = source[len("file://") :]
    if args.task == "sequence_classification":
        return ClassifierEngine(source, args.models_dir, args.num_labels or 2)
    if engine_kind(args, source) == "vllm":
        from workers.serving.vllm_engine import VLLMEngine

        return VLLMEngine(
            source,
            args.models_dir,
            args.max_context_tokens,
            args.max_adapters,
            args.max_lora_rank,
            args.max_batch_size,
        )
    engine = CausalLMEngine(source, args.models_dir, args.max_context_tokens)
    return ContinuousBatcher(engine, args.max_batch_size)


def engine_kind(args: ServeArgs, source: str) -> str:
    """The engine a generation replica runs: the one named, or for "auto" vLLM where
    there is a GPU, vLLM is installed and supports the architecture, else transformers."""
    if args.engine == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise RuntimeError(
                "the deployment asks for engine 'vllm', which is not installed on this "
                "replica's image (install vLLM before the project: see the README's "
                "'Serving with vLLM on a GPU')"
            )
        return "vllm"
    if args.engine == "hf" or importlib.util.find_spec("vllm") is None:
        return "hf"
    import torch

    if not torch.cuda.is_available():
        return "hf"
    from workers.serving.vllm_engine import supports

    return "vllm" if supports(source, args.models_dir) else "hf"


# Serve's typing of `batch` is loose; sizes are reset per replica.
_BATCHED_CLASSIFY: Any = serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)


class ModelServer:
    """The Serve deployment class (wrapped by `serve.deployment` in `build_app`)."""

    def __init__(self, args: dict[str, Any] | ServeArgs, engine: Engine | None = None) -> None:
        self.args = args if isinstance(args, ServeArgs) else ServeArgs.model_validate(args)
        self.cache = Path(tempfile.mkdtemp(prefix="tuneplane-serve-"))
        self.engine = engine if engine is not None else build_engine(self.args, self.cache)
        self.fresh_loads: dict[str, float] = {}
        # The LRU size is an argument of the app, so the decorator is applied per replica.
        self.get_adapter = serve.multiplexed(max_num_models_per_replica=self.args.max_adapters)(
            adapter_loader(self.engine, self.cache, self.fresh_loads)
        )
        self.classify_batch.set_max_batch_size(self.args.max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)

    @_BATCHED_CLASSIFY
    async def classify_batch(self, requests: list[ClassifyRequest]) -> list[ClassifyResult]:
        assert isinstance(self.engine, ClassifierEngine)
        return await classify_grouped(self.engine, requests)

    async def __call__(self, request: Any) -> Any:
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
        self, body: ClassificationBody, adapter: LoadedAdapter, headers: dict[str, str]
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
        self, kind: Kind, body: GenerationBody, adapter: LoadedAdapter, headers: dict[str, str]
    ) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        if isinstance(self.engine, ClassifierEngine):
            return error_response(400, f"'{body.model}' is a classifier.", "wrong_task", "model")
        ids = prompt_token_ids(body, self.engine)
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
        stream = self.engine.generate(GenerationRequest(ids, params, adapter.name, body.stream))
        completion = Completion(kind, body.model, body.include_usage)
        completion.prompt_tokens = len(ids)
        if not body.stream:
            async for delta in stream:
                completion.add(delta)
            headers[BATCH_SIZE_HEADER] = f"{delta.batch_size:.2f}"
            return JSONResponse(completion.final(), headers=headers)
        return StreamingResponse(
            sse_events(completion, stream), media_type="text/event-stream", headers=headers
        )


def build_app(args: dict[str, Any]) -> Any:
    """The application builder named in the Serve config (`workers.serve:build_app`).

    Replica count, autoscaling and resources come from the config's deployment options."""
    ServeArgs.model_validate(args)
    return serve.deployment(name="model")(ModelServer).bind(args)
