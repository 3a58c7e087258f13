"""Talking to the service as Weaviate does, for the tests: one image's body, one image's
vector, a bulk request's vectors. Every test that needs a vector over HTTP asks here."""

from __future__ import annotations

import json

import httpx
import numpy as np

from tests.support.images import b64


def vector_body(image: bytes, id_: str = "x") -> str:
    """What Weaviate's img2vec-neural module sends for one object."""
    return json.dumps({"id": id_, "image": b64(image)})


def post_vectors(url: str, image: bytes, id_: str = "x") -> httpx.Response:
    """POST /vectors with one image, as Weaviate does (no Content-Type)."""
    return httpx.post(url + "/vectors", content=vector_body(image, id_), timeout=60)


def vector_of(url: str, image: bytes, dtype: type = np.float32) -> np.ndarray:
    """One image's vector, in a request of its own (asserting a 200)."""
    r = post_vectors(url, image)
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["vector"], dtype=dtype)


def bulk_vectors(url: str, images: list[bytes]) -> np.ndarray:
    """Every image's vector through the bulk route, in order, as float64 rows."""
    items = [{"id": str(i), "image": b64(img)} for i, img in enumerate(images)]
    r = httpx.post(url + "/vectors/batch", content=json.dumps({"items": items}), timeout=300)
    assert r.status_code == 200, r.text[:500]
    return np.array([item["vector"] for item in r.json()["items"]], dtype=np.float64)
