"""What the Weaviate tests share: real photos as JPEG files, and each input's vector as the
service answers it alone (the reference a vector Weaviate stored must equal, as float32)."""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from tests.support.client import vector_of
from tests.support.images import MORE_PHOTO_NAMES, PHOTO_NAMES, b64, encode, photo

ROOT = Path(__file__).resolve().parents[2]


def photo_files() -> dict[str, bytes]:
    """The 18 real photos shipped by scikit-image, as JPEG files (what users import)."""
    return {
        name: encode(photo(name), "JPEG", quality=90) for name in PHOTO_NAMES + MORE_PHOTO_NAMES
    }


def vector_alone(url: str, image: bytes) -> np.ndarray:
    """img2vec-neural's vector for one image, in a request of its own."""
    return vector_of(url, image, np.float32)


def clip_alone(url: str, *, texts: list[str] = (), images: list[bytes] = ()) -> dict:
    """multi2vec-clip's vectors for one request of these inputs alone, as float32."""
    body = {"texts": list(texts), "images": [b64(i) for i in images]}
    r = httpx.post(url + "/vectorize", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    return {k: [np.asarray(v, dtype=np.float32) for v in out[k]] for k in out}


@contextmanager
def clip_load(url: str, images: list[bytes], threads: int = 4) -> Iterator[list[int]]:
    """Other clients' requests while the block runs: `threads` loops each sending /vectorize
    with a random mix of these images and texts of several lengths, so that what Weaviate
    sends is batched with strangers. Yields the statuses; each request has a 60 s bound."""
    statuses: list[int] = []
    stop = threading.Event()
    words = [
        "a",
        "photo",
        "of",
        "a",
        "red",
        "cat",
        "dog",
        "rocket",
        "on",
        "the",
        "moon",
        "coffee",
        "cup",
    ]

    def loop(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                body = {
                    "texts": [" ".join(rng.choices(words, k=rng.randint(1, 9)))
                              for _ in range(rng.randint(0, 3))],
                    "images": [b64(rng.choice(images)) for _ in range(rng.randint(0, 2))],
                }  # fmt: skip
                statuses.append(http.post(url + "/vectorize", json=body).status_code)

    workers = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    try:
        yield statuses
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=70)


def readme_block(after: str) -> str:
    """The first ```python block of the README after the line containing `after`."""
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block after {after!r} in README.md"
    return match.group(1)
