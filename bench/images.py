"""The benchmark's request bodies: real photos (shipped with scikit-image) re-encoded as
~640x480 and ~1920x1080 JPEG, and Weaviate's own 1x1 PNG test image."""

from __future__ import annotations

import base64
import io
import json
import uuid

from PIL import Image
from skimage import data as skdata

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry")
SIZES = {"640x480": (640, 480), "1920x1080": (1920, 1080)}


def _jpeg(img: Image.Image, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    img.resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _one_pixel_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 90)).save(buf, "PNG")
    return buf.getvalue()


def image_sets(names: str) -> dict[str, list[bytes]]:
    """{"640x480": [jpeg, ...], "1920x1080": [...], "1x1": [png]} for the requested names."""
    photos = [Image.fromarray(getattr(skdata, p)()).convert("RGB") for p in PHOTOS]
    sets: dict[str, list[bytes]] = {}
    for name in names.split(","):
        if name == "1x1":
            sets[name] = [_one_pixel_png()]
        else:
            sets[name] = [_jpeg(p, SIZES[name]) for p in photos]
    return sets


def request_bodies(images: list[bytes]) -> list[bytes]:
    """Weaviate-shaped bodies, ids like `<uuid>_0`."""
    return [
        json.dumps({"id": f"{uuid.uuid4()}_0", "image": base64.b64encode(img).decode()}).encode()
        for img in images
    ]


BULK = 64


def bulk_bodies(images: list[bytes], items: int = BULK) -> list[bytes]:
    """POST /vectors/batch bodies of `items` photos each, cycling through `images`."""
    return [
        json.dumps(
            {
                "items": [
                    {"id": f"{uuid.uuid4()}_{i}", "image": base64.b64encode(img).decode()}
                    for i, img in enumerate(images[(j + k) % len(images)] for k in range(items))
                ]
            }
        ).encode()
        for j in range(len(images))
    ]
