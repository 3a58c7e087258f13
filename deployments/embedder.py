"""The model deployment: one backbone per replica. `@serve.batch` gathers concurrent calls;
the library's `Batcher` (img2vec/batching.py) decides which of them run in each forward pass.

Inputs arrive already decoded and resized (uint8 H x W x 3, from the ingress), so
everything that can fail because of one client's bytes has failed before a pass forms;
each call is checked again here before it may join one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
import torch
from pydantic import BaseModel, ConfigDict
from ray import serve

from deployments.metrics import EmbedderMetrics, keep_fresh
from img2vec.batching import Batcher, BatchSettings
from img2vec.cpus import available_cpus
from img2vec.errors import Img2VecError, Overloaded
from img2vec.model import Embedder, build_embedder, is_out_of_memory

log = logging.getLogger("ray.serve")

DEFAULTS = BatchSettings()


class EmbedderOptions(BaseModel):
    """Structure, fixed for the replica's life (from the builder's args)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str
    weights: str
    device: str
    dtype: str = "float32"
    graph: str = "torchscript"
    torch_threads: int | None = None
    download_timeout_s: float = 30.0


def default_torch_threads(device: str) -> int:
    """Ray sets OMP_NUM_THREADS=1 in a one-CPU actor, which torch would silently obey (a
    ResNet50 forward then runs ~2x slower on two cores), so threads are always set:
    - on a GPU, the CPUs Ray granted (they only feed the GPU);
    - on CPU, every CPU this process may use (affinity and container quota): the forward
      pass is the work, and one CPU embedder per node is the common case. Several per
      node: set `torch_threads`."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return available_cpus()
    try:
        granted = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:
        granted = 1.0
    return max(1, round(granted))


@serve.deployment(
    name="Embedder",
    # Enough for a full pass running and the next one queued behind it.
    max_ongoing_requests=64,
    max_queued_requests=256,
    user_config=DEFAULTS.as_dict(),
)
class EmbedderDeployment:
    def __init__(self, options: EmbedderOptions) -> None:
        threads = options.torch_threads or default_torch_threads(options.device)
        self._embedder: Embedder = build_embedder(
            model=options.model,
            weights=options.weights,
            device=options.device,
            dtype=options.dtype,
            graph=options.graph,
            torch_threads=threads,
            download_timeout_s=options.download_timeout_s,
        )
        self._metrics = EmbedderMetrics(asdict(self._embedder.info()))
        self._batcher: Batcher[np.ndarray, np.ndarray] = Batcher(
            self._embedder.embed,
            DEFAULTS,
            is_out_of_memory=is_out_of_memory,
            observer=self._metrics,
        )
        # Images admitted by embed() that @serve.batch has not yet handed to the batcher:
        # work already promised, which the batcher's own queue does not show yet.
        self._admitted = 0
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._fresh = asyncio.get_running_loop().create_task(keep_fresh(self._metrics.refresh))

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The batch settings, live: Serve calls this before the replica takes traffic and
        on every `user_config` change. New batch shapes are warmed up first."""
        settings = BatchSettings.from_user_config(user_config)
        started = time.perf_counter()
        warmed = await self._batcher.call(lambda: self._embedder.warm_up(settings.max_batch_size))
        # @serve.batch only gathers; its group size follows the one setting.
        self._gather.set_max_batch_size(settings.max_batch_size)
        self._batcher.reconfigure(settings)
        log.info(
            "embedder batching: %s (warmed up %s in %.1f s)",
            settings,
            warmed,
            time.perf_counter() - started,
        )

    async def embed(self, image: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """One uint8 image (H, W, 3) -> its float32 vector (dim,), by `deadline` (epoch
        seconds, `time.time()`: the caller's clock, so that the time a call waited in Serve's
        queues counts) or an `Overloaded` error: at once when the model is already further
        behind than that, else when the deadline passes before its forward pass starts."""
        self._check(image)
        local_deadline = self._admit(deadline, 1)
        self._admitted += 1
        try:
            future: asyncio.Future[np.ndarray] = await self._gather(image, local_deadline)
        finally:
            self._admitted -= 1
        # If this call is cancelled (the client went away), awaiting cancels the future and
        # the batcher drops the image before its pass.
        return await future

    async def embed_group(
        self, images: np.ndarray, deadlines: list[float | None]
    ) -> tuple[list[np.ndarray | Img2VecError], float, float, int]:
        """Several images in one call (N, H, W, 3): the requests an ingress replica gathered
        (deployments/link.py), or one bulk request's chunk. One call per group, not per
        image, is what keeps this replica's event loop, which every call of the node reaches,
        from being the node's serial limit. Straight into the batcher, into the same passes
        as single calls.

        Returns each image's vector or its own error (refusals are values: an exception
        crossing Ray costs a traceback and its pickling, per request, in both processes),
        then how far behind the model is now and its recent seconds per image, from which the
        ingress refuses early what cannot make its deadline, and the largest pass it runs (a
        group larger than that would wait for two passes before it is answered)."""
        self._check_group(images, len(deadlines))
        now, local_now = time.time(), time.monotonic()
        base = self._batcher.expected_wait_s() + self._admitted * self._batcher.seconds_per_image()
        per_image = self._batcher.seconds_per_image()
        results: list[np.ndarray | Img2VecError | None] = [None] * len(deadlines)
        futures: dict[int, asyncio.Future[np.ndarray]] = {}
        for i, deadline in enumerate(deadlines):
            local_deadline = None
            if deadline is not None:
                left = deadline - now
                behind = base + len(futures) * per_image
                if behind > left:
                    results[i] = Overloaded(
                        f"the model is {behind:.1f} s behind and this request has "
                        f"{max(left, 0):.1f} s left; retry later"
                    )
                    continue
                local_deadline = local_now + left
            futures[i] = self._batcher.enqueue(images[i], local_deadline)
        try:
            answers = await asyncio.gather(*futures.values(), return_exceptions=True)
        except asyncio.CancelledError:
            for future in futures.values():
                future.cancel()
            raise
        for i, answer in zip(futures, answers, strict=True):
            results[i] = (
                answer if isinstance(answer, np.ndarray | Img2VecError) else _as_error(answer)
            )
        behind_now = max(self._batcher.expected_wait_s() - per_image, 0.0)
        max_pass = self._batcher.settings.max_batch_size
        return results, behind_now, per_image, max_pass  # type: ignore[return-value]

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=0.0)
    async def _gather(
        self, images: list[np.ndarray], deadlines: list[float | None]
    ) -> list[asyncio.Future[np.ndarray]]:
        # Hands each call to the batcher and returns at once: a gathered group never waits
        # for a pass to finish, so the next one can form while the model runs.
        return [
            self._batcher.enqueue(image, deadline)
            for image, deadline in zip(images, deadlines, strict=True)
        ]

    def _check_group(self, images: object, count: int) -> None:
        expected = (count, *self._embedder.input_size, 3)
        if (
            not isinstance(images, np.ndarray)
            or images.dtype != np.uint8
            or images.shape != expected
        ):
            got = (images.dtype, images.shape) if isinstance(images, np.ndarray) else type(images)
            raise ValueError(f"embed_group() expects a uint8 array of shape {expected}, got {got}")

    def _check(self, image: object) -> None:
        """Refused alone, before it can join (and break) a pass."""
        expected = (*self._embedder.input_size, 3)
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.shape != expected:
            got = (image.dtype, image.shape) if isinstance(image, np.ndarray) else type(image)
            raise ValueError(f"embed() expects a uint8 array of shape {expected}, got {got}")

    def _admit(self, deadline: float | None, count: int) -> float | None:
        """The local (monotonic) deadline, or Overloaded at once when the model is already
        further behind than the time left. Behind counts what the batcher holds and what was
        admitted but is still on its way to it: a burst arrives within one tick of the event
        loop, before @serve.batch has handed any of it over, and counting only the batcher's
        queue admitted all of it (every refusal then came at the deadline)."""
        if deadline is None:
            return None
        left = deadline - time.time()
        ahead = self._admitted + count - 1
        behind = self._batcher.expected_wait_s() + ahead * self._batcher.seconds_per_image()
        if behind > left:
            raise Overloaded(
                f"the model is {behind:.1f} s behind and this request has {max(left, 0):.1f}"
                " s left; retry later"
            )
        return time.monotonic() + left

    def describe(self) -> dict[str, Any]:
        """Model identity and this replica's batching, from one replica, in one answer;
        answering at all means the model is loaded."""
        return {
            "replica": self._replica,
            "node_id": ray.get_runtime_context().get_node_id(),
            **asdict(self._embedder.info()),
            "batching": self._batcher.snapshot(),
        }

    def info(self) -> dict[str, Any]:
        """Model identity only: the cheap readiness probe."""
        return asdict(self._embedder.info())

    def __del__(self) -> None:
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            batcher.close()


def _as_error(exc: BaseException) -> Img2VecError:
    """A pass that failed for one of ours (e.g. out of memory on one image): the item's own
    error, logged; the other items keep their vectors."""
    log.error("an image of a group failed: %r", exc)
    return Img2VecError("internal error; the service logged the details")
