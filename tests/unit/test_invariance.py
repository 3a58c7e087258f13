"""The batch-invariance check that /meta reports (img2vec/serving/invariance.py): it says False
for a model whose vectors depend on their batch, True for one whose rows are independent, and the
library's models run it at warm-up."""

from __future__ import annotations

import numpy as np

from img2vec.models.image import build_embedder
from img2vec.serving.invariance import batch_invariant, in_fixed_passes, probe_images


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
    embedder = build_embedder(model="mobilenet_v2", weights="random", device="cpu", engine="eager")
    assert embedder.info().batch_invariant is None
    embedder.warm_up(4)
    assert isinstance(embedder.info().batch_invariant, bool)


def test_fixed_passes_make_a_batch_dependent_model_invariant_and_keep_the_order():
    """What a replica does when its check fails: every call at one shape. The rows come back
    in order, the padding's rows dropped, for pass sizes that divide the batch and not."""

    def by_size(*arrays):
        (x,) = arrays
        return x.reshape(len(x), -1)[:, :8].astype(np.float32) * np.float32(1 + 1e-6 * len(x))

    images = probe_images((4, 4), n=5)
    for size in (1, 3, 8):
        run = lambda inputs, size=size: in_fixed_passes(by_size, [np.stack(inputs)], size)  # noqa: E731
        assert batch_invariant(run, images, max_batch_size=8)
        out = run(images)
        assert out.shape == (5, 8)
        assert np.array_equal(out[2], run([images[2]])[0])
    assert not batch_invariant(lambda inputs: by_size(np.stack(inputs)), images, 8)


def test_several_arrays_are_chunked_and_padded_together():
    seen = []

    def run(tokens, mask):
        seen.append((tokens.shape, mask.shape))
        return (tokens * mask).astype(np.float32)

    tokens = np.arange(10).reshape(5, 2)
    mask = np.ones((5, 2), dtype=np.int64)
    out = in_fixed_passes(run, [tokens, mask], 4)
    assert np.array_equal(out, tokens.astype(np.float32))
    assert seen == [((4, 2), (4, 2)), ((4, 2), (4, 2))]
