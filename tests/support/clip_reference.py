"""The independent reference for the multi2vec-clip path: what the container computes, with
transformers' own processor and model (`AutoProcessor`, the torchvision image backend as the
container's `use_fast=True`, and `get_text_features` / `get_image_features`), L2-normalized.
Long texts are truncated by the processor (the container fails on them instead)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


class ReferenceClip:
    def __init__(self, path: Path) -> None:
        import transformers
        from transformers import AutoModel, AutoProcessor

        fast = (
            {"backend": "torchvision"}
            if int(transformers.__version__.split(".")[0]) >= 5
            else {"use_fast": True}
        )
        self.model = AutoModel.from_pretrained(path).eval()
        self.family = self.model.config.model_type
        self.processor = AutoProcessor.from_pretrained(path, **fast)
        self.context = self.model.config.text_config.max_position_embeddings

    @torch.no_grad()
    def texts(self, texts: list[str]) -> np.ndarray:
        padding = "max_length" if self.family == "siglip" else True
        inputs = self.processor(
            text=texts,
            return_tensors="pt",
            padding=padding,
            truncation=True,
            max_length=self.context,
        )
        if self.family == "siglip":
            inputs.pop("attention_mask", None)
        return _unit(self.model.get_text_features(**inputs))

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> np.ndarray:
        inputs = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
        return _unit(self.model.get_image_features(pixel_values=inputs["pixel_values"]))


def _unit(features: object) -> np.ndarray:
    # transformers 5 answers a model output whose pooler_output is the projected features;
    # 4.x the tensor itself.
    x = getattr(features, "pooler_output", features)
    assert isinstance(x, torch.Tensor)
    return torch.nn.functional.normalize(x.float(), dim=-1).numpy()


class ReferenceOpenClip:
    """multi2vec-clip's OpenCLIP path: open_clip's `create_model_and_transforms`, its
    `get_tokenizer`, `encode_text` / `encode_image`, L2-normalized (clip.py's
    ClipInferenceOpenCLIP), for a model in open_clip's `local-dir:` format."""

    def __init__(self, model_dir: Path) -> None:
        import open_clip

        name = f"local-dir:{model_dir}"
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(name)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> np.ndarray:
        return _unit(self.model.encode_text(self.tokenizer(texts)))

    @torch.no_grad()
    def images(self, images: list[Image.Image]) -> np.ndarray:
        pixels = torch.stack([self.preprocess(i) for i in images])
        return _unit(self.model.encode_image(pixels))
