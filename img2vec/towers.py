"""The two towers of a CLIP-style model (transformers' CLIPModel or SiglipModel): images and
texts into one vector space, L2-normalized as the multi2vec-clip container returns them.

Inputs arrive prepared (img2vec/multimodal.py, in the ingress): images as uint8 H x W x 3
already resized and cropped, texts as int32 token ids already truncated. Here they are
batched: `run` takes a pass of mixed inputs, runs each tower once over its own, and answers
in input order, so that the one batcher (img2vec/batching.py) can put the texts and images
of concurrent requests into the same pass.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2vec.model import normalize, pick_device
from img2vec.multimodal import ClipSpec

IMAGE, TEXT = "image", "text"


@dataclass(frozen=True)
class Input:
    """One image (uint8 H x W x 3) or one text (int32 token ids)."""

    kind: str
    data: np.ndarray


class Towers:
    def __init__(self, spec: ClipSpec, device: str = "auto", torch_threads: int | None = None):
        from transformers import AutoModel

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.spec = spec
        self.device = pick_device(device)
        started = time.perf_counter()
        model = AutoModel.from_pretrained(str(spec.path), dtype=torch.float32)
        self._model = model.eval().to(self.device)
        self.load_s = time.perf_counter() - started
        self.weights_sha256 = _files_sha256(sorted(spec.path.glob("*.safetensors")))
        pre = spec.preprocess
        self._mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1)
        self.dim = int(self.embed_texts([np.asarray([spec.pad_id], np.int32)]).shape[1])

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.preprocess.output_size

    def info(self) -> dict[str, Any]:
        """What every vector depends on (the same keys as the image models' ModelInfo where
        they mean the same)."""
        return {
            "model": self.spec.path.name,
            "architecture": type(self._model).__name__,
            "weights": str(self.spec.path),
            "weights_sha256": self.weights_sha256,
            "device": str(self.device),
            "dtype": "float32",
            "preprocess": self.spec.preprocess.name,
            "normalized": True,
            **self.spec.describe(),
            "dim": self.dim,
        }

    def run(self, inputs: Sequence[Input]) -> list[np.ndarray]:
        """One pass: each tower once over its inputs; vectors in input order."""
        images = [i for i, x in enumerate(inputs) if x.kind == IMAGE]
        texts = [i for i, x in enumerate(inputs) if x.kind == TEXT]
        out: list[np.ndarray] = [np.empty(0, np.float32)] * len(inputs)
        if images:
            vectors = self.embed_images(np.stack([inputs[i].data for i in images]))
            for i, v in zip(images, vectors, strict=True):
                out[i] = v
        if texts:
            vectors = self.embed_texts([inputs[i].data for i in texts])
            for i, v in zip(texts, vectors, strict=True):
                out[i] = v
        return out

    @torch.inference_mode()
    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, dim), L2-normalized."""
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
        pixels = normalize(batch, self._mean, self._std)
        model = self._model
        pooled = model.vision_model(pixel_values=pixels).pooler_output
        if self.spec.family == "clip":
            pooled = model.visual_projection(pooled)
        return _unit(pooled)

    @torch.inference_mode()
    def embed_texts(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """Token ids, one array per text -> float32 (N, dim), L2-normalized. Padded to the
        pass's longest (CLIP, masked) or to the full context (SigLIP, unmasked)."""
        spec = self.spec
        length = spec.context if spec.fixed_length else max(len(t) for t in ids)
        tokens = np.full((len(ids), length), spec.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for row, t in enumerate(ids):
            tokens[row, : len(t)] = t
            mask[row, : len(t)] = 1
        input_ids = torch.from_numpy(tokens).to(self.device)
        model = self._model
        if spec.family == "clip":
            attention = torch.from_numpy(mask).to(self.device)
            pooled = model.text_model(input_ids=input_ids, attention_mask=attention).pooler_output
            pooled = model.text_projection(pooled)
        else:
            pooled = model.text_model(input_ids=input_ids).pooler_output
        return _unit(pooled)

    def warm_up(self, max_batch_size: int) -> list[int]:
        """One pass of each tower at one input and at `max_batch_size`."""
        h, w = self.input_size
        sizes = sorted({1, max_batch_size})
        for n in sizes:
            self.embed_images(np.zeros((n, h, w, 3), np.uint8))
            self.embed_texts([np.asarray([self.spec.pad_id] * 8, np.int32)] * n)
        return sizes


def _files_sha256(files: list[Path]) -> str | None:
    """One SHA-256 over the weight files, in name order (None where there are none)."""
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _unit(x: torch.Tensor) -> np.ndarray:
    x = x.float()
    return (x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).cpu().numpy()
