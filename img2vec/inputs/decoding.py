"""base64 text -> RGB PIL image, entirely in memory, with byte and pixel limits.

Every refusal is an `InvalidImage` (the client sent something that is not an
image) or an `ImageTooLarge` (it is, but over a limit), decided before the
expensive step: the byte size before base64 decoding, the pixel count from the
header before the pixels are decoded.
"""

from __future__ import annotations

import binascii
import functools
import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from img2vec.errors import ImageTooLarge, InvalidImage, brief
from img2vec.inputs.preprocessing import Preprocess

# Pillow's own bomb guard (Image.MAX_IMAGE_PIXELS) is process-wide and only warns below 2x
# its value; we check our configurable limit from the header ourselves and keep Pillow's as
# a backstop.
_DATA_URL = re.compile(r"^data:[\w.+-]*/?[\w.+-]*(;[\w.+-]+=[\w.+-]+)*;base64,", re.ASCII)
# Whitespace (line-wrapped base64) is deleted before the strict decode, by bytes.translate:
# 0.04 ms for a 640x480 photo's 100 KB of text, where a regular expression took 0.70 ms.
_WHITESPACE = b" \t\r\n"
# Accept the URL-safe alphabet as well: it decodes to the same bytes.
_URLSAFE = bytes.maketrans(b"-_", b"+/")

DEFAULT_MAX_IMAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192

# Raster formats people send. Pillow can open more (EPS shells out to Ghostscript, and
# several rarely used parsers see little scrutiny), so anything else is refused with a 400.
# (The multi-picture JPEGs many phones and cameras write open through "JPEG", as MPO.)
FORMATS = (
    "JPEG",
    "PNG",
    "GIF",
    "WEBP",
    "BMP",
    "DIB",
    "TIFF",
    "AVIF",
    "HEIF",
    "ICO",
    "PPM",
    "TGA",
)


@dataclass(frozen=True)
class ImageLimits:
    """Upper bounds on what one request may make us decode."""

    max_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {self.max_bytes}")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be >= 1, got {self.max_pixels}")


def decode_base64(text: str, *, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> bytes:
    """base64 text -> bytes, accepting everything the container we replace accepted.

    That container decodes with `base64.b64decode(image)`, which discards characters
    outside the alphabet and ignores data after the padding. Refusing what it accepted
    would turn a stored object's vector into a 400 after the switch, so the same text
    decodes to the same bytes here; on top of it, the URL-safe alphabet and a
    `data:...;base64,` prefix are understood rather than mangled. Whether the bytes are an
    image is `open_image`'s to decide. The size is checked before anything is decoded."""
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end() :]
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        # b64decode refuses non-ASCII text too ("string argument should contain only ASCII").
        raise InvalidImage("image is not valid base64: it contains non-ASCII characters") from None
    compact = raw.translate(None, _WHITESPACE)
    # 4 base64 characters carry 3 bytes: refuse before allocating the decoded copy.
    if len(compact) // 4 * 3 > max_bytes + 2:
        raise ImageTooLarge(
            f"image is about {len(compact) // 4 * 3} bytes after base64 decoding; "
            f"the limit is {max_bytes} bytes (max_image_bytes)"
        )
    try:
        # URL-safe text (none of '+' or '/', some '-' or '_'): the same bytes, translated.
        if (b"-" in compact or b"_" in compact) and not (b"+" in compact or b"/" in compact):
            compact = compact.translate(_URLSAFE)
        data = binascii.a2b_base64(compact, strict_mode=True)
    except binascii.Error:
        # Not canonical (stray characters, data after the padding): decode it the way the
        # replaced container did.
        try:
            data = binascii.a2b_base64(raw, strict_mode=False)
        except binascii.Error as exc:
            raise InvalidImage(f"image is not valid base64: {exc}") from None
    if not data:
        raise InvalidImage("image is empty")
    if len(data) > max_bytes:
        raise ImageTooLarge(
            f"image is {len(data)} bytes; the limit is {max_bytes} bytes (max_image_bytes)"
        )
    return data


