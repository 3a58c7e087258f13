"""The model deployment: one backbone per replica, many single-image calls batched
into one forward pass by `@serve.batch`.

Inputs arrive already decoded and resized (uint8 H x W x 3, from the ingress), so
everything that can fail because of one client's bytes has failed before the
batch forms; each call is checked again here before it may join a batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict, Field
from ray import serve

from img2vec.model import Embedder, build_embedder

log = logging.getLogger("ray.serve")

DEFAULT_MAX_BATCH_SIZE = 16
DEFAULT_BATCH_WAIT_TIMEOUT_S = 0.0
# How many @serve.batch batches may be handed to the ForwardQueue at once: at least the
# largest max_batch_size in use, since with batch_wait_timeout_s=0 a batch may hold a single
# request. (Fixed when the class is defined; Serve cannot change it live.)
MAX_CONCURRENT_BATCHES = 128


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


def _histogram(sizes: Counter[int]) -> dict[str, int]:
    return {str(k): sizes[k] for k in sorted(sizes)}


def default_torch_threads(device: str) -> int:
    """Ray sets OMP_NUM_THREADS=1 in a one-CPU actor, which torch would silently obey (a
    ResNet50 forward then runs ~2x slower on two cores), so threads are always set:
    - on a GPU, the CPUs Ray granted (they only feed the GPU);
    - on CPU, every core this process may run on: the forward pass is the work, and one
      CPU embedder per node is the common case. Several per node: set `torch_threads`."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return len(os.sched_getaffinity(0))
    try:
        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:
        granted = 1.0
    return max(1, round(granted))


class ForwardQueue:
    """Runs forward passes one at a time, on a worker thread, and merges the batches that
    `@serve.batch` closed while the previous pass was running into the next one.

    Why: Serve's batcher closes a batch `batch_wait_timeout_s` after its first request,
    whether or not the device is free. Under load the batches that form while a forward
    pass runs are small, and they would then run one after another. Merging them lets a
    lone request go straight to the device (no wait for a batch to fill) while a busy
    device still gets full batches: whatever arrived during a pass runs in the next.
    """

    def __init__(self, embed: Callable[[list[np.ndarray]], np.ndarray], max_images: int) -> None:
        self._embed = embed
        self.max_images = max_images
        self._pending: deque[tuple[list[np.ndarray], asyncio.Future[np.ndarray]]] = deque()
        self._worker: asyncio.Task[None] | None = None
        # One thread for every forward pass: torch's OpenMP team belongs to the thread that
        # calls it, and a pool of callers would each keep a team of spinning threads.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="forward")
        self.sizes: Counter[int] = Counter()
        self.busy_s = 0.0
        # Recent pass durations per batch size, for the median reported by /meta.
        self.recent_s: dict[int, deque[float]] = {}

    async def submit(self, images: list[np.ndarray]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        self._pending.append((images, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[list[np.ndarray], asyncio.Future[np.ndarray]]]:
        """Whole batches, oldest first, up to `max_images` (at least one batch)."""
        group = [self._pending.popleft()]
        count = len(group[0][0])
        while self._pending and count + len(self._pending[0][0]) <= self.max_images:
            group.append(self._pending.popleft())
            count += len(group[-1][0])
        return group

    async def _drain(self) -> None:
        while self._pending:
            group = [(imgs, fut) for imgs, fut in self._take() if not fut.done()]
            if not group:
                continue
            images = [img for imgs, _ in group for img in imgs]
            started = time.perf_counter()
            try:
                vectors = await asyncio.get_running_loop().run_in_executor(
                    self._thread, self._embed, images
                )
            except Exception as exc:
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            finally:
                took = time.perf_counter() - started
                self.busy_s += took
            self.sizes[len(images)] += 1
            self.recent_s.setdefault(len(images), deque(maxlen=256)).append(took)
            start = 0
            for imgs, fut in group:
                if not fut.done():
                    fut.set_result(vectors[start : start + len(imgs)])
                start += len(imgs)


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
        threads = options.torch_threads or default_torch_threads(options.device)
        self._embedder: Embedder = build_embedder(
            model=options.model,
            weights=options.weights,
            device=options.device,
            dtype=options.dtype,
            torch_threads=threads,
        )
        self._config = BatchConfig()
        self._batch_sizes: Counter[int] = Counter()  # as @serve.batch formed them
        self._forward = ForwardQueue(self._embedder.embed, DEFAULT_MAX_BATCH_SIZE)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = BatchConfig.model_validate(user_config or {})
        self._embed_batch.set_max_batch_size(config.max_batch_size)
        self._embed_batch.set_batch_wait_timeout_s(config.batch_wait_timeout_s)
        self._forward.max_images = config.max_batch_size
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
        max_batch_size=DEFAULT_MAX_BATCH_SIZE,
        batch_wait_timeout_s=DEFAULT_BATCH_WAIT_TIMEOUT_S,
        # Batches may close while a forward pass runs; the ForwardQueue merges them.
        max_concurrent_batches=MAX_CONCURRENT_BATCHES,
    )
    async def _embed_batch(self, images: list[np.ndarray]) -> list[np.ndarray]:
        self._batch_sizes[len(images)] += 1
        return list(await self._forward.submit(images))

    def info(self) -> dict[str, Any]:
        """Model identity; answering it at all means the model is loaded."""
        return asdict(self._embedder.info())

    def stats(self) -> dict[str, Any]:
        """Batching as it happened on this replica, and the live batch settings."""
        sizes = self._forward.sizes
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "batches": sum(sizes.values()),
            "images": sum(k * v for k, v in sizes.items()),
            "max_batch_size_formed": max(sizes, default=0),
            "batch_size_histogram": _histogram(sizes),
            "serve_batch_histogram": _histogram(self._batch_sizes),
            "forward_seconds": round(self._forward.busy_s, 3),
            "forward_ms_median": {
                str(k): round(1e3 * float(np.median(v)), 1)
                for k, v in sorted(self._forward.recent_s.items())
            },
            "config": self._config.model_dump(),
        }
