"""The models and what runs them, on torch: image backbones (image.py), multi2vec-clip's
families and their towers (clip/: one module per family behind clip/registry.py), the engines
(engines.py) and weights (weights.py).

Only the model replicas (deployments/model), the application builder, the CLI and benchmarks
load it; an ingress replica never does (tests/unit/test_layout.py)."""
