"""The embedder: uint8 image arrays in, float32 vectors out, one batched forward pass.

Building the architecture and loading its weights, taking the embedding at the spec's
feature node, the device and precision, the warm-up of every batch shape that can run and
the batch-invariance check. The forward pass itself is an engine's (img2vec/models/engines.py).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from img2vec.errors import ConfigError, WeightsError, brief
from img2vec.inputs.preprocessing import Preprocess, get_preset
from img2vec.models.engines import (
    OPENVINO,
    Engine,
    Normalized,
    OpenVINOEngine,
    TorchEngine,
    bucket_for,
    bucket_sizes,
    configure_precision,
    precision,
    resolve_engine,
)
from img2vec.models.weights import (
    RANDOM,
    ModelSpec,
    ResolvedWeights,
    get_spec,
    preset_of,
    resolve_weights,
)
from img2vec.options import DEFAULT_DOWNLOAD_TIMEOUT_S, DEFAULT_MODEL, DEVICES, DOWNLOAD
from img2vec.serving.batching import WarmUp
from img2vec.serving.invariance import (
    batch_invariant,
    fixed_pass_size,
    in_fixed_passes,
    probe_images,
)

log = logging.getLogger(__name__)

RANDOM_SEED = 0


VECTORS_OF = {"float32": "float32: the vectors of img2vec-pytorch; existing indexes stay valid"}
VECTORS_OTHER = (
    "changed by the faster precision (docs/benchmarks.md#engines): for new indexes only, "
    "never mixed with float32 vectors"
)


@dataclass(frozen=True)
class ModelInfo:
    """What a vector depends on, reported by /meta and logged at start-up."""

    model: str
    dim: int
    weights: str  # torchvision's name for the published weights, "custom" or "random"
    weights_source: str
    weights_sha256: str | None
    preprocess: str
    device: str
    dtype: str
    engine: str
    torch_threads: int
    # Whether an index built with img2vec-pytorch (float32) can take these vectors.
    vectors: str
    # Each image's vector the same bits alone as batched with others, checked on this
    # machine at warm-up (img2vec/serving/invariance.py); None before the check.
    batch_invariant: bool | None = None
    # Every pass runs at exactly this many images where the engine is not batch-invariant
    # as it is (None: passes as batched).
    fixed_pass: int | None = None


class Embedder:
    """A loaded backbone on one device. `embed` is synchronous; one caller at a time (the
    batcher runs every pass on one thread)."""

    def __init__(
        self,
        spec: ModelSpec,
        module: torch.nn.Module,
        weights: ResolvedWeights,
        device: torch.device,
        preprocess: Preprocess,
        dtype: str = "float32",
        engine: str = "torchscript",
        pad_to_buckets: bool | None = None,
        name: str | None = None,
        batch_invariance: bool = True,
    ) -> None:
        self.spec = spec
        self.name = name or spec.name  # as asked for: `convnext_tiny:native` names its preset
        self.device = device
        self.dtype_name = dtype
        self.dtype = precision(dtype)[0]
        self.preprocess = preprocess
        self._weights = weights
        # With cudnn.benchmark every new input shape is autotuned on first sight: batches are
        # padded to a few sizes, and those are warmed up before the replica reports ready.
        self.pad_to_buckets = device.type == "cuda" if pad_to_buckets is None else pad_to_buckets
        self.warmed: set[int] = set()
        self.buckets: list[int] = []  # the padded batch sizes, set by warm_up()
        # Keep every vector the same bits as its image alone: an engine that is not invariant
        # as it is runs in fixed passes (img2vec/serving/invariance.py), set by warm_up().
        self.batch_invariance = batch_invariance
        self.fixed_pass: int | None = None
        self.batch_invariant: bool | None = None  # checked by warm_up()
        asked, engine = engine, resolve_engine(engine, device, dtype)
        self._engine: Engine | None = None
        if engine == OPENVINO:
            try:
                self._engine = self._openvino(module, dtype)
            except Exception as exc:
                if asked == OPENVINO or isinstance(exc, ConfigError):
                    raise
                # `auto`: a backbone OpenVINO cannot take runs on PyTorch, and says so.
                log.warning("OpenVINO could not take %s (%s): engine torchscript", spec.name, exc)
                engine = "torchscript"
        if self._engine is not None:
            self.pad_to_buckets = False
        else:
            self._engine = TorchEngine(
                module, engine, device, self.dtype, preprocess.mean, preprocess.std, self.input_size
            )
        self.engine_name = self._engine.name

    def _openvino(self, module: torch.nn.Module, dtype: str) -> OpenVINOEngine:
        identity = {
            "model": self.spec.name,
            "feature_node": self.spec.feature_node,
            "weights_sha256": self._weights.sha256 or f"random-seed{RANDOM_SEED}",
            "input_size": list(self.input_size),
            "preprocess": [self.preprocess.name, *self.preprocess.mean, *self.preprocess.std],
        }
        normalized = Normalized(module.float(), self.preprocess.mean, self.preprocess.std)
        return OpenVINOEngine(
            normalized,
            input_size=self.input_size,
            identity=identity,
            dtype=dtype,
            threads=torch.get_num_threads(),
        )

    @property
    def engine(self) -> Engine:
        """What runs the forward pass (img2vec/models/engines.py)."""
        assert self._engine is not None
        return self._engine

    @property
    def dim(self) -> int:
        return self.spec.dim

    @property
    def input_size(self) -> tuple[int, int]:
        return self.preprocess.output_size

    def info(self) -> ModelInfo:
        return ModelInfo(
            model=self.name,
            dim=self.spec.dim,
            weights=_weights_name(self.spec, self._weights),
            weights_source=self._weights.source,
            weights_sha256=self._weights.sha256,
            preprocess=self.preprocess.name,
            device=str(self.device),
            dtype=self.dtype_name,
            engine=self.engine_name,
            torch_threads=torch.get_num_threads(),
            vectors=VECTORS_OF.get(self.dtype_name, VECTORS_OTHER),
            batch_invariant=self.batch_invariant,
            fixed_pass=self.fixed_pass,
        )

    def embed(self, images: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """uint8 arrays (H, W, 3), all of the preset's size -> float32 (N, dim)."""
        batch = _stack(images, self.input_size)
        if self.fixed_pass == 1:
            return self.engine.each(batch)  # on OpenVINO several at once
        if self.fixed_pass:
            return in_fixed_passes(self._forward, [batch], self.fixed_pass)
        return self._forward(batch)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """One pass; on a GPU padded with blank images to the smallest warmed-up size."""
        n = batch.shape[0]
        if self.pad_to_buckets and (size := bucket_for(n, self.buckets)) > n:
            batch = np.concatenate([batch, np.zeros((size - n, *batch.shape[1:]), batch.dtype)])
        return self.engine(batch)[:n]

    def warm_up(self, max_batch_size: int) -> WarmUp:
        """Run every batch shape that can form up to `max_batch_size` once (the buckets when
        padding, else batch 1), so that no autotuning or first-call optimization lands on
        live traffic; then check that an image's vector does not depend on its batch, and,
        where it does and `batch_invariance` asks for it, run fixed passes (checked again).
        Returns the sizes run now and the cost of one image in a full pass."""
        self.fixed_pass = None
        todo = self._warm(bucket_sizes(max_batch_size) if self.pad_to_buckets else [1])
        self.batch_invariant = self._invariant(max_batch_size)
        if not self.batch_invariant and self.batch_invariance:
            self.fixed_pass = fixed_pass_size(self.device.type, max_batch_size)
            log.info(
                "%s (%s) not batch-invariant: fixed passes of %d",
                self.name,
                self.engine_name,
                self.fixed_pass,
            )
            todo += self._warm([self.fixed_pass] if self.pad_to_buckets else [1])
            self.batch_invariant = self._invariant(max_batch_size)
        return WarmUp(todo, self._seconds_per_image(max_batch_size))

    def _seconds_per_image(self, max_batch_size: int) -> float:
        """One timed pass of blank images at the largest batch (at most 16)."""
        n = min(max_batch_size, 16)
        blank = np.zeros((n, *self.input_size, 3), dtype=np.uint8)
        started = time.perf_counter()
        self.embed(blank)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return (time.perf_counter() - started) / n

    def _warm(self, sizes: list[int]) -> list[int]:
        self.buckets = sizes if self.pad_to_buckets else []
        todo = [s for s in sizes if s not in self.warmed]
        blank = np.zeros((1, *self.input_size, 3), dtype=np.uint8)
        for size in todo:
            self.embed(np.repeat(blank, size, axis=0))
            self.warmed.add(size)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return todo

    def _invariant(self, max_batch_size: int) -> bool:
        return batch_invariant(
            lambda images: self.embed(np.stack(images)),
            probe_images(self.input_size, max(4, min(max_batch_size, 8))),
            max_batch_size,
        )


