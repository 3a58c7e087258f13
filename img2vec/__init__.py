"""img2vec: images to vectors, compatible with Weaviate's img2vec-neural module.

The library (this package) depends on torch, torchvision, PIL and numpy only;
everything about Ray Serve and HTTP lives in the `deployments` package.
"""

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
from img2vec.model import Embedder, build_embedder
from img2vec.preprocessing import PRESETS, Preprocess, get_preset
from img2vec.weights import SPECS, ModelSpec, get_spec

__version__ = "0.1.0"

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
