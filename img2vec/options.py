"""The defaults and allowed values of the model settings, declared once. The library checks them
(img2vec/models/image.py, engines.py, towers.py) and the service's settings take their types from
here (deployments/settings.py). No torch: the ingress imports the settings."""

from __future__ import annotations

from typing import Literal, get_args

# The model and its weights' source when none is named (img2vec/models/weights.py): `download`
# fetches the published file once and checks its SHA-256, giving up on a stall this long.
DEFAULT_MODEL = "resnet50"
DOWNLOAD = "download"
DEFAULT_DOWNLOAD_TIMEOUT_S = 30.0

# Where a model runs: `auto` is CUDA when a GPU is visible to the process, else CPU.
Device = Literal["auto", "cpu", "cuda"]
# Storage dtype and float32 math: `float32` is IEEE float32 on every device (the vectors of
# img2vec-pytorch); the others change vectors (docs/benchmarks.md#engines).
Dtype = Literal["float32", "tf32", "float16", "bfloat16"]
# What runs a model's forward pass; chosen in one place (img2vec/models/engines.py:
# resolve_engine). An image backbone runs them all; a CLIP-style model's towers the subset
# ClipEngineName (img2vec/models/clip/towers.py).
EngineName = Literal["auto", "torchscript", "eager", "openvino", "compiled"]
ClipEngineName = Literal["auto", "openvino", "eager"]

DEVICES: tuple[str, ...] = get_args(Device)
DTYPES: tuple[str, ...] = get_args(Dtype)
ENGINES: tuple[str, ...] = get_args(EngineName)
CLIP_ENGINES: tuple[str, ...] = get_args(ClipEngineName)
