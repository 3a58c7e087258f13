"""multi2vec-clip's model families, one module each (as vLLM's model registry names one module
per architecture): adding a family adds a module in this folder and a line in `FAMILIES`, not
a branch in shared code.

A family module reads its own directory layout and builds its own towers:
- `read(root) -> ClipSpec | None`: the directory's inputs (`img2vec.inputs.multimodal.ClipSpec`:
  tokenizer, context, padding, image preprocessing) if the directory is in this family's
  layout, else None;
- `load(spec, device) -> Loaded`: the model, its image tower and its text tower as torch
  modules, and what the shared code needs to know of them.
The towers' shared machinery (engines, text bands, batch invariance, warm-up) is
`img2vec/models/clip/towers.py`, which asks the spec's family for its towers and nothing else.
Family modules are imported when a directory is read or a model loaded, not before.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from img2vec.inputs.model_dirs import resolve_model_dir
from img2vec.inputs.multimodal import ClipSpec, read_json

# ClipSpec.family -> the module that reads and loads it. A directory is offered to the modules
# in this order, and the first that recognises its layout reads it: the two layouts with
# their own marker files first (sentence-transformers' clip/ and text/, OpenCLIP's
# config.json naming a model_name), then transformers' `model_type`s.
FAMILIES: dict[str, str] = {
    "sentence-transformers": "img2vec.models.clip.sentence_transformers",
    "openclip": "img2vec.models.clip.openclip",
    "clip": "img2vec.models.clip.clip",
    "metaclip_2": "img2vec.models.clip.clip",
    "siglip": "img2vec.models.clip.siglip",
}


class Tower(torch.nn.Module):
    """One tower of a family's model: its `forward` is the family's (images: normalized
    pixels, N x 3 x H x W; texts: token ids, N x L, and their mask where the tower takes one),
    the model a submodule so that an engine's conversion sees its weights."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model


@dataclass(frozen=True)
class Loaded:
    """A family's model, loaded: its two towers and what the shared code needs of them."""

    model: Any  # the framework's model object (/meta's "architecture" is its class name)
    vision: Tower  # normalized pixels (N x 3 x H x W) -> image embeddings
    text: Tower  # token ids (N x L; and their mask where `masked`) -> text embeddings
    masked: bool  # the text tower takes an attention mask (else it sees padding as tokens)
    normalized: bool  # its vectors are L2-normalized as the container returns them
    vocabulary: int  # token ids below this are valid (the invariance probes draw from it)
    name: str  # /meta's "model"


def family_module(family: str) -> Any:
    if family not in FAMILIES:
        raise ValueError(f"no CLIP-style family {family!r} (registered: {', '.join(FAMILIES)})")
    return importlib.import_module(FAMILIES[family])


def read_model_dir(path: str | Path) -> ClipSpec:
    """A CLIP-style model directory (or a hub name, `open_clip:NAME:TAG`, `random`:
    `resolve_model_dir`), read by the first family whose layout it is."""
    root = resolve_model_dir(str(path))
    for module in dict.fromkeys(FAMILIES.values()):
        spec: ClipSpec | None = importlib.import_module(module).read(root)
        if spec is not None:
            return spec
    served = ", ".join(f for f in FAMILIES if f not in ("openclip", "sentence-transformers"))
    supported = (
        f"supported: transformers' model_type {served}; OpenCLIP's config.json with model_name "
        "and pretrained; or the clip/ and text/ directories of sentence-transformers"
    )
    config = read_json(root / "config.json", missing_ok=True)
    if not config:
        raise ValueError(
            f"{root}: no config.json (a model directory saved with `save_pretrained`; {supported})"
        )
    raise ValueError(
        f"{root}: model_type {config.get('model_type')!r} is not a CLIP-style model ({supported})"
    )


def load(spec: ClipSpec, device: Any) -> Loaded:
    """The spec's model, loaded by its family on `device`, in eval mode."""
    loaded: Loaded = family_module(spec.family).load(spec, device)
    return loaded
