"""Every accepted format decodes, and to exactly what the reference's
`Image.open(...).convert("RGB")` gives (so vectors stay comparable)."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image, ImageSequence

from img2vec.decoding import available_formats, open_image
from img2vec.errors import InvalidImage
from img2vec.preprocessing import STRETCH_224
from tests.conftest import encode
from tests.formats import SAMPLES, sample


@pytest.mark.parametrize("name", SAMPLES)
def test_format_decodes_like_the_reference(name):
    data = sample(name)
    ours = open_image(data)
    ref = Image.open(io.BytesIO(data)).convert("RGB")
    assert ours.mode == "RGB" and ours.size == ref.size
    assert np.array_equal(np.asarray(ours), np.asarray(ref))
    assert STRETCH_224.to_array(ours).shape == (224, 224, 3)


def test_heic_and_avif_are_served():
    assert {"HEIF", "AVIF"} <= set(available_formats())


def test_formats_outside_the_list_are_refused():
    img = Image.new("RGB", (20, 20), (1, 2, 3))
    for fmt in ("EPS", "PCX", "SGI"):
        with pytest.raises(InvalidImage, match="not a recognised image format"):
            open_image(encode(img, fmt))


def test_a_gif_with_thousands_of_frames_costs_one_frame():
    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)) for _ in range(2000)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    available_formats()  # plugin registration is a one-off cost; keep it out of the timing

    started = time.perf_counter()
    img = open_image(data)
    first_only = time.perf_counter() - started
    started = time.perf_counter()
    every = Image.open(io.BytesIO(data))
    for frame in ImageSequence.Iterator(every):
        frame.load()
    all_frames = time.perf_counter() - started

    assert img.size == (48, 48)
    assert np.array_equal(np.asarray(img), np.asarray(frames[0].convert("RGB")))
    assert every.n_frames == 2000
    assert first_only * 20 < all_frames, (first_only, all_frames)
