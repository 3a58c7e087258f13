"""What a request carries, made ready for a model, without torch: decoding and preprocessing
images, CLIP request shapes and tokenizing, model directories and OpenCLIP configs.

The ingress replicas (deployments/edge) run this package; so do the model replicas. It never
loads torch, torchvision, transformers or OpenVINO at import (tests/unit/test_layout.py)."""
