"""CLIP in transformers' layout (`model_type` "clip": OpenAI's CLIP, MetaCLIP 1; and
"metaclip_2", `MetaClip2Model`: CLIP's architecture with a multilingual tokenizer whose pad and
end tokens differ). The text tower pools the end token and projects it, so texts are padded
(masked) to any length and the padding leaves them as they are; the image tower projects its
pooled output."""

from __future__ import annotations

from pathlib import Path

import torch

from img2vec.inputs.multimodal import ClipSpec, read_transformers_dir
from img2vec.models.clip.registry import Loaded, Tower

MODEL_TYPES = ("clip", "metaclip_2")


def read(root: Path) -> ClipSpec | None:
    return read_transformers_dir(root, MODEL_TYPES, context=77, pad=0, fixed_length=False)


class VisionTower(Tower):
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled)


class TextTower(Tower):
    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
        return self.model.text_projection(pooled)


def load(
    spec: ClipSpec,
    device: torch.device,
    towers: tuple[type[Tower], type[Tower]] = (VisionTower, TextTower),
    masked: bool = True,
) -> Loaded:
    """A transformers CLIP-style model (`AutoModel`) and its `towers` (SigLIP's: siglip.py)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(spec.path), dtype=torch.float32).eval().to(device)
    vision, text = towers
    return Loaded(
        model=model,
        vision=vision(model),
        text=text(model),
        masked=masked,
        normalized=True,
        vocabulary=int(model.config.text_config.vocab_size),
        name=spec.path.name,
    )
