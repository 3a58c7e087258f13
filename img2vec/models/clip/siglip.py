"""SigLIP in transformers' layout (`model_type` "siglip"; SigLIP 2's fixed-resolution
checkpoints too, with Gemma's tokenizer: pad 0, end 1). Both towers end in their own heads
(no projection after them); the text tower pools the last position and was trained on texts
padded to the full context (64 tokens), unmasked, so every text is padded so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from img2vec.inputs.multimodal import ClipSpec, read_transformers_dir
from img2vec.models.clip.registry import Loaded


def read(root: Path) -> ClipSpec | None:
    return read_transformers_dir(root, "siglip", context=64, pad=1, fixed_length=True)


class VisionTower(torch.nn.Module):
    """Pixels (normalized, N x 3 x H x W) -> the vision head's output."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.vision_model(pixel_values=pixels).pooler_output
        return out


class TextTower(torch.nn.Module):
    """Token ids padded to the full context (N x L, no mask) -> the text head's output."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model.text_model(input_ids=ids).pooler_output
        return out


def load(spec: ClipSpec, device: torch.device) -> Loaded:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(spec.path), dtype=torch.float32).eval().to(device)
    return Loaded(
        model=model,
        vision=VisionTower(model),
        text=TextTower(model),
        masked=False,
        normalized=True,
        vocabulary=int(model.config.text_config.vocab_size),
        name=spec.path.name,
    )
