"""The ingress's one path to the model: the requests an ingress replica holds travel to the
Embedder together, as one call per group, and the model's answers say how far behind it is,
so that the ingress can refuse what cannot make its deadline before decoding anything.

Why groups: every call into a replica costs its event loop (Serve's request bookkeeping, the
gRPC message, the pickled arguments) and the caller's, per call. One call per image made the
one model replica of a GPU node, which every request of the node reaches, the node's serial
limit (docs/benchmarks.md#where-the-cpu-goes).

How: at most GROUPS_IN_FLIGHT calls are on their way at once; a request that finds a free
slot leaves at once, alone; requests that arrive while every slot is taken wait here, and
when a call comes back, everything that waited (up to the model's pass, at most GROUP_SIZE)
leaves as one call. Why not `@serve.batch` at the caller: in Ray 2.60 it forms each group as
soon as anything is queued and only then waits for a slot, so under load every call carried
1-1.5 images (measured with `bench.where`), the same reason the model replica has its own
batcher (img2vec/batching.py). A group is not a forward pass: that batcher still decides what
runs together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from ray.serve.handle import DeploymentHandle

from deployments.http import embedder_error
from img2vec.errors import Img2VecError, Overloaded

# Images per call: Serve's gRPC transport between deployments (throughput-optimized mode)
# refuses messages over 4 MiB, and 16 images of 224x224x3 are 2.4 MB.
GROUP_SIZE = 16
# Calls in flight per ingress replica; what arrives meanwhile waits here and leaves as one.
GROUPS_IN_FLIGHT = 2


class ModelLink:
    def __init__(self, embedder: DeploymentHandle, on_answer: Callable[[], None]) -> None:
        self._embedder = embedder
        self._on_answer = on_answer
        self._waiting: deque[tuple[np.ndarray, float, asyncio.Future[object]]] = deque()
        self._in_flight = 0
        self._group_size = GROUP_SIZE
        # The model's last word on its backlog: seconds behind, when it said so (monotonic),
        # and its recent cost per image.
        self._behind_s = 0.0
        self._said_at = 0.0
        self._per_image_s = 0.0
        self.groups = 0  # calls made, and the images they carried: /meta reports them
        self.images = 0

    def behind_s(self, ahead: int = 0) -> float:
        """How far behind the model was at its last answer, less the time since, plus the
        `ahead` images waiting here in front of a request."""
        model = max(0.0, self._behind_s - (time.monotonic() - self._said_at))
        return model + ahead * self._per_image_s

    def refusal(self, left_s: float, ahead: int | None = None) -> Overloaded | None:
        """Overloaded when the model is already further behind than `left_s`: said before
        the request is read or decoded, which is what makes refusing cheaper than serving.
        `ahead`: images waiting here in front of it (default: all that wait now)."""
        behind = self.behind_s(len(self._waiting) if ahead is None else ahead)
        if behind > left_s:
            return Overloaded(
                f"the model is {behind:.1f} s behind and this request has {left_s:.1f} s left;"
                " retry later"
            )
        return None

    async def embed(self, pixels: np.ndarray, deadline: float) -> np.ndarray:
        """One image's vector by `deadline` (epoch seconds), or its error raised. Cancelled
        (the client went away) before its group leaves, it is left out of the group."""
        refused = self.refusal(deadline - time.time())
        if refused is not None:
            raise refused
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiting.append((pixels, deadline, future))
        self._pump()
        result = await future
        if isinstance(result, Img2VecError):
            raise result
        assert isinstance(result, np.ndarray)
        return result

    async def embed_chunk(
        self, pixels: list[np.ndarray], deadline: float
    ) -> list[np.ndarray | Img2VecError]:
        """Images already gathered (a bulk request's chunk of at most GROUP_SIZE): one call,
        outside the slots that single requests share."""
        return await self._call(pixels, [deadline] * len(pixels))

    def _shed(self) -> None:
        """Answer now, with Overloaded, every waiting request that the model's latest word
        says cannot make its deadline: it would otherwise wait here until the deadline."""
        if not self._waiting or self._per_image_s <= 0:
            return
        now = time.time()
        kept: deque[tuple[np.ndarray, float, asyncio.Future[object]]] = deque()
        for item in self._waiting:
            if item[2].done():  # cancelled: its client has gone
                continue
            refused = self.refusal(item[1] - now, ahead=len(kept))
            if refused is not None:
                item[2].set_result(refused)
            else:
                kept.append(item)
        self._waiting = kept

    def _pump(self) -> None:
        """Start calls while there are free slots and requests waiting."""
        while self._waiting and self._in_flight < GROUPS_IN_FLIGHT:
            group = []
            while self._waiting and len(group) < self._group_size:
                item = self._waiting.popleft()
                if not item[2].done():  # cancelled: its client has gone
                    group.append(item)
            if group:
                self._in_flight += 1
                asyncio.get_running_loop().create_task(self._send(group))

    async def _send(self, group: list[tuple[np.ndarray, float, asyncio.Future[object]]]) -> None:
        try:
            results = await self._call([g[0] for g in group], [g[1] for g in group])
        except BaseException as exc:  # our own fault (or cancellation): every item gets it
            for _, _, future in group:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, _, future), result in zip(group, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._shed()
            self._pump()

    async def _call(
        self, pixels: list[np.ndarray], deadlines: list[float]
    ) -> list[np.ndarray | Img2VecError]:
        self.groups += 1
        self.images += len(pixels)
        try:
            results, behind_s, per_image_s, max_pass = await self._embedder.embed_group.remote(
                np.stack(pixels), deadlines
            )
        except Exception as exc:
            err = embedder_error(exc)
            if err is None:
                raise
            return [err] * len(pixels)
        self._behind_s, self._said_at = behind_s, time.monotonic()
        self._per_image_s = per_image_s
        # A group larger than the model's pass would be answered only after two passes.
        self._group_size = max(1, min(GROUP_SIZE, max_pass))
        self._on_answer()
        return results
