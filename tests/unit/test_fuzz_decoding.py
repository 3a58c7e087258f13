"""Byte-level mutations of valid images of every format: the decoder either returns a
224x224 RGB array or raises one of our errors. Anything else would be a 500."""

from __future__ import annotations

import contextlib

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from img2vec.errors import Img2VecError
from img2vec.inputs.decoding import ImageLimits, decode_base64, decode_image, open_image
from img2vec.inputs.preprocessing import STRETCH_224
from tests.support.fuzzing import fuzz_settings, mutated_images

LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=4_000_000)


@fuzz_settings(300)
@given(data=mutated_images())
def test_mutated_images_decode_or_fail_cleanly(data: bytes):
    try:
        img = open_image(data, max_pixels=LIMITS.max_pixels)
    except Img2VecError:
        return
    arr = STRETCH_224.to_array(img)
    assert arr.shape == (224, 224, 3) and arr.dtype == np.uint8


@fuzz_settings(300)
@given(text=st.text(max_size=200))
def test_arbitrary_text_as_base64_decodes_or_fails_cleanly(text: str):
    try:
        data = decode_base64(text, max_bytes=LIMITS.max_bytes)
    except Img2VecError:
        return
    assert isinstance(data, bytes)
    with contextlib.suppress(Img2VecError):
        decode_image(text, limits=LIMITS)