def open_image(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    exif_transpose: bool = False,
    jpeg_draft: tuple[int, int] | None = None,
) -> Image.Image:
    """Bytes -> decoded RGB image, the way the reference does it: first frame,
    `convert("RGB")` (alpha dropped, not composited), EXIF orientation ignored
    unless `exif_transpose` is asked for.

    `jpeg_draft=(w, h)` lets a JPEG decode at 1/2, 1/4 or 1/8 scale (libjpeg's DCT
    scaling) as long as the result stays at least w x h: 2-3x faster on large photos,
    but the pixels differ from a full decode, so vectors drift (docs/benchmarks.md)."""
    if not data:
        raise InvalidImage("image is empty")
    formats = available_formats()
    # Pillow's format plugins fail on malformed input with whatever they hit first (OSError,
    # ValueError, SyntaxError, RuntimeError, struct.error, ...; found by the fuzz tests), and
    # these bytes are the client's: any failure to parse them is a 400, never a 500.
    try:
        img: Image.Image = Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        raise _too_many_pixels(None, max_pixels) from None
    except UnidentifiedImageError:
        raise InvalidImage(
            "image bytes are not a recognised image format (supported: "
            f"{', '.join(f for f in formats if f != 'DIB')})"
        ) from None
    except Exception as exc:
        raise InvalidImage(f"image header is corrupt: {brief(exc, 200)}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has an empty size ({width}x{height})")
    if width * height > max_pixels:
        raise _too_many_pixels((width, height), max_pixels)
    try:
        if jpeg_draft is not None and img.format == "JPEG":
            img.draft("RGB", jpeg_draft)
        img.load()
        if exif_transpose:
            img = ImageOps.exif_transpose(img)
        # convert() to the same mode would copy the pixels for nothing.
        return img if img.mode == "RGB" else img.convert("RGB")
    except Image.DecompressionBombError:
        raise _too_many_pixels(img.size, max_pixels) from None
    except Exception as exc:
        raise InvalidImage(f"image data is truncated or corrupt: {brief(exc, 200)}") from None


def decode_image(
    text: str,
    *,
    limits: ImageLimits | None = None,
    exif_transpose: bool = False,
    jpeg_draft: tuple[int, int] | None = None,
) -> Image.Image:
    """base64 text -> RGB image: `decode_base64` then `open_image`."""
    limits = limits or ImageLimits()
    data = decode_base64(text, max_bytes=limits.max_bytes)
    return open_image(
        data, max_pixels=limits.max_pixels, exif_transpose=exif_transpose, jpeg_draft=jpeg_draft
    )


@functools.cache
def available_formats() -> tuple[str, ...]:
    """The FORMATS this Pillow build can open. HEIC/HEIF comes from pillow-heif (AVIF is
    native to Pillow >= 11.3); plugins are registered on first use, not at import."""
    try:
        import pillow_heif
    except ImportError:
        pass
    else:
        pillow_heif.register_heif_opener()
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def _too_many_pixels(size: tuple[int, int] | None, max_pixels: int) -> ImageTooLarge:
    what = f"is {size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size else "has too many pixels"
    return ImageTooLarge(f"image {what}; the limit is {max_pixels} pixels (max_image_pixels)")


@dataclass(frozen=True)
class ImageReader:
    """base64 text -> a model's uint8 input (H, W, 3): decoded within `limits`, then
    `preset`. With `jpeg_draft`, a JPEG is decoded at a reduced scale that still keeps at
    least twice the model's input size, so the final resize averages over several source
    pixels. What each ingress runs in its decode pool, per image."""

    preset: Preprocess
    limits: ImageLimits = ImageLimits()
    exif_transpose: bool = False
    jpeg_draft: bool = False

    def __call__(self, text: str) -> np.ndarray:
        h, w = self.preset.output_size
        image = decode_image(
            text,
            limits=self.limits,
            exif_transpose=self.exif_transpose,
            jpeg_draft=(2 * w, 2 * h) if self.jpeg_draft else None,
        )
        return self.preset.to_array(image)
