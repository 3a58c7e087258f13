"""Real photos (they ship inside scikit-image), encoded images, and comparing vectors."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image
from skimage import data as skdata

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


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
