"""OpenCLIP checkpoints in multi2vec-clip's layout (config.json naming open_clip's
`model_name` and `pretrained`), run by open_clip itself as the container runs them:
`create_model`, `encode_image`, `encode_text`. What the layout is and how its inputs are
prepared (the tokenizer as `tokenizers` JSON, the image preset, open_clip's text cleaning) is
img2vec/inputs/openclip.py; texts are padded to the full context as open_clip pads them (with
0 for its own text tower, whose causal mask and end-token pooling need no attention mask; with
the tokenizer's pad token for a Hugging Face text tower, which masks it itself)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from img2vec.inputs import openclip
from img2vec.inputs.multimodal import ClipSpec
from img2vec.models.clip.registry import Loaded, Tower


def read(root: Path) -> ClipSpec | None:
    if not openclip.is_layout(root):
        return None
    inputs = openclip.read(openclip.Layout.read(root))
    return ClipSpec(
        path=root,
        family=openclip.FAMILY,
        context=inputs.context,
        pad_id=inputs.pad_id,
        fixed_length=True,
        preprocess=inputs.preprocess,
        tokenizer=inputs.tokenizer,
        image_path=root,
        text_path=root,
        weights=(inputs.checkpoint,) if inputs.checkpoint else (),
        clean=inputs.clean,
        strip_id=inputs.strip_id,
    )


class VisionTower(Tower):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class TextTower(Tower):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(ids)


def load(spec: ClipSpec, device: torch.device) -> Loaded:
    layout = openclip.Layout.read(spec.path)
    model = openclip.load(layout, device)
    check_preprocess(model, spec)
    return Loaded(
        model=model,
        vision=VisionTower(model),
        text=TextTower(model),
        masked=False,
        normalized=True,
        vocabulary=int(model.vocab_size),
        name=layout.label,  # OpenCLIP's name and tag as config.json says them
    )


def check_preprocess(model: Any, spec: ClipSpec) -> None:
    """The preprocessing open_clip set on the model it built is the one the ingress applies
    (img2vec/inputs/openclip.py reads it from the same configs without building the model)."""
    built = openclip.preprocess_of(model.visual.preprocess_cfg, spec.preprocess.name)
    if built != spec.preprocess:
        raise ValueError(
            f"{spec.path}: open_clip preprocesses as {built}, the spec as {spec.preprocess}"
        )
