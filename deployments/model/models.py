"""The model replicas: torch, never the HTTP edge. Two Serve deployments, one per protocol,
each owning its model and the shape of its calls, and the `ModelHost` both compose for the
rest.

- `ImageModel` (img2vec-neural): one image backbone (img2vec/models/image.py). Every call arrives
  with a group of images already decoded and resized (uint8 N x H x W x 3): from an ingress replica
  (the model client, deployments/edge/client.py), a group of a bulk request's images, or a single
  image from another Serve app composing the model (`embed()`).
- `ClipModel` (multi2vec-clip): a CLIP-style model's two towers (img2vec/models/clip/towers.py).
  Every call is one request's inputs, prepared by an ingress replica (deployments/edge/clip.py):
  images decoded, resized and cropped, texts tokenized and truncated (int32 ids each). A request is
  admitted whole or refused whole: Weaviate needs every vector of an object.

Everything that can fail because of one client's bytes has failed before here; each call's
arrays are checked once more before any of it may join a pass.

Two stages, each with one job:
- `@serve.batch` (`HostedModel.gather`, written once for both deployments) gathers the calls
  that reach this replica at the same moment, from every ingress replica, and queues their
  inputs in the batcher in one step (`ModelHost.enqueue`): one backlog estimate per
  gathering, not per call. It never waits (`batch_wait_timeout_s` 0) and returns as soon as
  the inputs are queued, so the next gathering forms while the model runs.
- The batcher (img2vec/serving/batching.py) decides what runs in each forward pass. Not
  `@serve.batch`: in Ray 2.60 it forms the next batch before it waits for the running one,
  so under load its passes were small and ran back to back (measured, docs/architecture.md).

`ModelHost` owns what is not the model's: the batcher and its metrics, queueing (the batcher
admits or refuses each request), the answer to a call (each input's vector or error, and how
far behind the model is), the batch settings applied live (`reconfigure`), and what `/meta`
and readiness ask (`describe`, `info`). Where a caller goes away, its inputs leave the
batcher's queue: awaiting their futures with `asyncio.gather`, cancelled with the call,
cancels each of them, and the batcher drops cancelled inputs before their pass
(`dropped_caller_gone`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from deployments.handoff import GroupAnswer, request_order
from deployments.metrics import ModelMetrics, keep_fresh
from deployments.settings import ClipModelSettings, ImageModelSettings
from img2vec.errors import INTERNAL_ERROR, Img2VecError, Overloaded
from img2vec.inputs.multimodal import ClipSpec
from img2vec.models.clip.registry import read_model_dir
from img2vec.models.clip.towers import IMAGE, TEXT, Input, Towers
from img2vec.models.image import Embedder, build_embedder, is_out_of_memory
from img2vec.serving.batching import Batcher, BatchSettings, Pending, WarmUp
from img2vec.serving.cpus import available_cpus

log = logging.getLogger("ray.serve")

# The batch settings a replica starts with (also each deployment's `user_config` and its
# `@serve.batch` group size) until `reconfigure` applies the config's.
DEFAULTS = BatchSettings()


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


def as_result(answer: object) -> np.ndarray | Img2VecError:
    """A vector, one of our errors, or a pass that failed for a reason of ours (e.g. out of
    memory on one image): then the item's own generic error, logged; the others keep theirs."""
    if isinstance(answer, np.ndarray | Img2VecError):
        return answer
    log.error("an image of a group failed: %r", answer)
    return Img2VecError(INTERNAL_ERROR)


# Both model deployments' Serve options: enough for a full pass running and the next one
# queued behind it; the batch settings a replica starts with until `reconfigure`.
MODEL_DEPLOYMENT: dict[str, Any] = {
    "name": "Embedder",
    "max_ongoing_requests": 64,
    "max_queued_requests": 256,
    "user_config": DEFAULTS.as_dict(),
}

# One input's admission: its place in the batcher (a future), or its request's refusal.
Admission = asyncio.Future[np.ndarray] | Overloaded


