"""The two towers of a CLIP-style model, whatever its family (each family loads its own:
img2vec/models/clip/registry.py): images and texts into one vector space, L2-normalized as the
multi2vec-clip container returns them (where the family's are).

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

from img2vec.inputs.multimodal import ClipSpec
from img2vec.models.clip import registry
from img2vec.models.engines import normalize
from img2vec.models.image import pick_device
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
        loaded = registry.load(spec, self.device)
        self._model = loaded.model
        self._vision, self._text_tower = loaded.vision, loaded.text
        self._masked, self.normalized = loaded.masked, loaded.normalized
        self._vocabulary = loaded.vocabulary
        self.name = loaded.name  # /meta's "model"
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
            n = 2 if self._masked else 1
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
            arrays = (tokens, mask) if self._masked else (tokens,)
            run = self._text_engine.each if self._one_per_call(TEXT) else self._text_engine
            return self._out(torch.from_numpy(run(*arrays)))
        input_ids = torch.from_numpy(tokens).to(self.device)
        if not self._masked:
            return self._out(self._text_tower(input_ids))
        return self._out(self._text_tower(input_ids, torch.from_numpy(mask).to(self.device)))

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
        rng, vocabulary = np.random.default_rng(0), self._vocabulary
        lengths = [3, 5, 9, 12, 4, 7, 10, 14][:n]
        return {
            IMAGE: [Input(IMAGE, img) for img in probe_images(self.input_size, n)],
            TEXT: [
                Input(TEXT, rng.integers(0, vocabulary, min(k, self.spec.context), np.int32))
                for k in lengths
            ],
        }

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
