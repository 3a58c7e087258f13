"""img2vec: images to vectors, compatible with Weaviate's img2vec-neural module.

The library (this package) depends on torch, torchvision, PIL and numpy only; everything
about Ray Serve and HTTP lives in the `deployments` package.

Importing the package is light: decoding and preprocessing need PIL and numpy only (the CPU
ingress uses just those), and the names that need torch (`build_embedder`, `Embedder`) are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from img2vec.decoding import ImageLimits, decode_base64, decode_image, open_image
from img2vec.errors import (
    ImageTooLarge,
    Img2VecError,
    InvalidImage,
    InvalidRequest,
    NotReady,
    Overloaded,
    WeightsError,
)
from img2vec.preprocessing import PRESETS, Preprocess, get_preset
from img2vec.weights import SPECS, ModelSpec, get_spec

if TYPE_CHECKING:
    from img2vec.model import Embedder, build_embedder

__version__ = "0.2.0"

_LAZY = {"Embedder": "img2vec.model", "build_embedder": "img2vec.model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'img2vec' has no attribute {name!r}")


__all__ = [
    "PRESETS",
    "SPECS",
    "Embedder",
    "ImageLimits",
    "ImageTooLarge",
    "Img2VecError",
    "InvalidImage",
    "InvalidRequest",
    "ModelSpec",
    "NotReady",
    "Overloaded",
    "Preprocess",
    "WeightsError",
    "__version__",
    "build_embedder",
    "decode_base64",
    "decode_image",
    "get_preset",
    "get_spec",
    "open_image",
]
