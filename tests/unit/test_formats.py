"""Every accepted format decodes, and to exactly what the reference's
`Image.open(...).convert("RGB")` gives (so vectors stay comparable)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from img2vec.errors import InvalidImage
from img2vec.inputs.decoding import available_formats, open_image
from img2vec.inputs.preprocessing import STRETCH_224
from tests.support.formats import SAMPLES, sample
from tests.support.images import encode


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


def test_a_gif_with_thousands_of_frames_costs_one_frame(monkeypatch):
    """Only the first frame is ever read: the GIF reader is asked for frame 0 and no other
    (counted, not timed)."""
    from PIL import GifImagePlugin

    rng = np.random.default_rng(0)
    frames = [Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)) for _ in range(2000)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    seeks: list[int] = []
    real_seek = GifImagePlugin.GifImageFile._seek

    def counting_seek(self, frame, *args, **kwargs):
        seeks.append(frame)
        return real_seek(self, frame, *args, **kwargs)

    monkeypatch.setattr(GifImagePlugin.GifImageFile, "_seek", counting_seek)
    img = open_image(data)
    assert img.size == (48, 48)
    assert np.array_equal(np.asarray(img), np.asarray(frames[0].convert("RGB")))
    assert set(seeks) == {0}, sorted(set(seeks))[:10]
    assert Image.open(io.BytesIO(data)).n_frames == 2000  # counting them would read them all
