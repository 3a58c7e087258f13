"""The model deployment: one backbone per replica.

Every call arrives with a group of images already decoded and resized (uint8 N x H x W x 3):
from an ingress replica (deployments/link.py), a bulk request's chunk, or a single image from
another Serve app composing the Embedder (`embed()`). Everything that can fail because of one
client's bytes has failed before here; each call's array is checked once more before any of
it may join a pass.

Two stages, each with one job:
- `@serve.batch` (`_gather`) gathers the calls that reach this replica at the same moment,
  from every ingress replica, and admits their images into the batcher in one step: one
  backlog estimate per gathering, not per call. It never waits (`batch_wait_timeout_s` 0)
  and returns as soon as the images are queued, so the next gathering forms while the model
  runs.
- The batcher (img2vec/batching.py) decides what runs in each forward pass. Not
  `@serve.batch`: in Ray 2.60 it forms the next batch before it waits for the running one,
  so under load its passes were small and ran back to back (measured, docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import Any, NamedTuple

import numpy as np
from ray import serve

from deployments.handoff import GroupAnswer
from deployments.replica import DEFAULTS, ModelReplica, as_result, default_torch_threads
from deployments.settings import EmbedderSettings
from img2vec.errors import Img2VecError
from img2vec.model import Embedder, build_embedder


class _Call(NamedTuple):
    """One call's images and their deadlines (epoch seconds), as `@serve.batch` gathers it."""

    images: np.ndarray
    deadlines: list[float | None]


# One image's place in the batcher, or why it was refused before it got one.
Admitted = asyncio.Future[np.ndarray] | Img2VecError


@serve.deployment(
    name="Embedder",
    # Enough for a full pass running and the next one queued behind it.
    max_ongoing_requests=64,
    max_queued_requests=256,
    user_config=DEFAULTS.as_dict(),
)
class EmbedderDeployment(ModelReplica):
    def __init__(self, settings: EmbedderSettings) -> None:
        options = settings.model_dump()
        threads = options.pop("torch_threads") or default_torch_threads(settings.device)
        self._embedder: Embedder = build_embedder(**options, torch_threads=threads)
        self._start(self._embedder.embed, self._embedder.warm_up)

    def _identity(self) -> dict[str, Any]:
        return asdict(self._embedder.info())

    async def embed_group(self, images: np.ndarray, deadlines: list[float | None]) -> GroupAnswer:
        """Several images in one call (N, H, W, 3), each with its deadline (epoch seconds,
        `time.time()`: the caller's clock, so that the time a call waited in Serve's queues
        counts; None: no deadline). Each image is answered with its vector or its own error:
        `Overloaded` at once when the model is already further behind than its time left,
        or when its deadline passes before its forward pass starts."""
        self._check(images, (len(deadlines),))
        self._calls += 1
        admitted = await self._gather(_Call(images, deadlines))
        queued = [entry for entry in admitted if isinstance(entry, asyncio.Future)]
        # Cancelled with the call, gather cancels every future: those images leave the queue.
        answered = iter(await asyncio.gather(*queued, return_exceptions=True))
        results = [
            as_result(next(answered)) if isinstance(entry, asyncio.Future) else entry
            for entry in admitted
        ]
        return GroupAnswer(results, self._batcher.backlog())

    async def embed(self, image: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """One uint8 image (H, W, 3) -> its float32 vector (dim,), or its error raised: for
        other Serve apps that compose the Embedder through its handle."""
        self._check(image, ())
        result = (await self.embed_group(image[np.newaxis], [deadline])).results[0]
        if isinstance(result, Img2VecError):
            raise result
        return result

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=0.0)
    async def _gather(self, calls: list[_Call]) -> list[list[Admitted]]:
        """Admit the images of every call gathered now, oldest first: each one the model
        can still answer in time goes into the batcher's queue, the others are refused."""
        self._gatherings += 1
        backlog = self._batcher.backlog()
        now, local_now = time.time(), time.monotonic()
        queued = 0
        admitted: list[list[Admitted]] = []
        for call in calls:
            entries: list[Admitted] = []
            for image, deadline in zip(call.images, call.deadlines, strict=True):
                local_deadline = None
                if deadline is not None:
                    refused = backlog.refusal(deadline - now, ahead=queued)
                    if refused is not None:
                        entries.append(refused)
                        continue
                    local_deadline = local_now + (deadline - now)
                entries.append(self._batcher.enqueue(image, local_deadline))
                queued += 1
            admitted.append(entries)
        return admitted

    def _check(self, images: object, leading: tuple[int, ...]) -> None:
        """A malformed call is refused whole, before any of it can join (and break) a pass."""
        expected = (*leading, *self._embedder.input_size, 3)
        if (
            not isinstance(images, np.ndarray)
            or images.dtype != np.uint8
            or images.shape != expected
        ):
            got = (images.dtype, images.shape) if isinstance(images, np.ndarray) else type(images)
            raise ValueError(f"expected a uint8 array of shape {expected}, got {got}")
