"""What the Weaviate tests share: real photos as JPEG files, and each input's vector as the
service answers it alone (the reference a vector Weaviate stored must equal, as float32)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import MORE_PHOTO_NAMES, PHOTO_NAMES, encode, photo

ROOT = Path(__file__).resolve().parents[2]


def photo_files() -> dict[str, bytes]:
    """The 18 real photos shipped by scikit-image, as JPEG files (what users import)."""
    return {
        name: encode(photo(name), "JPEG", quality=90) for name in PHOTO_NAMES + MORE_PHOTO_NAMES
    }


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def vector_alone(url: str, image: bytes) -> np.ndarray:
    """img2vec-neural's vector for one image, in a request of its own."""
    r = httpx.post(url + "/vectors", content=f'{{"id":"alone","image":"{b64(image)}"}}', timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["vector"], dtype=np.float32)


def clip_alone(url: str, *, texts: list[str] = (), images: list[bytes] = ()) -> dict:
    """multi2vec-clip's vectors for one request of these inputs alone, as float32."""
    body = {"texts": list(texts), "images": [b64(i) for i in images]}
    r = httpx.post(url + "/vectorize", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    return {k: [np.asarray(v, dtype=np.float32) for v in out[k]] for k in out}


def readme_block(after: str) -> str:
    """The first ```python block of the README after the line containing `after`."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {after!r} in README.md"
    return match.group(1)
