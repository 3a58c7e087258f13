"""Whether a model gives an input the same bits alone as in a batch with others.

Cross-request batching must not change a vector (Weaviate's BlobHash case compares two
vectors of one image with ==; the containers we replace compute one input at a time). Kernels
are chosen by shape, not by content, so a few seeded probe inputs, run alone and then in
batches of several sizes at every position, tell whether an engine on this machine keeps that
promise; /meta reports the answer (`batch_invariant`) for each model replica."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

X = TypeVar("X")


def batch_invariant(
    run: Callable[[list[X]], Sequence[np.ndarray] | np.ndarray[Any, Any]],
    probes: list[X],
    max_batch_size: int,
) -> bool:
    """`run` maps a list of inputs to their vectors, in order. True when every probe's
    vector is bit-identical alone and in batches of 2 and of `max_batch_size` (at most the
    number of probes) at each position."""
    alone = [np.asarray(run([p])[0]) for p in probes]
    n = len(probes)
    for size in sorted({min(2, n), min(max_batch_size, n)}):
        if size < 2:
            continue
        for start in range(n):
            rows = [(start + k) % n for k in range(size)]
            vectors = run([probes[i] for i in rows])
            if any(not np.array_equal(vectors[j], alone[i]) for j, i in enumerate(rows)):
                return False
    return True


def probe_images(size: tuple[int, int], n: int = 4, seed: int = 0) -> list[np.ndarray]:
    """`n` seeded noise images, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
