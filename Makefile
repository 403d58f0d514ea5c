# mlplatform: the two commands are `make run` and `make test`. Everything else is a helper.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3.11
UV_VERSION  := 0.13.9
VENV        := .venv
PY          := $(VENV)/bin/python
UV          := $(VENV)/bin/uv
STAMP       := $(VENV)/.installed
RUN_DIR     ?= .mlplatform

.PHONY: help
help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# The last step writes bytecode for every installed module, once: the tests start many Python processes
# (serving, monitor, MLflow server, pipeline steps), and where PYTHONDONTWRITEBYTECODE is set each of them
# would compile mlflow/torch/sklearn again on import (measured: 20-28 s instead of 6-7 s on 2 busy cores).
# A file that does not compile under this Python (torch's py312-only test helpers) is never imported.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	$(UV) pip sync --python $(PY) requirements.lock
	$(UV) pip install --python $(PY) --no-deps -e .
	$(PY) -m compileall -qq -j 0 $(VENV)/lib/python3.11/site-packages || true
	touch $@

.PHONY: venv
venv: $(STAMP) ## create .venv from the committed lock (fast when nothing changed)

.PHONY: lock
lock: ## re-resolve requirements.lock from pyproject.toml
	$(UV) pip compile pyproject.toml --extra dev --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 -o requirements.lock

.PHONY: services
services: ## install (Debian packages, Maven Central) and start Redis, PostgreSQL, Prometheus and the Kafka broker for the tests
	bash scripts/services.sh up

.PHONY: services-down
services-down: ## stop the test services
	bash scripts/services.sh down

.PHONY: run
run: venv ## the main job: v1 trained and served as champion; v2 trained, canaried, promoted or rolled back; served
	$(VENV)/bin/mlplatform run --work-dir $(RUN_DIR) --no-serve
	$(VENV)/bin/mlplatform run --work-dir $(RUN_DIR) --seed 43

.PHONY: test
test: venv services tools kube-tools ## every test that can run on this machine
	$(VENV)/bin/ruff check mlplatform components pipelines serving tests benchmarks feature_repo scripts
	$(VENV)/bin/ruff format --check mlplatform components pipelines serving tests benchmarks feature_repo scripts
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pytest -q

.PHONY: tools
tools: ## build helm, kubeconform, kustomize (Go, pinned), checkov and the benchmarks' load generator into .tools/ (fast when built)
	bash scripts/tools.sh

.PHONY: loadgen
loadgen: ## build the serving benchmarks' load generator (benchmarks/loadgen, Go stdlib) into .tools/bin/ (fast when built)
	bash scripts/tools.sh loadgen

.PHONY: kube-tools
kube-tools: ## build etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok, KServe, Knative, Trainer, JobSet (pinned) into .tools/kube/
	bash scripts/kube/build.sh

.PHONY: kube-up
kube-up: venv tools kube-tools ## a real Kubernetes control plane on loopback with kind-shaped fake nodes (no containers run)
	$(PY) scripts/kube/sandbox.py up

.PHONY: kube-down
kube-down: ## stop the control plane kube-up started
	$(PY) scripts/kube/sandbox.py down

IMAGE_REGISTRY   ?= ghcr.io/mlplatform
IMAGE_TAG        ?= 0.1.0
CONTAINER_ENGINE ?= $(shell command -v docker || command -v podman)
PUSH             ?= 1

.PHONY: images
images: ## build (and push unless PUSH=0) the component (CUDA) and serving (CPU) images
	@test -n "$(CONTAINER_ENGINE)" || { echo "make images needs docker or podman"; exit 1; }
	$(CONTAINER_ENGINE) build -f images/components.Dockerfile -t $(IMAGE_REGISTRY)/mlplatform-components:$(IMAGE_TAG) .
	$(CONTAINER_ENGINE) build -f images/serving.Dockerfile -t $(IMAGE_REGISTRY)/mlplatform-serving:$(IMAGE_TAG) .
	if [ "$(PUSH)" = 1 ]; then \
	  $(CONTAINER_ENGINE) push $(IMAGE_REGISTRY)/mlplatform-components:$(IMAGE_TAG); \
	  $(CONTAINER_ENGINE) push $(IMAGE_REGISTRY)/mlplatform-serving:$(IMAGE_TAG); \
	fi

