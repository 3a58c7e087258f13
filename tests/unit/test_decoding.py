"""base64 -> RGB image: formats, the reference's conversions, and every refusal."""

from __future__ import annotations

import base64
import binascii
import io
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from img2vec.errors import ImageTooLarge, InvalidImage
from img2vec.inputs import decoding
from img2vec.inputs.decoding import ImageLimits, decode_base64, decode_image, open_image
from tests.support.helpers import png_header_claiming
from tests.support.images import b64, encode, one_pixel_png


def test_png_and_jpeg_photos_decode_to_rgb_of_the_same_size(photos):
    for img in photos.values():
        for fmt in ("PNG", "JPEG"):
            out = decode_image(b64(encode(img, fmt)))
            assert out.mode == "RGB"
            assert out.size == img.size


def test_png_roundtrip_is_lossless(photos):
    img = photos["chelsea"]
    out = decode_image(b64(encode(img, "PNG")))
    assert np.array_equal(np.asarray(out), np.asarray(img))


def test_one_pixel_png_as_weaviate_sends_it():
    out = decode_image(b64(one_pixel_png()))
    assert out.size == (1, 1)
    assert out.getpixel((0, 0)) == (200, 30, 90)


def test_data_url_prefix_line_breaks_and_urlsafe_alphabet_are_accepted(photos):
    raw = encode(photos["coffee"], "JPEG")
    plain = b64(raw)
    wrapped = "\n".join(plain[i : i + 76] for i in range(0, len(plain), 76))
    urlsafe = base64.urlsafe_b64encode(raw).decode()
    for text in (plain, "data:image/jpeg;base64," + plain, wrapped, urlsafe):
        assert decode_base64(text) == raw


def test_alpha_is_dropped_not_composited_like_the_reference():
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent
    out = decode_image(b64(encode(rgba, "PNG")))
    assert out.getpixel((0, 0)) == (10, 20, 30)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    out = decode_image(b64(data))
    assert out.getpixel((3, 3)) == (255, 0, 0)


def test_exif_orientation_is_ignored_unless_asked_for(photos):
    img = photos["rocket"]  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(img, "JPEG", exif=exif.tobytes())
    assert open_image(data).size == img.size
    assert open_image(data, exif_transpose=True).size == (img.height, img.width)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("   \n", "empty"),
        ("@@@@", "empty"),  # every character is skipped, as b64decode skips them
        ("aGVsbG8", "base64"),  # missing padding: b64decode refuses it too
        ("aGVs bG8=é", "non-ASCII"),
    ],
)
def test_bad_base64_is_refused(text, why):
    with pytest.raises(InvalidImage, match=why):
        decode_base64(text)


def test_the_replaced_containers_leniency_is_kept():
    """base64.b64decode (validate=False) skips stray characters and ignores what follows
    the padding; bytes it decoded, we decode identically."""
    for text in ("aGVsbG8===", "a*G!V sbG8=", "aGVs\x00bG8=", "aGk=aGk=", "aGVs\r\nbG8="):
        assert decode_base64(text) == base64.b64decode(text), text


@settings(max_examples=int(os.environ.get("IMG2VEC_FUZZ_EXAMPLES", "200")), deadline=None)
@given(
    junk=st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(list("*!@#$%^&()[]{}<>?., \t\r\n"))),
        max_size=20,
    ),
    extra_padding=st.integers(0, 3),
)
def test_whatever_b64decode_turned_into_an_image_we_turn_into_the_same_image(junk, extra_padding):
    image = one_pixel_png() if not junk else _small_png()
    text = list(b64(image)) + ["="] * extra_padding
    for position, char in junk:
        text.insert(position % (len(text) + 1), char)
    sloppy = "".join(text)
    theirs = base64.b64decode(sloppy)
    assert theirs == image  # the old container read the image from it...
    assert decode_base64(sloppy) == image  # ...and so do we
    assert open_image(decode_base64(sloppy)).size == Image.open(io.BytesIO(image)).size


def _small_png() -> bytes:
    return encode(Image.new("RGB", (5, 3), (1, 2, 3)), "PNG")


def test_bytes_that_are_not_an_image_are_refused():
    with pytest.raises(InvalidImage, match="not a recognised image format"):
        decode_image(b64(b"hello, this is not an image"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_refused(photos, fmt):
    data = encode(photos["astronaut"], fmt)
    with pytest.raises(InvalidImage, match="corrupt"):
        open_image(data[: len(data) // 2])


def test_byte_limit_is_checked_before_decoding(monkeypatch):
    """Over the limit, nothing is decoded at all: the decoder is never called."""
    calls = []
    real = binascii.a2b_base64
    monkeypatch.setattr(
        decoding.binascii, "a2b_base64", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    with pytest.raises(ImageTooLarge, match="about 3000 bytes after base64 decoding"):
        decode_base64("A" * 4000, max_bytes=1000)
    assert calls == []
    decode_base64("A" * 1332, max_bytes=1000)  # 999 bytes: decoded, and the spy sees it
    assert calls == [1]


def test_pixel_limit_refuses_a_decompression_bomb_from_its_header():
    bomb = png_header_claiming(50_000, 50_000)
    assert len(bomb) < 200
    with pytest.raises(ImageTooLarge, match="limit is 64000000 pixels"):
        open_image(bomb, max_pixels=64_000_000)
    # Below Pillow's own bomb threshold, our check names the size it read.
    with pytest.raises(ImageTooLarge, match="10000x10000 = 100000000 pixels"):
        open_image(png_header_claiming(10_000, 10_000), max_pixels=64_000_000)


def test_pixel_limit_is_configurable(photos):
    data = encode(photos["chelsea"], "PNG")  # 451 x 300
    limits = ImageLimits(max_pixels=451 * 300)
    assert decode_image(b64(data), limits=limits).size == (451, 300)
    with pytest.raises(ImageTooLarge, match="limit is 135299 pixels"):
        decode_image(b64(data), limits=ImageLimits(max_pixels=451 * 300 - 1))


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        ImageLimits(max_bytes=0)
    with pytest.raises(ValueError):
        ImageLimits(max_pixels=-1)


def test_jpeg_draft_decodes_large_jpegs_at_reduced_scale_only(photos):
    big = encode(photos["astronaut"].resize((1920, 1080)), "JPEG")
    assert open_image(big).size == (1920, 1080)
    assert open_image(big, jpeg_draft=(448, 448)).size == (960, 540)  # 1/2 still >= 448
    small = encode(photos["rocket"].resize((640, 480)), "JPEG")
    full, drafted = open_image(small), open_image(small, jpeg_draft=(448, 448))
    assert np.array_equal(np.asarray(full), np.asarray(drafted))  # no smaller scale fits
    png = encode(photos["astronaut"].resize((1920, 1080)), "PNG")
    assert open_image(png, jpeg_draft=(448, 448)).size == (1920, 1080)  # JPEG only
