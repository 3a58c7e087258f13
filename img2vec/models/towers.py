"""The two towers of a CLIP-style model (transformers' CLIPModel, MetaClip2Model or
SiglipModel, open_clip's CLIP, or sentence-transformers' pair): images and texts into one
vector space, L2-normalized as the multi2vec-clip container returns them.

Inputs arrive prepared (img2vec/inputs/multimodal.py, in the ingress): images as uint8 H x W x 3
already resized and cropped, texts as int32 token ids already truncated. Here they are
batched: `run` takes a pass of mixed inputs, runs each tower once over its own, and answers
in input order, so that the one batcher (img2vec/serving/batching.py) can put the texts and images
of concurrent requests into the same pass.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2vec.inputs import openclip
from img2vec.inputs.multimodal import END_TOKEN_POOLED, ClipSpec
from img2vec.models.engines import normalize
from img2vec.models.image import pick_device
from img2vec.models.text_head import apply_head, read_head
from img2vec.options import CLIP_ENGINES
from img2vec.serving.batching import WarmUp
from img2vec.serving.invariance import (
    batch_invariant,
    fixed_pass_size,
    in_fixed_passes,
    probe_images,
)

log = logging.getLogger(__name__)

IMAGE, TEXT = "image", "text"


@dataclass(frozen=True)
class Input:
    """One image (uint8 H x W x 3) or one text (int32 token ids)."""

    kind: str
    data: np.ndarray


# Texts are padded to a multiple of this many tokens (img2vec-towers' one text shape per
# length band: Towers.embed_texts).
TEXT_STEP = 8


class _VisionTower(torch.nn.Module):
    """Pixels (normalized, N x 3 x H x W) -> the image tower's embedding, projected."""

    def __init__(self, model: Any, project: bool) -> None:
        super().__init__()
        self.model = model
        self.project = project

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.model.vision_model(pixel_values=pixels).pooler_output
        return self.model.visual_projection(pooled) if self.project else pooled


class _TextTower(torch.nn.Module):
    """Token ids (and their mask, N x L) -> the text tower's embedding, before normalization:
    CLIP's end-token pooling and projection, SigLIP's last-position head (no mask: it was
    trained on unmasked padding), or a sentence-transformers model and its head."""

    def __init__(self, model: Any, family: str, text: Any, head: list) -> None:
        super().__init__()
        self.model: Any = model
        self.family, self.text = family, text
        self.head = head
        # The head's dense layers as submodules, so that conversion sees their weights.
        self.layers = torch.nn.ModuleList(arg[0] for step, arg in head if step == "dense")

    @property
    def masked(self) -> bool:
        return self.family != "siglip"

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.text is not None:
            assert mask is not None
            hidden = self.text(input_ids=ids, attention_mask=mask).last_hidden_state
            return apply_head(self.head, hidden, mask)
        if self.family in END_TOKEN_POOLED:
            pooled = self.model.text_model(input_ids=ids, attention_mask=mask).pooler_output
            out: torch.Tensor = self.model.text_projection(pooled)
            return out
        pooled = self.model.text_model(input_ids=ids).pooler_output
        return pooled


class _OpenClipTower(torch.nn.Module):
    """open_clip's `encode_image` (normalized pixels) or `encode_text` (token ids padded to
    the full context as open_clip pads them: with 0 for its own text tower, whose causal mask
    and end-token pooling need no attention mask; with the tokenizer's pad token for a
    Hugging Face text tower, which masks it itself)."""

    masked = False

    def __init__(self, model: Any, kind: str) -> None:
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == IMAGE:
            return self.model.encode_image(x)
        return self.model.encode_text(x)


