# Pipeline component image: every KFP step runs here (the train step on a GPU node).
# CUDA-capable PyTorch: torch's CUDA wheels (nvidia-* in requirements.lock) carry the CUDA runtime,
# so the base is plain Python; the node's NVIDIA driver is mounted by the NVIDIA container toolkit.
# Build: make images (context: the repository root).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
RUN pip install --no-cache-dir --disable-pip-version-check uv==${UV_VERSION}
WORKDIR /src
# Exactly what CI installs (Makefile: `uv pip sync requirements.lock`, then the package with --no-deps).
COPY requirements.lock pyproject.toml README.md ./
RUN python -m venv /opt/venv \
 && uv pip sync --python /opt/venv/bin/python requirements.lock
COPY mlplatform ./mlplatform
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
RUN uv pip install --python /opt/venv/bin/python --no-deps .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 mlplatform \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlplatform
COPY --from=build /opt/venv /opt/venv
COPY feature_repo /app/feature_repo
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /app
USER 10001:10001
