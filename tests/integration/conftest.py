from __future__ import annotations

import pytest

from tests.support.limits import (
    MAX_BODY_BYTES,
    MAX_BULK_BYTES,
    MAX_BULK_ITEMS,
    MAX_ID_LENGTH,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
)
from tests.support.service import ServeInstance, deploy, ray_serve


@pytest.fixture(scope="package")
def serve_instance() -> ServeInstance:
    with ray_serve() as instance:
        yield instance


@pytest.fixture(scope="package")
def serve_base(serve_instance) -> str:
    return serve_instance.base_url


@pytest.fixture(scope="package")
def resnet_url(serve_base, resnet50_file) -> str:
    """ResNet50 with a seeded random state dict whose BatchNorm statistics were measured on
    real photos (tests/conftest.py), loaded through IMG2VEC_WEIGHTS=<path>."""
    env = {
        "IMG2VEC_MODEL": "resnet50",
        "IMG2VEC_WEIGHTS": str(resnet50_file),
        "IMG2VEC_DEVICE": "cpu",
        "IMG2VEC_TORCH_THREADS": "2",
        "IMG2VEC_MAX_BODY_BYTES": str(MAX_BODY_BYTES),
        "IMG2VEC_MAX_IMAGE_BYTES": str(MAX_IMAGE_BYTES),
        "IMG2VEC_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
        "IMG2VEC_MAX_ID_LENGTH": str(MAX_ID_LENGTH),
        "IMG2VEC_MAX_BULK_ITEMS": str(MAX_BULK_ITEMS),
        "IMG2VEC_MAX_BULK_BYTES": str(MAX_BULK_BYTES),
    }
    return deploy("resnet50", "/", env, serve_base)


@pytest.fixture(scope="package")
def mobilenet_url(serve_base, mobilenet_v2_file) -> str:
    """MobileNetV2 with torchvision's real ImageNet weights, side by side under /mobilenet."""
    env = {
        "IMG2VEC_MODEL": "mobilenet_v2",
        "IMG2VEC_WEIGHTS": str(mobilenet_v2_file),
        "IMG2VEC_TORCH_THREADS": "2",
    }
    return deploy("mobilenet_v2", "/mobilenet", env, serve_base)


SMALL_BUDGET = 3_000_000


@pytest.fixture(scope="package")
def mobilenet_small_budget_url(serve_base) -> tuple[str, int]:
    """Random-weight MobileNetV2 whose ingress may hold only 3 MB of requests at once."""
    env = {
        "IMG2VEC_MODEL": "mobilenet_v2",
        "IMG2VEC_WEIGHTS": "random",
        "IMG2VEC_TORCH_THREADS": "1",
        "IMG2VEC_MAX_BODY_BYTES": str(SMALL_BUDGET),
        "IMG2VEC_MAX_INFLIGHT_BYTES": str(SMALL_BUDGET),
        "IMG2VEC_MAX_BULK_BYTES": str(SMALL_BUDGET),
    }
    return deploy("budget", "/budget", env, serve_base), SMALL_BUDGET


@pytest.fixture(scope="package")
def fuzz_url(serve_base, mobilenet_v2_file) -> str:
    """Real-weight MobileNetV2 (fast on CPU) for the fuzz and schema tests."""
    env = {
        "IMG2VEC_MODEL": "mobilenet_v2",
        "IMG2VEC_WEIGHTS": str(mobilenet_v2_file),
        "IMG2VEC_TORCH_THREADS": "2",
        "IMG2VEC_MAX_BODY_BYTES": "1000000",
        "IMG2VEC_MAX_IMAGE_PIXELS": "4000000",
        "IMG2VEC_ACCESS_LOG": "false",  # thousands of requests: no line each
    }
    return deploy("fuzz", "/fuzz", env, serve_base)
