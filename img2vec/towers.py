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
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2vec.model import normalize, pick_device
from img2vec.multimodal import ClipSpec, st_modules

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
        assert spec.image_path is not None and spec.text_path is not None
        model = AutoModel.from_pretrained(str(spec.image_path), dtype=torch.float32)
        self._model = model.eval().to(self.device)
        # sentence-transformers: the text tower is a model of its own, pooled and projected by
        # the modules after it; neither tower's vectors are normalized (as the container's).
        self._text: torch.nn.Module | None = None
        self._head: list[tuple[str, Any]] = []
        self.normalized = spec.family != "sentence-transformers"
        if spec.family == "sentence-transformers":
            text = AutoModel.from_pretrained(str(spec.text_path), dtype=torch.float32)
            self._text = text.eval().to(self.device)
            self._head = _st_head(spec.path / "text", self.device)
            self.normalized = False
        self.load_s = time.perf_counter() - started
        files = [
            *sorted(spec.image_path.glob("*.safetensors")),
            *sorted(spec.image_path.glob("*.bin")),
        ]
        if spec.text_path != spec.image_path:
            files += sorted(spec.text_path.glob("*.safetensors")) + sorted(
                spec.text_path.glob("*.bin")
            )
        self.weights_sha256 = _files_sha256(files)
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
            "normalized": self.normalized,
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
        if self.spec.family != "siglip":
            pooled = model.visual_projection(pooled)
        return self._out(pooled)

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
        attention = torch.from_numpy(mask).to(self.device)
        model = self._model
        if self._text is not None:
            hidden = self._text(input_ids=input_ids, attention_mask=attention).last_hidden_state
            return self._out(_apply_head(self._head, hidden, attention))
        if spec.family == "clip":
            pooled = model.text_model(input_ids=input_ids, attention_mask=attention).pooler_output
            pooled = model.text_projection(pooled)
        else:
            pooled = model.text_model(input_ids=input_ids).pooler_output
        return self._out(pooled)

    def _out(self, x: torch.Tensor) -> np.ndarray:
        x = x.float()
        if self.normalized:
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x.cpu().numpy()

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


def _st_head(root: Path, device: torch.device) -> list[tuple[str, Any]]:
    """The sentence-transformers modules after the text model: pooling, dense layers,
    normalization, read from their own config files (old and new layouts)."""
    head: list[tuple[str, Any]] = []
    for kind, path in st_modules(root)[1:]:
        if kind == "Pooling":
            config = json.loads((path / "config.json").read_text())
            mode = config.get("pooling_mode") or next(
                (m for m in ("mean", "cls", "max") if config.get(f"pooling_mode_{m}_tokens")),
                "cls" if config.get("pooling_mode_cls_token") else None,
            )
            if mode not in ("mean", "cls", "max"):
                raise ValueError(f"{path}: pooling {config} is not supported (mean, cls, max)")
            head.append(("pool", mode))
        elif kind == "Dense":
            config = json.loads((path / "config.json").read_text())
            activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
            if activation.rsplit(".", 1)[-1] not in ("Identity", "Tanh"):
                raise ValueError(f"{path}: activation {activation} is not supported")
            linear = torch.nn.Linear(
                config["in_features"], config["out_features"], bias=config.get("bias", True)
            )
            linear.load_state_dict(_read_state(path, "linear."))
            head.append(("dense", (linear.eval().to(device), activation.endswith("Tanh"))))
        elif kind == "Normalize":
            head.append(("normalize", None))
        else:
            raise ValueError(f"{root}: module {kind} is not supported after the text model")
    return head


def _apply_head(
    head: list[tuple[str, Any]], hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    x = hidden
    for step, arg in head:
        if step == "pool":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            if arg == "mean":
                x = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
            elif arg == "cls":
                x = hidden[:, 0]
            else:
                x = hidden.masked_fill(m == 0, -1e9).max(1).values
        elif step == "dense":
            linear, tanh = arg
            x = linear(x)
            x = torch.tanh(x) if tanh else x
        else:
            x = torch.nn.functional.normalize(x, dim=-1)
    return x


def _read_state(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """A module's weights: model.safetensors, else pytorch_model.bin (tensors only)."""
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    else:
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {k.removeprefix(prefix): v for k, v in state.items()}
