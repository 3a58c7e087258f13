"""What both model deployments share: `EmbedderDeployment` (img2vec-neural,
deployments/embedder.py) and `ClipEmbedderDeployment` (multi2vec-clip, deployments/clip_model.py).

Each owns how its calls are checked and admitted (its `@serve.batch` `_gather`: per image for
img2vec-neural, a whole request for multi2vec-clip). This base owns the rest: the batcher and
its metrics, the batch settings applied live (`reconfigure`), what `/meta` and readiness ask
(`describe`, `info`), the torch threads a replica runs, and how an admitted input's answer
becomes a result.

Where a caller goes away, its inputs leave the batcher's queue: awaiting their futures with
`asyncio.gather`, cancelled with the call, cancels each of them, and the batcher drops
cancelled inputs before their pass (`dropped_caller_gone`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import ray
import torch
from ray import serve

from deployments.metrics import EmbedderMetrics, keep_fresh
from img2vec.batching import Batcher, BatchSettings, WarmUp
from img2vec.cpus import available_cpus
from img2vec.errors import INTERNAL_ERROR, Img2VecError
from img2vec.model import is_out_of_memory

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


class ModelReplica:
    """A model replica's shared half. A deployment calls `_start` from its `__init__` once
    its model is loaded, defines `_identity` (what every vector depends on) and a
    `@serve.batch` method `_gather`, whose group size follows `max_batch_size`."""

    _gather: Any

    def _start(self, run: Callable[[Any], Any], warm_up: Callable[[int], WarmUp]) -> None:
        self._metrics = EmbedderMetrics(self._identity())
        self._batcher: Batcher[Any, np.ndarray] = Batcher(
            run, DEFAULTS, is_out_of_memory=is_out_of_memory, observer=self._metrics
        )
        self._warm_up = warm_up
        # Calls received, and the gatherings `@serve.batch` made of them: /meta reports both.
        self._calls = 0
        self._gatherings = 0
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._fresh = asyncio.get_running_loop().create_task(keep_fresh(self._metrics.refresh))

    def _identity(self) -> dict[str, Any]:
        raise NotImplementedError

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """The batch settings, live: Serve calls this before the replica takes traffic and
        on every `user_config` change. New batch shapes are warmed up first."""
        settings = BatchSettings.from_user_config(user_config)
        started = time.perf_counter()
        warmed = await self._batcher.call(lambda: self._warm_up(settings.max_batch_size))
        self._batcher.seed(warmed.seconds_per_image)
        # @serve.batch only gathers calls; its group size follows the one setting.
        self._gather.set_max_batch_size(settings.max_batch_size)
        self._batcher.reconfigure(settings)
        log.info(
            "embedder batching: %s (warmed up %s in %.1f s; %.1f ms per image in a full pass)",
            settings,
            warmed.sizes,
            time.perf_counter() - started,
            1e3 * warmed.seconds_per_image,
        )

    def describe(self) -> dict[str, Any]:
        """Model identity and this replica's batching, from one replica, in one answer;
        answering at all means the model is loaded."""
        return {
            "replica": self._replica,
            "node_id": ray.get_runtime_context().get_node_id(),
            **self._identity(),
            "batching": self._batcher.snapshot(),
            "gathering": {"calls": self._calls, "gatherings": self._gatherings},
        }

    def info(self) -> dict[str, Any]:
        """Model identity, and the cost of an image (the ingress's estimate until its first
        answer): the cheap readiness probe."""
        return {**self._identity(), "seconds_per_image": self._batcher.seconds_per_image()}

    def __del__(self) -> None:
        batcher = getattr(self, "_batcher", None)
        if batcher is not None:
            batcher.close()
