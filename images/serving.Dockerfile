# Serving image: KServe predictor and transformer (serving/), and the MLflow tracking server and Feast
# feature server of the Helm chart. CPU only: the same requirements.lock as CI, with torch's CUDA
# runtime left out and torch pinned to the same version's +cpu build (scripts/cpu_lock.py;
# docs/adr/0006-foundations.md explains why).
# Build: make images (context: the repository root).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG UV_VERSION=0.13.9
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir --disable-pip-version-check uv==${UV_VERSION}
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY scripts/cpu_lock.py ./scripts/cpu_lock.py
# The CI lock, minus CUDA, plus torch==<locked version>+cpu from the PyTorch CPU index.
RUN python scripts/cpu_lock.py requirements.lock > requirements-cpu.lock \
 && python -m venv /opt/venv \
 && uv pip sync --python /opt/venv/bin/python \
      --extra-index-url ${TORCH_CPU_INDEX} --index-strategy unsafe-best-match requirements-cpu.lock
COPY mlplatform ./mlplatform
COPY components ./components
COPY pipelines ./pipelines
COPY serving ./serving
RUN uv pip install --python /opt/venv/bin/python --no-deps .

FROM ${PYTHON_IMAGE}
RUN groupadd --gid 10001 mlplatform \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp --shell /usr/sbin/nologin mlplatform
COPY --from=build /opt/venv /opt/venv
# The Feast feature server reads its definitions from here (helm/mlplatform/templates/feature-server.yaml).
COPY feature_repo /app/feature_repo
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# In a container the platform's servers listen on every interface (Kubernetes reaches them on the pod's IP);
# outside one they listen on loopback unless told otherwise (mlplatform.http.HttpServerSettings.host).
ENV MLPLATFORM_SERVING_HOST=0.0.0.0 \
    MLPLATFORM_MONITOR_HOST=0.0.0.0 \
    MLPLATFORM_WEBHOOK_HOST=0.0.0.0 \
    MLPLATFORM_STREAM_HOST=0.0.0.0
WORKDIR /app
EXPOSE 8080 8081
USER 10001:10001
