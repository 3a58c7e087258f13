"""Vectors that mean something, through the service: with torchvision's real MobileNetV2
weights, augmented copies of real photos (cropped, flipped, colour-jittered, re-encoded) find
their own original as nearest neighbour among 18 distinct images."""

from __future__ import annotations

import numpy as np

from tests.support.client import bulk_vectors
from tests.support.helpers import augmented
from tests.support.images import encode


def vectors(url: str, images: list[bytes]) -> np.ndarray:
    out = bulk_vectors(url, images)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_augmented_copies_retrieve_their_original(mobilenet_url, all_photos):
    rng = np.random.default_rng(7)
    names = list(all_photos)
    assert len(names) >= 15
    originals = [encode(all_photos[n], "PNG") for n in names]
    queries, truth = [], []
    for i, name in enumerate(names):
        for variant in augmented(all_photos[name], rng):
            queries.append(encode(variant, "JPEG", quality=int(rng.integers(50, 90))))
            truth.append(i)
    index = vectors(mobilenet_url, originals)
    found = vectors(mobilenet_url, queries) @ index.T
    nearest = found.argmax(axis=1)
    recall = float(np.mean(nearest == np.array(truth)))
    misses = [(names[t], names[n]) for t, n in zip(truth, nearest, strict=True) if t != n]
    print(
        f"recall@1 {recall:.3f} over {len(queries)} queries, {len(names)} images; misses {misses}"
    )
    assert recall >= 0.95, misses
