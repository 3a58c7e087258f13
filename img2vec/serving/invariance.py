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
is one input per call (a padded pass would cost every lone request a full batch), and on
OpenVINO several such calls run at once, one per stream (`OpenVINOEngine.each`), so that a
pass keeps most of the batch's speed."""

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
    vector is bit-identical alone and in every pass size the batcher can form, from 2 to
    `max_batch_size` (at most the number of probes): at every position for passes of 2 and
    of the largest size, at two rotations for the sizes between (kernels are chosen by the
    number of rows, so every size is run; every position at the sizes most traffic forms)."""
    alone = [np.asarray(run([p])[0]) for p in probes]
    n = len(probes)
    largest = min(max_batch_size, n)
    for size in range(2, largest + 1):
        starts = range(n) if size in (2, largest) else sorted({0, n // 2})
        for start in starts:
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
    """`n` seeded uint8 (H, W, 3) images that look more like photos than noise does: smooth
    regions with edges between them (coarse random blocks, bilinearly upsampled, with a
    little grain), so that activations take the ranges real inputs give."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    for _ in range(n):
        coarse = rng.uniform(0, 255, (max(2, h // 28), max(2, w // 28), 3))
        ys = np.linspace(0, coarse.shape[0] - 1, h)
        xs = np.linspace(0, coarse.shape[1] - 1, w)
        y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
        y1 = np.minimum(y0 + 1, coarse.shape[0] - 1)
        x1 = np.minimum(x0 + 1, coarse.shape[1] - 1)
        fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x1] * fx
        bottom = coarse[y1][:, x0] * (1 - fx) + coarse[y1][:, x1] * fx
        image = top * (1 - fy) + bottom * fy + rng.normal(0, 6, (h, w, 3))
        out.append(np.clip(image, 0, 255).astype(np.uint8))
    return out
