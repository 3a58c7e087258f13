"""Same vectors as img2vec-pytorch: the service against an independent reference pipeline,
from the same weights file, on real photos of several sizes, judged by the parity measure
of tests/parity.py (an error far below the distance between different photos)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import b64, encode, one_pixel_png
from tests.parity import assert_same_vector, min_separation
from tests.reference import ReferenceImg2Vec


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


def service_vector(url: str, image: bytes) -> np.ndarray:
    r = httpx.post(
        url + "/vectors", content=json.dumps({"id": "p", "image": b64(image)}), timeout=60
    )
    assert r.status_code == 200, r.text
    return np.array(r.json()["vector"], dtype=np.float64)


@pytest.fixture(scope="module")
def resnet_reference(resnet50_file):
    return ReferenceImg2Vec("resnet50", resnet50_file)


@pytest.fixture(scope="module")
def mobilenet_reference(mobilenet_v2_file):
    return ReferenceImg2Vec("mobilenet_v2", mobilenet_v2_file)


def check_parity(url: str, reference: ReferenceImg2Vec, photos, dim: int) -> None:
    images = parity_images(photos)
    refs = {name: reference.vector(image) for name, image in images.items()}
    separation = min_separation({n: refs[f"{n}.jpg"] for n in photos})
    for name, image in images.items():
        ours = service_vector(url, image)
        assert ours.shape == (dim,)
        assert_same_vector(ours, refs[name], separation, name)


def test_resnet50_matches_the_reference(resnet_url, resnet_reference, photos):
    check_parity(resnet_url, resnet_reference, photos, 2048)


def test_mobilenet_with_real_weights_matches_the_reference(
    mobilenet_url, mobilenet_reference, photos
):
    check_parity(mobilenet_url, mobilenet_reference, photos, 1280)


def test_models_are_served_side_by_side(resnet_url, mobilenet_url):
    assert httpx.get(resnet_url + "/meta").json()["dim"] == 2048
    assert httpx.get(mobilenet_url + "/meta").json()["dim"] == 1280