.PHONY: cluster-up
cluster-up: tools ## kind cluster (kind-config.yaml) + pinned prerequisites + this chart (needs docker, kind, kubectl)
	bash scripts/cluster.sh up

.PHONY: cluster-down
cluster-down: ## delete the kind cluster
	bash scripts/cluster.sh down

.PHONY: compile
compile: venv ## compile the training pipeline to build/training_pipeline.yaml
	$(VENV)/bin/mlplatform pipeline compile --output build/training_pipeline.yaml

.PHONY: bench-pipeline
bench-pipeline: venv ## wall time per pipeline step at 100k and 1M transactions (JSON)
	$(PY) benchmarks/bench_pipeline.py --sizes 100000 1000000 --output benchmarks/results/pipeline.json

.PHONY: bench-train
bench-train: venv ## training loop vs a bare PyTorch loop, samples/s per batch size (CUDA if present, JSON)
	$(PY) benchmarks/bench_train.py --variants

.PHONY: test-gpu
test-gpu: ## the gpu tests; needs only torch, numpy, safetensors and pytest (a bare GPU machine)
	python -m pytest --noconftest -q -m gpu tests/unit/test_training_gpu.py

.PHONY: bench-serving
bench-serving: venv services loadgen ## full local serving path vs a one-process baseline: RPS, p50/p95/p99, CPU (JSON)
	$(PY) benchmarks/bench_serving.py --output benchmarks/results/serving.json

.PHONY: profile-serving
profile-serving: venv services loadgen ## py-spy on the full local serving path under load: flame graphs + CPU by library (benchmarks/results/profile/)
	$(PY) benchmarks/profile_serving.py --output benchmarks/results/profile

.PHONY: reliability
reliability: venv services loadgen ## bad input (>= 10,000 cases), load + shedding, faults, pip-audit, ML Test Score (JSON + docs/reliability.md)
	PYTHONPATH=. $(PY) benchmarks/reliability.py --output benchmarks/results/reliability.json --doc docs/reliability.md

.PHONY: bench-feedback-loop
bench-feedback-loop: venv ## drift onset -> alert -> retraining run -> challenger -> canary outcome: seconds per link (JSON)
	PYTHONPATH=. $(PY) benchmarks/bench_feedback_loop.py --output benchmarks/results/feedback_loop.json

# Not part of `make bench`: its cold build alone takes about 20 minutes on 2 cores (a fresh tools folder and an
# empty Go build cache). BENCH_CLUSTER_ARGS=--skip-cold-build measures everything else in a few minutes.
BENCH_CLUSTER_ARGS ?=
.PHONY: bench-cluster
bench-cluster: venv tools kube-tools ## control plane: cold/warm build, start, helm install per profile, rollout steps (JSON)
	PYTHONPATH=. $(PY) benchmarks/bench_cluster.py --output benchmarks/results/cluster.json $(BENCH_CLUSTER_ARGS)

.PHONY: bench-streaming
bench-streaming: venv services loadgen ## stream feature processor: events/s, freshness lag at 200/s, online=offline replay, endpoint p99 publishing on vs off (JSON)
	$(PY) benchmarks/bench_streaming.py --output benchmarks/results/streaming.json

.PHONY: bench-staleness
bench-staleness: venv ## PR-AUC per week of model age under gradual drift -> loss per week, alert threshold, retraining cadence (JSON)
	$(PY) benchmarks/bench_staleness.py --output benchmarks/results/staleness.json

# Not part of `make bench`: a dozen full training runs (about 10 minutes on 2 busy cores).
.PHONY: bench-tuning
bench-tuning: venv ## train-step defaults vs a seeded Optuna search (12 trials, 60k transactions): test PR-AUC, gain, wall time (JSON)
	$(PY) benchmarks/bench_tuning.py --output benchmarks/results/tuning.json

.PHONY: bench-features
bench-features: venv ## each model feature's permutation importance beside its online bytes and lookup time, reference run (JSON)
	PYTHONPATH=. $(PY) benchmarks/bench_features.py --output benchmarks/results/features.json

.PHONY: bench
bench: bench-pipeline bench-train bench-serving bench-streaming bench-staleness bench-features ## all benchmarks

.PHONY: clean
clean: ## remove run outputs (keeps .venv)
	rm -rf $(RUN_DIR) build .pytest_cache
