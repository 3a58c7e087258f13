"""The img2vec-neural model deployment (`ImageModel`): one image backbone per replica.

Every call arrives with a group of images already decoded and resized (uint8 N x H x W x 3):
from an ingress replica (the model client, deployments/edge/client.py), a bulk request's
chunk, or a single image from another Serve app composing the model (`embed()`). Everything
that can fail because of one client's bytes has failed before here; each call's array is
checked once more before any of it may join a pass.

Two stages, each with one job:
- `@serve.batch` (`_gather`) gathers the calls that reach this replica at the same moment,
  from every ingress replica, and admits their images into the batcher in one step
  (`ModelHost.admit`): one backlog estimate per gathering, not per call. It never waits
  (`batch_wait_timeout_s` 0) and returns as soon as the images are queued, so the next
  gathering forms while the model runs.
- The batcher (img2vec/batching.py) decides what runs in each forward pass. Not
  `@serve.batch`: in Ray 2.60 it forms the next batch before it waits for the running one,
  so under load its passes were small and ran back to back (measured, docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from ray import serve

from deployments.handoff import GroupAnswer
from deployments.model.host import (
    DEFAULTS,
    MODEL_DEPLOYMENT,
    Admitted,
    HostedModel,
    ModelHost,
    check_images,
    default_torch_threads,
)
from deployments.settings import ImageModelSettings
from img2vec.batching import Pending
from img2vec.errors import Img2VecError
from img2vec.model import Embedder, build_embedder


@serve.deployment(**MODEL_DEPLOYMENT)
class ImageModel(HostedModel):
    def __init__(self, settings: ImageModelSettings) -> None:
        options = settings.model_dump()
        threads = options.pop("torch_threads") or default_torch_threads(settings.device)
        self._embedder: Embedder = build_embedder(**options, torch_threads=threads)
        self._host = ModelHost(
            run=self._embedder.embed,
            warm_up=self._embedder.warm_up,
            identity=self._identity,
            gather=self._gather,
        )

    def _identity(self) -> dict[str, Any]:
        return asdict(self._embedder.info())

    async def embed_group(self, images: np.ndarray, deadlines: list[float | None]) -> GroupAnswer:
        """Several images in one call (N, H, W, 3), each with its deadline (epoch seconds,
        `time.time()`: the caller's clock, so that the time a call waited in Serve's queues
        counts; None: no deadline). Each image is answered with its vector or its own error:
        `Overloaded` at once when the model is already further behind than its time left,
        or when its deadline passes before its forward pass starts."""
        check_images(images, self._embedder.input_size, len(deadlines))
        requests = [Pending([image], d) for image, d in zip(images, deadlines, strict=True)]
        return await self._host.answer(await self._gather(requests))

    async def embed(self, image: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """One uint8 image (H, W, 3) -> its float32 vector (dim,), or its error raised: for
        other Serve apps that compose the model through its handle."""
        batch = image[np.newaxis] if isinstance(image, np.ndarray) else image
        result = (await self.embed_group(batch, [deadline])).results[0]
        if isinstance(result, Img2VecError):
            raise result
        return result

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=0.0)
    async def _gather(self, calls: list[list[Pending[np.ndarray]]]) -> list[list[list[Admitted]]]:
        """Admit the images of every call gathered now, oldest first."""
        return self._host.admit(calls)
