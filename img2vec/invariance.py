"""Whether a model gives an input the same bits alone as in a batch with others, and how a
model that does not is made to.

Cross-request batching must not change a vector (Weaviate's BlobHash case compares two
vectors of one image with ==; the containers we replace compute one input at a time). Kernels
are chosen by shape, not by content, so a few seeded probe inputs, run alone and then in
batches of several sizes at every position, tell whether an engine on this machine keeps that
promise; /meta reports the answer (`batch_invariant`) for each model replica.

An engine that does not keep it (eager CLIP on CPU: the matrix products pick their blocking
by the number of rows) is run in fixed passes (`in_fixed_passes`): every call of the
engine at one shape, so every input goes through the same kernels whatever it came with. On
a GPU that shape is the largest batch, padded (batching is the GPU's whole gain); on a CPU it
is one input per call (a padded pass would cost every lone request a full batch)."""

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


def fixed_pass_size(device_type: str, max_batch_size: int) -> int:
    """The one shape an engine runs at when it is not batch-invariant as it is: the largest
    batch on a GPU, one input on a CPU (see the module's docstring)."""
    return max_batch_size if device_type == "cuda" else 1


def in_fixed_passes(
    run: Callable[..., np.ndarray], arrays: Sequence[np.ndarray], size: int
) -> np.ndarray:
    """`run(*arrays)` row-wise, with exactly `size` rows in every call: the rows in chunks
    of `size`, the last chunk padded with copies of its first row (real inputs: no NaN from an
    all-masked text), whose vectors are dropped."""
    n = len(arrays[0])
    out = []
    for start in range(0, n, size):
        chunk = [a[start : start + size] for a in arrays]
        rows = len(chunk[0])
        if rows < size:
            chunk = [np.concatenate([c, np.repeat(c[:1], size - rows, axis=0)]) for c in chunk]
        out.append(np.asarray(run(*chunk))[:rows])
    return np.concatenate(out)


def probe_images(size: tuple[int, int], n: int = 4, seed: int = 0) -> list[np.ndarray]:
    """`n` seeded noise images, uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(n)]
