# syntax=docker/dockerfile:1
# DoctorAI image: CPU by default, GPU with one build argument.
#
#   CPU:  docker build --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> -t doctorai .
#   GPU:  docker build --build-arg VARIANT=gpu -t doctorai:gpu .
#   Run:  docker run -p 7860:7860 -v doctorai-data:/data doctorai
#
# The starter weights (assets/models, a few MB) are baked in; mount another folder and set
# DOCTORAI_MODEL_DIR to serve other weights without rebuilding. All state goes to /data.

# cpu | gpu: which dependency stage the final image is built on.
ARG VARIANT=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- shared base
FROM ${PYTHON_IMAGE} AS base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    MPLCONFIGDIR=/tmp/matplotlib \
    DOCTORAI_HOST=0.0.0.0 \
    DOCTORAI_PORT=7860 \
    DOCTORAI_DATA_DIR=/data
WORKDIR /app
# A fixed numeric uid/gid (1000) so Kubernetes' runAsNonRoot can verify it.
RUN useradd --create-home --uid 1000 --user-group doctorai \
 && mkdir -p /data \
 && chown doctorai:doctorai /data
COPY requirements.txt .

# ---------------------------------------------------------------- CPU dependencies
FROM base AS deps-cpu
# Keep the image CPU-only: pass PyTorch's CPU wheel index as TORCH_INDEX_URL so pip takes
# torch 2.13.0+cpu instead of a multi-GB CUDA build from the default index.
ARG TORCH_INDEX_URL=""
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
 && pip install --no-cache-dir -r requirements.txt

# ---------------------------------------------------------------- GPU dependencies
FROM base AS deps-gpu
# The same pins with TensorFlow's CUDA build: tensorflow[and-cuda] brings the CUDA/cuDNN
# user-space libraries as wheels, and the default index's torch is a CUDA build, so a slim
# Python base is enough; the host needs the NVIDIA driver and the NVIDIA Container Toolkit.
# TORCH_INDEX_URL may name another PyTorch CUDA wheel index (e.g. one matching TF's CUDA 12).
ARG TORCH_INDEX_URL=""
RUN sed 's/^tensorflow-cpu==/tensorflow[and-cuda]==/' requirements.txt > /tmp/requirements-gpu.txt \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0; fi \
 && pip install --no-cache-dir -r /tmp/requirements-gpu.txt \
 && rm /tmp/requirements-gpu.txt
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# ---------------------------------------------------------------- the image
# The base is one of the stages above, picked by VARIANT; hadolint cannot see that, hence
# the DL3006 ("tag the image") exception (see .hadolint.yaml).
# hadolint ignore=DL3006
FROM deps-${VARIANT} AS runtime
WORKDIR /app
COPY --chown=doctorai:doctorai . .
USER 1000:1000

EXPOSE 7860
VOLUME ["/data"]
# Liveness only (the process answers); readiness is deploy/probe.py ready (see the README).
HEALTHCHECK --interval=30s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "/app/deploy/probe.py", "health"]
CMD ["python", "app.py"]
