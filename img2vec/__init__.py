"""img2vec: images to vectors, compatible with Weaviate's img2vec-neural module.

The library: never Ray, never HTTP (those live in the `deployments` package). Its folders
follow the processes that load them (docs/architecture.md):
- `img2vec.inputs`: decoding, preprocessing, CLIP request shapes and tokenizing (no torch);
- `img2vec.serving`: batching, the backlog budget, batch invariance, CPU placement (no torch);
- `img2vec.models`: image backbones, engines and weights, and multi2vec-clip's families
  (`img2vec.models.clip`: one module per family behind a registry) (torch).
`errors` and `options` are the words every process shares.

Importing the package is light: the names from `img2vec.models` (`build_embedder`,
`Embedder`, `SPECS`, `ModelSpec`, `get_spec`) are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from img2vec.errors import (
    ImageTooLarge,
    Img2VecError,
    InvalidImage,
    InvalidRequest,
    NotReady,
    Overloaded,
    WeightsError,
)
from img2vec.inputs.decoding import ImageLimits, decode_base64, decode_image, open_image
from img2vec.inputs.preprocessing import PRESETS, Preprocess, get_preset

if TYPE_CHECKING:
    from img2vec.models.image import Embedder, build_embedder
    from img2vec.models.weights import SPECS, ModelSpec, get_spec

__version__ = "0.2.0"

_LAZY = {
    "Embedder": "img2vec.models.image",
    "build_embedder": "img2vec.models.image",
    "SPECS": "img2vec.models.weights",
    "ModelSpec": "img2vec.models.weights",
    "get_spec": "img2vec.models.weights",
}


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