def replica_location() -> dict[str, str]:
    """Which replica, on which Ray node, answers (/meta): asked in a replica's `__init__`."""
    return {
        "replica": serve.get_replica_context().replica_id.unique_id,
        "node_id": ray.get_runtime_context().get_node_id(),
    }


class ModelHost:
    """Created in a model deployment's `__init__`, once its model is loaded, with the
    model's forward pass (`run`: a list of inputs -> their vectors), its warm-up, its
    identity (what every vector depends on; asked again after each warm-up) and where it
    runs (`replica_location()`). No Ray in here but the metrics: tests/unit/test_model_host.py
    runs it with a fake model."""

    def __init__(
        self,
        *,
        run: Callable[[Any], Any],
        warm_up: Callable[[int], WarmUp],
        identity: Callable[[], dict[str, Any]],
        location: dict[str, str],
    ) -> None:
        self._identity = identity
        self._location = location
        self._warm_up = warm_up
        self._metrics = ModelMetrics(identity())
        self._batcher: Batcher[Any, np.ndarray] = Batcher(
            run, DEFAULTS, is_out_of_memory=is_out_of_memory, observer=self._metrics
        )
        # Calls received, and the gatherings `@serve.batch` made of them: /meta reports both.
        self._calls = 0
        self._gatherings = 0
        self._fresh = asyncio.get_running_loop().create_task(keep_fresh(self._metrics.refresh))

    def enqueue(self, calls: list[list[Pending[Any]]]) -> list[list[list[Admission]]]:
        """Every request of every call gathered now, into the batcher in one step (one
        backlog estimate, `Batcher.admit`): each input's future, or each refused request's
        error."""
        self._gatherings += 1
        admissions = iter(self._batcher.admit([request for call in calls for request in call]))
        return [[next(admissions) for _ in call] for call in calls]

    async def answer(self, admissions: list[list[Admission]]) -> GroupAnswer:
        """One call's answer: each input's vector or error, in order, and the backlog."""
        self._calls += 1
        entries = [entry for request in admissions for entry in request]
        queued = [entry for entry in entries if isinstance(entry, asyncio.Future)]
        # Cancelled with the call, gather cancels every future: those inputs leave the queue.
        answered = iter(await asyncio.gather(*queued, return_exceptions=True))
        results = [
            as_result(next(answered)) if isinstance(entry, asyncio.Future) else entry
            for entry in entries
        ]
        return GroupAnswer(results, self._batcher.backlog())

    async def reconfigure(self, settings: BatchSettings) -> None:
        """The batch settings, live: new batch shapes are warmed up first, then the batcher
        takes them."""
        started = time.perf_counter()
        warmed = await self._batcher.call(lambda: self._warm_up(settings.max_batch_size))
        self._batcher.seed(warmed.seconds_per_image)
        self._batcher.reconfigure(settings)
        log.info(
            "model batching: %s (warmed up %s in %.1f s; %.1f ms per image in a full pass)",
            settings,
            warmed.sizes,
            time.perf_counter() - started,
            1e3 * warmed.seconds_per_image,
        )

    def describe(self) -> dict[str, Any]:
        """Model identity and this replica's batching, from one replica, in one answer;
        answering at all means the model is loaded."""
        return {
            **self._location,
            **self._identity(),
            "batching": self._batcher.snapshot(),
            "gathering": {"calls": self._calls, "gatherings": self._gatherings},
        }

    def info(self) -> dict[str, Any]:
        """Model identity, and the cost of an image (the ingress's estimate until its first
        answer): the cheap readiness probe."""
        return {**self._identity(), "seconds_per_image": self._batcher.seconds_per_image()}

    def close(self) -> None:
        self._batcher.close()


