"""One real photo in every format and variant the service accepts, encoded by Pillow."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from tests.support.images import encode, photo


def _base() -> Image.Image:
    return photo("chelsea").resize((160, 107))


def _rgba() -> Image.Image:
    img = _base().convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, img.width, dtype=np.uint8), (img.height, 1))
    img.putalpha(Image.fromarray(alpha))
    return img


def _gif_animated() -> bytes:
    frames = [_base().rotate(angle) for angle in (0, 90, 180)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)


def _png_palette_transparent() -> bytes:
    img = _base().convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(img, "PNG", transparency=0)


def _png_16bit() -> bytes:
    gray = np.asarray(_base().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(gray), "PNG")


def _mpo() -> bytes:
    img = _base()
    return encode(img, "MPO", save_all=True, append_images=[img.rotate(90)])


SAMPLES: dict[str, Callable[[], bytes]] = {
    "jpeg-baseline": lambda: encode(_base(), "JPEG", quality=90),
    "jpeg-progressive": lambda: encode(_base(), "JPEG", quality=90, progressive=True),
    "jpeg-grayscale": lambda: encode(_base().convert("L"), "JPEG"),
    "jpeg-cmyk": lambda: encode(_base().convert("CMYK"), "JPEG"),
    "jpeg-mpo-phone": _mpo,
    "png-rgb": lambda: encode(_base(), "PNG"),
    "png-rgba": lambda: encode(_rgba(), "PNG"),
    "png-la": lambda: encode(_rgba().convert("LA"), "PNG"),
    "png-palette-transparency": _png_palette_transparent,
    "png-16bit": _png_16bit,
    "gif-animated": _gif_animated,
    "webp-lossy": lambda: encode(_base(), "WEBP", quality=80),
    "webp-lossless": lambda: encode(_base(), "WEBP", lossless=True),
    "webp-alpha": lambda: encode(_rgba(), "WEBP", quality=80),
    "bmp": lambda: encode(_base(), "BMP"),
    "tiff": lambda: encode(_base(), "TIFF"),
    "tiff-lzw": lambda: encode(_base(), "TIFF", compression="tiff_lzw"),
    "avif": lambda: encode(_base(), "AVIF", quality=80),
    "heic": lambda: encode(_base(), "HEIF", quality=80),
    "png-1x1": lambda: encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"),
}


def sample(name: str) -> bytes:
    from img2vec.inputs.decoding import available_formats

    available_formats()  # registers the HEIF plugin, which encoding HEIC needs too
    return SAMPLES[name]()
