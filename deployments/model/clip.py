"""The multi2vec-clip model replica: a CLIP-style model's two towers (img2vec/towers.py)
behind the one batcher, so that the images and texts of concurrent requests share passes.

Every call is one request's inputs, prepared by an ingress replica (deployments/clip.py):
images decoded, resized and cropped (uint8 N x H x W x 3), texts tokenized and truncated
(int32 ids each). As on the image path (deployments/embedder.py), `@serve.batch` (`_gather`)
gathers the calls that arrive together and admits their inputs into the batcher against the
request's deadline; the batcher forms the passes. A request is admitted whole or refused
whole: Weaviate needs every vector of an object.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, NamedTuple

import numpy as np
from ray import serve

from deployments.handoff import GroupAnswer
from deployments.replica import DEFAULTS, ModelReplica, as_result, default_torch_threads
from deployments.settings import ClipModelSettings
from img2vec.errors import Img2VecError
from img2vec.multimodal import ClipSpec
from img2vec.towers import IMAGE, TEXT, Input, Towers


class _Call(NamedTuple):
    """One request's inputs, images first, and its deadline (epoch seconds)."""

    inputs: list[Input]
    deadline: float | None


@serve.deployment(
    name="Embedder",
    max_ongoing_requests=64,
    max_queued_requests=256,
    user_config=DEFAULTS.as_dict(),
)
class ClipEmbedderDeployment(ModelReplica):
    def __init__(self, settings: ClipModelSettings) -> None:
        spec = ClipSpec.from_dir(settings.weights)
        threads = settings.torch_threads or default_torch_threads(settings.device)
        self._towers = Towers(
            spec, settings.device, threads, settings.graph, settings.batch_invariance
        )
        self._start(self._towers.run, self._towers.warm_up)

    def _identity(self) -> dict[str, Any]:
        return self._towers.info()

    async def vectorize(
        self, images: np.ndarray, texts: list[np.ndarray], deadline: float | None
    ) -> GroupAnswer:
        """One request's images (uint8 N x H x W x 3) and texts (int32 token ids each) ->
        their vectors, images first then texts, in input order; or, for every input, the
        one error that refused the request (Overloaded: the model is too far behind)."""
        self._check(images, texts)
        self._calls += 1
        inputs = [Input(IMAGE, image) for image in images] + [Input(TEXT, t) for t in texts]
        admitted = await self._gather(_Call(inputs, deadline))
        if isinstance(admitted, Img2VecError):
            return GroupAnswer([admitted] * len(inputs), self._batcher.backlog())
        # Cancelled with the call, gather cancels every future: those inputs leave the queue.
        answered = await asyncio.gather(*admitted, return_exceptions=True)
        return GroupAnswer([as_result(a) for a in answered], self._batcher.backlog())

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=0.0)
    async def _gather(
        self, calls: list[_Call]
    ) -> list[list[asyncio.Future[np.ndarray]] | Img2VecError]:
        """Admit every request gathered now, oldest first, whole: into the batcher's queue
        if its last input can still be answered in time, else refused."""
        self._gatherings += 1
        backlog = self._batcher.backlog()
        now, local_now = time.time(), time.monotonic()
        queued = 0
        admitted: list[list[asyncio.Future[np.ndarray]] | Img2VecError] = []
        for call in calls:
            local_deadline = None
            if call.deadline is not None:
                ahead = queued + max(0, len(call.inputs) - 1)
                refused = backlog.refusal(call.deadline - now, ahead=ahead)
                if refused is not None:
                    admitted.append(refused)
                    continue
                local_deadline = local_now + (call.deadline - now)
            admitted.append([self._batcher.enqueue(x, local_deadline) for x in call.inputs])
            queued += len(call.inputs)
        return admitted

    def _check(self, images: object, texts: object) -> None:
        """A malformed call is refused whole, before any of it can join (and break) a pass."""
        expected = (*self._towers.input_size, 3)
        if (
            not isinstance(images, np.ndarray)
            or images.dtype != np.uint8
            or images.shape[1:] != expected
        ):
            got = (images.dtype, images.shape) if isinstance(images, np.ndarray) else type(images)
            raise ValueError(f"expected uint8 images of shape (N, {expected}), got {got}")
        context = self._towers.spec.context
        for t in texts if isinstance(texts, list) else [None]:
            if (
                not isinstance(t, np.ndarray)
                or t.dtype != np.int32
                or t.ndim != 1
                or not 0 < len(t) <= context
            ):
                raise ValueError(f"expected int32 token ids of 1 to {context} tokens per text")

    def inputs(self) -> ClipSpec:
        """How inputs are prepared, tokenizer included: what an ingress replica needs."""
        return self._towers.spec
