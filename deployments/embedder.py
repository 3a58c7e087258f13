"""The model deployment: one backbone per replica, many single-image calls batched
into one forward pass by `@serve.batch`.

Inputs arrive already decoded and resized (uint8 H x W x 3, from the ingress), so
everything that can fail because of one client's bytes has failed before the
batch forms; each call is checked again here before it may join a batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from img2vec.model import Embedder, build_embedder

log = logging.getLogger("ray.serve")

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.005


class EmbedderOptions(BaseModel):
    """Structure, fixed for the replica's life (from the builder's args)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str
    weights: str
    device: str
    dtype: str = "float32"
    torch_threads: int | None = None


class BatchConfig(BaseModel):
    """Live tuning: `user_config` in serve_config.yaml, applied by `reconfigure()`
    without restarting the replica."""

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(DEFAULT_MAX_BATCH_SIZE, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(DEFAULT_BATCH_WAIT_TIMEOUT_S, ge=0.0, le=10.0)


def _granted_cpus() -> int:
    """torch threads = the CPUs Ray granted this actor. Ray sets OMP_NUM_THREADS=1 in a
    one-CPU actor, which torch would otherwise silently obey."""
    try:
        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:
        granted = 1.0
    return max(1, round(granted))


@serve.deployment(
    name="Embedder",
    # Serve's default of 5 would cap every batch at 5: let full batches (and the next
    # one, forming while this one runs) be in flight at once.
    max_ongoing_requests=64,
    max_queued_requests=256,
    user_config=BatchConfig().model_dump(),
)
class EmbedderDeployment:
    def __init__(self, options: EmbedderOptions) -> None:
        threads = options.torch_threads or _granted_cpus()
        self._embedder: Embedder = build_embedder(
            model=options.model,
            weights=options.weights,
            device=options.device,
            dtype=options.dtype,
            torch_threads=threads,
        )
        self._config = BatchConfig()
        self._batch_sizes: Counter[int] = Counter()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = BatchConfig.model_validate(user_config or {})
        self._embed_batch.set_max_batch_size(config.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._config = config
        log.info("embedder batching: %s", config)

    async def embed(self, image: np.ndarray) -> np.ndarray:
        """One uint8 image (H, W, 3) -> its float32 vector (dim,)."""
        expected = (*self._embedder.input_size, 3)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != expected:
            # Refused alone, before it can join (and break) a batch.
            got = (image.dtype, image.shape) if isinstance(image, np.ndarray) else type(image)
            raise ValueError(f"embed() expects a uint8 array of shape {expected}, got {got}")
        return await self._embed_batch(image)

    @serve.batch(
        max_batch_size=DEFAULT_MAX_BATCH_SIZE, batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S
    )
    async def _embed_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        self._batch_sizes[len(images)] += 1
        # The forward pass blocks for tens to hundreds of milliseconds: run it off the
        # event loop so that the next batch can gather while this one computes.
        vectors = await asyncio.to_thread(self._embedder.embed, images)
        return list(vectors)

    def info(self) -> dict[str, Any]:
        """Model identity; answering it at all means the model is loaded."""
        return asdict(self._embedder.info())

    def stats(self) -> dict[str, Any]:
        """Batching as it happened on this replica, and the live batch settings."""
        sizes = self._batch_sizes
        return {
            "batches": sum(sizes.values()),
            "images": sum(k * v for k, v in sizes.items()),
            "max_batch_size_formed": max(sizes, default=0),
            "batch_size_histogram": {str(k): sizes[k] for k in sorted(sizes)},
            "config": self._config.model_dump(),
        }
