"""The models and what runs them, on torch: image backbones (image.py), CLIP-family towers
(towers.py, text_head.py), the engines (engines.py) and weights (weights.py).

Only the model replicas (deployments/model), the CLI and benchmarks load it; an ingress
replica never does (tests/unit/test_layout.py)."""
