"""An independent, plain implementation of what img2vec-pytorch computes, to compare against.

It shares no code with img2vec: torchvision's own transforms, `Image.open(...).convert("RGB")`,
a forward hook that captures the global-average-pool output, one image at a time, as the
container we replace does it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

WEAVIATE_TRANSFORM = T.Compose(
    [
        T.Resize((224, 224)),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


class ReferenceImg2Vec:
    def __init__(self, builder: str, weights_file: Path) -> None:
        self.model = getattr(torchvision.models, builder)(weights=None)
        self.model.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
        self.model.eval()
        self.transform: Callable[[Image.Image], torch.Tensor] = WEAVIATE_TRANSFORM

    def vector(self, image_bytes: bytes) -> np.ndarray:
        return self.vector_of(Image.open(io.BytesIO(image_bytes)).convert("RGB"))

    def vector_of(
        self, img: Image.Image, transform: Callable[[Image.Image], torch.Tensor] | None = None
    ) -> np.ndarray:
        x = (transform or self.transform)(img).unsqueeze(0)
        captured: list[torch.Tensor] = []
        if hasattr(self.model, "avgpool"):  # ResNet: the pool is a module; take its output
            handle = self.model.avgpool.register_forward_hook(
                lambda m, i, o: captured.append(o.detach())
            )
        else:  # MobileNetV2 pools functionally: the classifier's input is the pooled output
            handle = self.model.classifier.register_forward_hook(
                lambda m, i, o: captured.append(i[0].detach())
            )
        try:
            with torch.no_grad():
                self.model(x)
        finally:
            handle.remove()
        return captured[0].reshape(-1).numpy().copy()