class HostedModel:
    """What both model deployments share, around their `ModelHost` (`self._host`, set in the
    deployment's `__init__`): the `@serve.batch` gathering of calls, the batch settings
    applied live, the model's identity and batching for /meta and readiness, and the batcher
    stopped with the replica."""

    _host: ModelHost

    async def answer(self, requests: list[Pending[Any]]) -> GroupAnswer:
        """One call's requests, gathered with the calls that arrive with it, queued, and
        answered: each input's vector or error, and the backlog."""
        return await self._host.answer(await self.gather(requests))

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=0.0)
    async def gather(self, calls: list[list[Pending[Any]]]) -> list[list[list[Admission]]]:
        """Queue the requests of every call gathered now, oldest first, each whole."""
        return self._host.enqueue(calls)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve calls it before the replica takes traffic and on every `user_config`
        change: the host warms the new shapes up and applies them, then the gathering's group
        size follows `max_batch_size`."""
        settings = BatchSettings.from_user_config(user_config)
        await self._host.reconfigure(settings)
        self.gather.set_max_batch_size(settings.max_batch_size)  # type: ignore[attr-defined]

    def describe(self) -> dict[str, Any]:
        return self._host.describe()

    def info(self) -> dict[str, Any]:
        return self._host.info()

    def __del__(self) -> None:
        host = getattr(self, "_host", None)
        if host is not None:
            host.close()


def check_images(images: object, input_size: tuple[int, int], count: int | None = None) -> None:
    """A malformed call is refused whole, before any of it can join (and break) a pass:
    uint8 images (N, H, W, 3) at the model's input size (N = `count` where given)."""
    expected = (*input_size, 3)
    if (
        not isinstance(images, np.ndarray)
        or images.dtype != np.uint8
        or images.shape[1:] != expected
        or (count is not None and len(images) != count)
    ):
        got = (images.dtype, images.shape) if isinstance(images, np.ndarray) else type(images)
        want = (count if count is not None else "N", *expected)
        raise ValueError(f"expected a uint8 array of shape {want}, got {got}")


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
            location=replica_location(),
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
        return await self.answer(requests)

    async def embed(self, image: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """One uint8 image (H, W, 3) -> its float32 vector (dim,), or its error raised: for
        other Serve apps that compose the model through its handle."""
        batch = image[np.newaxis] if isinstance(image, np.ndarray) else image
        result = (await self.embed_group(batch, [deadline])).results[0]
        if isinstance(result, Img2VecError):
            raise result
        return result


@serve.deployment(**MODEL_DEPLOYMENT)
class ClipModel(HostedModel):
    def __init__(self, settings: ClipModelSettings) -> None:
        spec = read_model_dir(settings.weights)
        threads = settings.torch_threads or default_torch_threads(settings.device)
        self._towers = Towers(
            spec, settings.device, threads, settings.engine, settings.batch_invariance
        )
        self._host = ModelHost(
            run=self._towers.run,
            warm_up=self._towers.warm_up,
            identity=self._towers.info,
            location=replica_location(),
        )

    async def embed_requests(
        self, requests: list[tuple[np.ndarray, list[np.ndarray], float | None]]
    ) -> GroupAnswer:
        """Several requests in one call, each its images (uint8 N x H x W x 3), texts (int32
        token ids each) and deadline (epoch seconds; None: none) -> every request's vectors
        in `request_order` (images first), one request after another; or, for every input
        of a request, the one error that refused it whole (Overloaded: the model is too far
        behind)."""
        pending = []
        for images, texts, deadline in requests:
            check_images(images, self._towers.input_size)
            self._check_texts(texts)
            inputs = [Input(IMAGE, i) for i in images], [Input(TEXT, t) for t in texts]
            pending.append(Pending(request_order(*inputs), deadline))
        return await self.answer(pending)

    async def embed_request(
        self, images: np.ndarray, texts: list[np.ndarray], deadline: float | None
    ) -> GroupAnswer:
        """One request (`embed_requests`): for other Serve apps that compose the model."""
        return await self.embed_requests([(images, texts, deadline)])

    def _check_texts(self, texts: object) -> None:
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
