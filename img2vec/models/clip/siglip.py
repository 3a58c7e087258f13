"""SigLIP in transformers' layout (`model_type` "siglip"; SigLIP 2's fixed-resolution
checkpoints too, with Gemma's tokenizer: pad 0, end 1). Both towers end in their own heads
(no projection after them); the text tower pools the last position and was trained on texts
padded to the full context (64 tokens), unmasked, so every text is padded so."""

from __future__ import annotations

from pathlib import Path

import torch

from img2vec.inputs.multimodal import ClipSpec, read_transformers_dir
from img2vec.models.clip import clip
from img2vec.models.clip.registry import Loaded, Tower


def read(root: Path) -> ClipSpec | None:
    return read_transformers_dir(root, ("siglip",), context=64, pad=1, fixed_length=True)


class VisionTower(Tower):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.vision_model(pixel_values=pixels).pooler_output


class TextTower(Tower):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.text_model(input_ids=ids).pooler_output


def load(spec: ClipSpec, device: torch.device) -> Loaded:
    return clip.load(spec, device, (VisionTower, TextTower), masked=False)
