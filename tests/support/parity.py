"""The parity measure: is our vector the reference's vector, as opposed to another photo's?

A bare cosine threshold cannot tell: with weak weights every photo's vector has cosine
0.9998 to every other's. So the error of our vector against the reference's is compared
with the distance between the reference vectors of *different* photos, measured on the same
model: parity holds when the error is under `PARITY_FRACTION` of the smallest such distance.
`tests/unit/test_parity_measure.py` shows that a one-pixel shift of the resize, a BGR
channel swap and a missing normalization each fail it by a wide margin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from tests.support.client import vector_of
from tests.support.images import encode, one_pixel_png

if TYPE_CHECKING:
    from tests.support.reference import ReferenceImg2Vec

# Measured on this suite's models (CPU, float32): a frozen TorchScript graph differs from the
# eager reference by at most 1.1e-5 of a vector's norm. The smallest mistake we must catch,
# a one-pixel shift of the resize, moves a vector by 0.05 or more; different photos are 0.2
# (calibrated random ResNet50) to 0.9 (real MobileNetV2) apart. 0.1% of the smallest
# distance between photos sits far from both: 18x the noise, 1/60 of the shift.
PARITY_FRACTION = 0.001


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    ours = np.asarray(ours, dtype=np.float64).ravel()
    ref = np.asarray(ref, dtype=np.float64).ravel()
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def min_separation(vectors: Mapping[str, np.ndarray]) -> float:
    """The smallest relative distance between the vectors of two different photos."""
    names = list(vectors)
    assert len(names) >= 2, "separation needs at least two different photos"
    return min(relative_error(vectors[a], vectors[b]) for a in names for b in names if a != b)


def tolerance(separation: float) -> float:
    return PARITY_FRACTION * separation


def assert_same_vector(ours: np.ndarray, ref: np.ndarray, separation: float, what: str) -> None:
    assert np.shape(ours) == np.shape(ref), (what, np.shape(ours), np.shape(ref))
    error = relative_error(ours, ref)
    limit = tolerance(separation)
    assert error <= limit, (
        f"{what}: relative error {error:.2e} to the reference vector exceeds {limit:.2e} "
        f"({PARITY_FRACTION:.0%} of the distance {separation:.3f} between different photos)"
    )


# The service against the reference, over HTTP, on photos of several formats and sizes.


def parity_images(photos: dict[str, Image.Image]) -> dict[str, bytes]:
    """Real photos as PNG and JPEG, plus an upscaled 1920x1080, a tiny one and a 1x1 PNG."""
    images = {}
    for name, img in photos.items():
        images[f"{name}-{img.width}x{img.height}.png"] = encode(img, "PNG")
        images[f"{name}.jpg"] = encode(img, "JPEG", quality=90)
    images["astronaut-1920x1080.jpg"] = encode(photos["astronaut"].resize((1920, 1080)), "JPEG")
    images["coffee-37x21.png"] = encode(photos["coffee"].resize((37, 21)), "PNG")
    images["weaviate-1x1.png"] = one_pixel_png()
    return images


def check_parity(url: str, reference: ReferenceImg2Vec, photos, dim: int) -> None:
    images = parity_images(photos)
    refs = {name: reference.vector(image) for name, image in images.items()}
    separation = min_separation({n: refs[f"{n}.jpg"] for n in photos})
    for name, image in images.items():
        ours = vector_of(url, image, np.float64)
        assert ours.shape == (dim,)
        assert_same_vector(ours, refs[name], separation, name)