class _Features(torch.nn.Module):
    """The backbone cut at its feature node, flattened to (N, dim)."""

    def __init__(self, extractor: torch.nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extractor(x)["embedding"].flatten(1)


def build_module(spec: ModelSpec) -> torch.nn.Module:
    """The architecture with random initial weights (no download)."""
    module: torch.nn.Module = getattr(torchvision.models, spec.builder)(weights=None)
    return module


def load_module(spec: ModelSpec, weights: ResolvedWeights) -> torch.nn.Module:
    """Build the architecture, load the weights strictly, and return the module that maps
    a normalized batch to the embedding at `spec.feature_node`, (N, dim)."""
    if weights.source == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            module = build_module(spec)
    else:
        assert weights.path is not None
        module = build_module(spec)
        state = _read_state(weights)
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(
                f"The state dict in {weights.path} does not fit torchvision's {spec.builder} "
                f"({brief(exc)}). IMG2VEC_MODEL={spec.name} needs {spec.weights_file} "
                f"({spec.url}) or a fine-tuned state dict of exactly that architecture."
            ) from None
    module.eval()
    extractor = create_feature_extractor(module, return_nodes={spec.feature_node: "embedding"})
    return _Features(extractor).eval().requires_grad_(False)


def _read_state(weights: ResolvedWeights) -> dict[str, torch.Tensor]:
    assert weights.path is not None
    try:
        state = torch.load(weights.path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"Could not read {weights.path} as a PyTorch state dict ({brief(exc)}). "
            f"IMG2VEC_WEIGHTS must name a file saved with torch.save(model.state_dict())."
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(
            f"{weights.path} holds a {type(state).__name__}, not a state dict. Save it "
            f"with torch.save(model.state_dict(), path)."
        )
    return state


def _weights_name(spec: ModelSpec, weights: ResolvedWeights) -> str:
    if weights.source == RANDOM:
        return "random"
    return spec.weights_tag if weights.sha256 and spec.matches(weights.sha256) else "custom"


def _stack(images: Sequence[np.ndarray] | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    expected = (*size, 3)
    if isinstance(images, np.ndarray):
        batch = images
        if batch.ndim != 4 or batch.shape[1:] != expected:
            raise ValueError(
                f"expected a batch of shape (N, {size[0]}, {size[1]}, 3), got {batch.shape}"
            )
    else:
        if not images:
            raise ValueError("embed() needs at least one image")
        for a in images:
            if a.shape != expected:
                raise ValueError(f"expected arrays of shape {expected}, got {a.shape}")
        batch = np.stack(images)
    if batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 arrays, got {batch.dtype}")
    return batch


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` is CUDA when a GPU is visible to this process (Ray sets
    CUDA_VISIBLE_DEVICES to the GPUs it granted), else CPU."""
    if requested not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "IMG2VEC_DEVICE=cuda, but no CUDA device is visible to this process. On Ray, "
            "give the embedder a GPU (ray_actor_options: num_gpus: 1) or use auto/cpu."
        )
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
        if requested == "cpu":
            log.info("device auto: no CUDA device visible to this process; running on CPU")
    return torch.device(requested)


def is_out_of_memory(exc: BaseException) -> bool:
    """A failure that a smaller batch may avoid: CUDA's OOM, or the allocator's message on
    other devices."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def build_embedder(
    *,
    model: str = DEFAULT_MODEL,
    weights: str = DOWNLOAD,
    device: str = "auto",
    torch_threads: int | None = None,
    dtype: str = "float32",
    engine: str = "auto",
    preprocess: str | None = None,
    download_timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S,
    batch_invariance: bool = True,
) -> Embedder:
    """Resolve and verify the weights, load them, and place the model on its device."""
    precision(dtype)  # refused before the weights are read
    spec = get_spec(model)
    resolved = resolve_weights(spec, weights, timeout_s=download_timeout_s)
    module = load_module(spec, resolved)
    dev = pick_device(device)
    if torch_threads is not None:
        if torch_threads < 1:
            raise ConfigError(f"torch_threads must be >= 1, got {torch_threads}")
        torch.set_num_threads(torch_threads)
    configure_precision(dtype)
    if dev.type == "cuda":
        # cudnn's autotuner picks each shape's algorithm by timing it, so two replicas (or
        # two starts) may pick different ones and give one image different bits; its
        # heuristics pick the same one every time.
        torch.backends.cudnn.benchmark = not batch_invariance
        torch.backends.cudnn.deterministic = batch_invariance
    preset = get_preset(preprocess or preset_of(model))
    embedder = Embedder(
        spec,
        module,
        resolved,
        dev,
        preset,
        dtype,
        engine,
        name=model,
        batch_invariance=batch_invariance,
    )
    log.info("embedder ready: %s (pid %d)", embedder.info(), os.getpid())
    return embedder