class Towers:
    def __init__(
        self,
        spec: ClipSpec,
        device: str = "auto",
        torch_threads: int | None = None,
        engine: str = "auto",
        batch_invariance: bool = True,
    ):
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.spec = spec
        self.device = pick_device(device)
        started = time.perf_counter()
        assert spec.image_path is not None and spec.text_path is not None
        # sentence-transformers: the text tower is a model of its own, pooled and projected by
        # the modules after it; neither tower's vectors are normalized (as the container's).
        self._text: torch.nn.Module | None = None
        self._head: list[tuple[str, Any]] = []
        self.normalized = spec.family != "sentence-transformers"
        self._vision: torch.nn.Module
        self._text_tower: _TextTower | _OpenClipTower
        # /meta's "model": the directory's name, or OpenCLIP's name and tag as config.json
        # says them.
        self.name = spec.path.name
        if spec.family == openclip.FAMILY:
            layout = openclip.Layout.read(spec.path)
            self.name = layout.label
            self._model = openclip.load(layout, self.device)
            _check_openclip_preprocess(self._model, spec)
            self._vision = _OpenClipTower(self._model, IMAGE)
            self._text_tower = _OpenClipTower(self._model, TEXT)
        else:
            from transformers import AutoModel

            model = AutoModel.from_pretrained(str(spec.image_path), dtype=torch.float32)
            self._model = model.eval().to(self.device)
            if spec.family == "sentence-transformers":
                text = AutoModel.from_pretrained(str(spec.text_path), dtype=torch.float32)
                self._text = text.eval().to(self.device)
                self._head = read_head(spec.path / "text", self.device)
            self._vision = _VisionTower(self._model, project=spec.family != "siglip")
            self._text_tower = _TextTower(self._model, spec.family, self._text, self._head)
        self.load_s = time.perf_counter() - started
        self.weights_sha256 = _files_sha256(list(spec.weights) or _weight_files(spec))
        pre = spec.preprocess
        self._mean = torch.tensor(pre.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(pre.std, device=self.device).view(1, 3, 1, 1)
        self._engine = self._openvino(engine, "image")
        self._text_engine = self._openvino(engine, "text") if self._engine is not None else None
        self.engine_name = "openvino" if self._engine is not None else "eager"
        # Keep every vector the same bits as its input alone: texts run in padded-length
        # bands (embed_texts), and an engine that is not invariant as it is runs in fixed
        # passes (img2vec/serving/invariance.py).
        self.batch_invariance = batch_invariance
        # Per tower, set by warm_up() where its engine needs it: every call of that tower at
        # exactly this many inputs (None: passes as batched).
        self.fixed_pass: dict[str, int | None] = {IMAGE: None, TEXT: None}
        self.batch_invariant: bool | None = None  # checked by warm_up()
        self.dim = int(self.embed_texts([np.asarray([spec.pad_id], np.int32)]).shape[1])

    def _openvino(self, engine: str, tower: str) -> Any:
        """A tower on OpenVINO where `engine` asks for it (auto: on CPU, where installed): the
        same vectors (relative error ~1e-6), 2.3-2.7x eager's speed for ViT-B/32 on 2 cores
        (bench/clip.py). The text tower takes ids of any length (and any batch)."""
        from img2vec.models.engines import OPENVINO, Normalized, OpenVINOEngine, resolve_engine

        if resolve_engine(engine, self.device, "float32", runs=CLIP_ENGINES) != OPENVINO:
            return None
        pre = self.spec.preprocess
        identity = {
            "model": f"{self.spec.family}-{tower}-tower",
            "weights_sha256": self.weights_sha256 or "none",
            "input_size": list(self.input_size),
            "context": self.spec.context,
            "preprocess": [pre.name, *pre.mean, *pre.std],
        }
        options: dict[str, Any] = {}
        if tower == "image":
            module: torch.nn.Module = Normalized(self._vision, pre.mean, pre.std)
            options["input_size"] = self.input_size
        else:
            import openvino as ov

            module = self._text_tower
            n = 2 if self._text_tower.masked else 1
            length = self.spec.context if self.spec.fixed_length else 8
            options["example"] = tuple(torch.ones((2, length), dtype=torch.int64) for _ in range(n))
            options["inputs"] = [([-1, -1], ov.Type.i64)] * n
        try:
            return OpenVINOEngine(
                module,
                identity=identity,
                dtype="float32",
                threads=torch.get_num_threads(),
                **options,
            )
        except Exception as exc:
            if engine == "openvino":
                raise
            log.warning("the %s tower on OpenVINO failed (%r): running it eager", tower, exc)
            return None

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.preprocess.output_size

    def info(self) -> dict[str, Any]:
        """What every vector depends on (the same keys as the image models' ModelInfo where
        they mean the same)."""
        return {
            "model": self.name,
            "architecture": type(self._model).__name__,
            "weights": str(self.spec.path),
            "weights_sha256": self.weights_sha256,
            "device": str(self.device),
            "dtype": "float32",
            "engine": self.engine_name,
            "preprocess": self.spec.preprocess.name,
            "normalized": self.normalized,
            **self.spec.describe(),
            "dim": self.dim,
            # Images and texts: the same bits alone as in a pass with others, checked at
            # warm-up on this machine (img2vec/serving/invariance.py); None before.
            "batch_invariant": self.batch_invariant,
            # Per tower: every call runs at exactly this many inputs where its engine is not
            # batch-invariant as it is (null: passes as batched).
            "fixed_pass": dict(self.fixed_pass),
            # Per tower, with fixed passes of one on OpenVINO: how many run at once.
            "streams": {
                tower: getattr(engine, "streams", None) if self._one_per_call(tower) else None
                for tower, engine in ((IMAGE, self._engine), (TEXT, self._text_engine))
            },
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

    def _one_per_call(self, tower: str) -> bool:
        """A tower in fixed passes of one input, run by OpenVINO several at once
        (`OpenVINOEngine.each`: its throughput mode) instead of one after another."""
        engine = self._engine if tower == IMAGE else self._text_engine
        return self.fixed_pass[tower] == 1 and engine is not None

    def embed_images(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> float32 (N, dim), L2-normalized."""
        size = self.fixed_pass[IMAGE]
        if size and not self._one_per_call(IMAGE):
            return in_fixed_passes(self._embed_images, [images], size)
        return self._embed_images(images)

    @torch.inference_mode()
    def _embed_images(self, images: np.ndarray) -> np.ndarray:
        if self._engine is not None:
            pixels = np.ascontiguousarray(images)
            run = self._engine.each if self._one_per_call(IMAGE) else self._engine
            return self._out(torch.from_numpy(run(pixels)))
        batch = torch.from_numpy(np.array(images, copy=True)).to(self.device)
        return self._out(self._vision(normalize(batch, self._mean, self._std)))

    def embed_texts(self, ids: Sequence[np.ndarray]) -> np.ndarray:
        """Token ids, one array per text -> float32 (N, dim), L2-normalized.

        A text's vector must not depend on the texts it is batched with (the same bits as
        alone: Weaviate's BlobHash case, the container's one-at-a-time answers). Padding to
        the pass's longest text changes the sums in attention (up to 1.8e-7), so every text is
        padded (masked) to its own length rounded up to TEXT_STEP tokens, alone or not, and
        the texts of a pass run in one call per padded length: the same shape as alone in
        every row. Fewer calls than one per exact length (each call streams all the tower's
        weights), and less padding than to the longest: 32 nearText texts of 11-37 tokens on
        OpenVINO took 259 ms this way, 323 ms padded to the longest and 439 ms per exact
        length (2 cores, ViT-B/32's text tower). SigLIP pads every text to its full context,
        one shape already."""
        context = self.spec.context
        out: list[np.ndarray | None] = [None] * len(ids)
        by_length: dict[int, list[int]] = {}
        for i, t in enumerate(ids):
            padded = context if self.spec.fixed_length else -(-len(t) // TEXT_STEP) * TEXT_STEP
            by_length.setdefault(min(padded, context), []).append(i)
        for length, rows in by_length.items():
            vectors = self._embed_texts([ids[i] for i in rows], length)
            for i, v in zip(rows, vectors, strict=True):
                out[i] = v
        return np.stack(out)  # type: ignore[arg-type]

    def _embed_texts(self, ids: Sequence[np.ndarray], length: int) -> np.ndarray:
        """One call of the text tower (or fixed passes of it), every text padded to `length`."""
        spec = self.spec
        tokens = np.full((len(ids), length), spec.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), length), dtype=np.int64)
        for row, t in enumerate(ids):
            tokens[row, : len(t)] = t
            mask[row, : len(t)] = 1
        size = self.fixed_pass[TEXT]
        if size and not self._one_per_call(TEXT):
            return in_fixed_passes(self._text_pass, [tokens, mask], size)
        return self._text_pass(tokens, mask)

    @torch.inference_mode()
    def _text_pass(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self._text_engine is not None:
            arrays = (tokens, mask) if self._text_tower.masked else (tokens,)
            run = self._text_engine.each if self._one_per_call(TEXT) else self._text_engine
            return self._out(torch.from_numpy(run(*arrays)))
        input_ids = torch.from_numpy(tokens).to(self.device)
        attention = torch.from_numpy(mask).to(self.device)
        return self._out(self._text_tower(input_ids, attention))

    def _out(self, x: torch.Tensor) -> np.ndarray:
        x = x.float()
        if self.normalized:
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return x.cpu().numpy()

    def warm_up(self, max_batch_size: int) -> WarmUp:
        """One pass of each tower at one input and at `max_batch_size`; then, for each tower,
        the check that a vector does not depend on its batch (img2vec/serving/invariance.py), and,
        where it does and `batch_invariance` asks for it, fixed passes for that tower
        (checked again). On OpenVINO a fixed pass of one runs several inputs at once
        (`OpenVINOEngine.each`), so the same bits cost little of the batch's speed."""
        self.fixed_pass = {IMAGE: None, TEXT: None}
        sizes = self._warm(max_batch_size)
        probes = self._probes(max_batch_size)
        invariant = {t: batch_invariant(self.run, probes[t], max_batch_size) for t in probes}
        if not all(invariant.values()) and self.batch_invariance:
            for tower, ok in invariant.items():
                if not ok:
                    self.fixed_pass[tower] = fixed_pass_size(self.device.type, max_batch_size)
            log.info(
                "towers (%s) not batch-invariant: fixed passes %s",
                self.engine_name,
                self.fixed_pass,
            )
            self._warm(max_batch_size)
            invariant = {t: batch_invariant(self.run, probes[t], max_batch_size) for t in probes}
        self.batch_invariant = all(invariant.values())
        # The cost of an image (the larger input) in a full pass: the batcher's first guess.
        n = min(max_batch_size, 16)
        started = time.perf_counter()
        self.embed_images(np.zeros((n, *self.input_size, 3), np.uint8))
        return WarmUp(sizes, (time.perf_counter() - started) / n)

    def _probes(self, max_batch_size: int) -> dict[str, list[Input]]:
        """Per tower, as many seeded probes as a pass holds (4 to 8): images with the smooth
        regions and edges of photos (`probe_images`), texts of lengths that fall in two
        padded lengths (token ids of any vocabulary: the shapes are what matters)."""
        n = max(4, min(max_batch_size, 8))
        rng, vocabulary = np.random.default_rng(0), self._vocabulary_size()
        lengths = [3, 5, 9, 12, 4, 7, 10, 14][:n]
        return {
            IMAGE: [Input(IMAGE, img) for img in probe_images(self.input_size, n)],
            TEXT: [
                Input(TEXT, rng.integers(0, vocabulary, min(k, self.spec.context), np.int32))
                for k in lengths
            ],
        }

    def _vocabulary_size(self) -> int:
        if self.spec.family == openclip.FAMILY:
            return int(self._model.vocab_size)
        config = (self._text if self._text is not None else self._model).config
        return int(getattr(getattr(config, "text_config", config), "vocab_size", 0) or 1)

    def _warm(self, max_batch_size: int) -> list[int]:
        h, w = self.input_size
        sizes = sorted({1, max_batch_size})
        for n in sizes:
            self.embed_images(np.zeros((n, h, w, 3), np.uint8))
            self.embed_texts([np.asarray([self.spec.pad_id] * 8, np.int32)] * n)
        return sizes


def _weight_files(spec: ClipSpec) -> list[Path]:
    """The towers' directories' weight files, in name order."""
    folders = dict.fromkeys(p for p in (spec.image_path, spec.text_path) if p is not None)
    return [f for d in folders for ext in ("*.safetensors", "*.bin") for f in sorted(d.glob(ext))]


def _check_openclip_preprocess(model: Any, spec: ClipSpec) -> None:
    """The preprocessing open_clip set on the model it built is the one the ingress applies
    (img2vec/inputs/openclip.py reads it from the same configs without building the model)."""
    built = openclip.preprocess_of(model.visual.preprocess_cfg, spec.preprocess.name)
    if built != spec.preprocess:
        raise ValueError(
            f"{spec.path}: open_clip preprocesses as {built}, the spec as {spec.preprocess}"
        )


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
