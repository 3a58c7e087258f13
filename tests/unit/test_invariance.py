"""The batch-invariance check that /meta reports (img2vec/invariance.py): it says False for a
model whose vectors depend on their batch, True for one whose rows are independent, and the
library's models run it at warm-up."""

from __future__ import annotations

import numpy as np

from img2vec.invariance import batch_invariant, probe_images
from img2vec.model import build_embedder


def rows(inputs: list[np.ndarray]) -> np.ndarray:
    return np.stack([x.reshape(-1)[:8].astype(np.float32) for x in inputs])


def test_rows_computed_independently_are_invariant():
    assert batch_invariant(rows, probe_images((4, 4)), max_batch_size=8)


def test_a_vector_that_depends_on_its_batch_size_is_caught():
    def by_size(inputs):
        return rows(inputs) * np.float32(1 + 1e-6 * (len(inputs) - 1))

    assert not batch_invariant(by_size, probe_images((4, 4)), max_batch_size=8)


def test_a_vector_that_depends_on_its_position_is_caught():
    def by_position(inputs):
        out = rows(inputs)
        out[-1] += np.float32(1e-6)  # the last row of a pass computed another way
        return out

    assert not batch_invariant(by_position, probe_images((4, 4)), max_batch_size=8)


def test_the_embedder_checks_itself_at_warm_up():
    embedder = build_embedder(model="mobilenet_v2", weights="random", device="cpu", graph="eager")
    assert embedder.info().batch_invariant is None
    embedder.warm_up(4)
    assert isinstance(embedder.info().batch_invariant, bool)
