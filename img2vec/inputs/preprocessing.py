"""Named preprocessing presets: RGB image -> uint8 HxWx3 array, with PIL and numpy only.

The split is deliberate: the resize runs where the image was decoded (the CPU
ingress, which must not load torch: it is the part that scales with request
rate), only 150 KB of uint8 crosses to the model, and the float math (the
preset's `mean` and `std`, applied by `img2vec.models.engines.normalize`) runs on the
model's device, batched.

The first preset is the contract with every existing Weaviate index built by
`img2vec-pytorch`: `Resize((224, 224))` on the PIL image (a stretch, no crop,
bilinear with PIL's antialiasing), then `ToTensor()` and ImageNet `Normalize`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes model input.

    `resize` is either `(height, width)`, a stretch to exactly that size, or an
    int, the length the shorter side is scaled to (aspect kept) before a centre
    crop to `crop`.
    """

    name: str
    resize: tuple[int, int] | int
    crop: tuple[int, int] | None = None
    resample: Image.Resampling = Image.Resampling.BILINEAR
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The centre crop's offset when the margin is odd: torchvision rounds it (the image
    # models' presets), transformers' image processors floor it (CLIP and SigLIP).
    crop_offset: str = "round"

    def __post_init__(self) -> None:
        if isinstance(self.resize, int) and self.crop is None:
            raise ValueError(f"{self.name}: a shorter-side resize needs a crop size")
        if min(self.std) <= 0:
            raise ValueError(f"{self.name}: std must be positive")
        if self.crop_offset not in ("round", "floor"):
            raise ValueError(f"{self.name}: crop_offset is round or floor")

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of the arrays this preset produces."""
        if self.crop is not None:
            return self.crop
        assert not isinstance(self.resize, int)
        return self.resize

    def to_array(self, img: Image.Image) -> np.ndarray:
        """RGB image -> uint8 array of shape (H, W, 3), resized (and cropped)."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        if isinstance(self.resize, int):
            w, h = img.size
            short = self.resize
            # torchvision's rule: scale the shorter side, truncate the longer one.
            size = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            img = img.resize(size, self.resample)
        else:
            height, width = self.resize
            img = img.resize((width, height), self.resample)
        if self.crop is not None:
            img = _center_crop(img, self.crop, self.crop_offset == "floor")
        return np.asarray(img, dtype=np.uint8)


def _center_crop(img: Image.Image, size: tuple[int, int], floor: bool = False) -> Image.Image:
    crop_h, crop_w = size
    w, h = img.size
    if w < crop_w or h < crop_h:
        raise ValueError(f"image {w}x{h} is smaller than the crop {crop_w}x{crop_h}")
    if floor:  # transformers: int((h - crop_h) / 2.0)
        top, left = (h - crop_h) // 2, (w - crop_w) // 2
    else:  # torchvision rounds the offset to nearest, not down
        top, left = round((h - crop_h) / 2.0), round((w - crop_w) / 2.0)
    return img.crop((left, top, left + crop_w, top + crop_h))


# The Weaviate-compatible preset comes first: it is what `img2vec-pytorch` does, and every
# model can use it (the model name alone, e.g. `convnext_tiny`).
STRETCH_224 = Preprocess(name="stretch224", resize=(224, 224))
# The models' own evaluation transforms, as their torchvision weights publish them (a model
# name with `:native`, e.g. `convnext_tiny:native`): shorter side scaled, centre crop.
CROP_224 = Preprocess(name="resize256-crop224", resize=256, crop=(224, 224))
NATIVE = (
    CROP_224,
    Preprocess(name="resize232-crop224", resize=232, crop=(224, 224)),
    Preprocess(name="resize236-crop224", resize=236, crop=(224, 224)),
    Preprocess(
        name="resize256-crop224-bicubic",
        resize=256,
        crop=(224, 224),
        resample=Image.Resampling.BICUBIC,
    ),
)

PRESETS: dict[str, Preprocess] = {p.name: p for p in (STRETCH_224, *NATIVE)}


def get_preset(name: str) -> Preprocess:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown preprocessing preset {name!r}; known: {', '.join(PRESETS)}"
        ) from None
