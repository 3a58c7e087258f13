"""The model client: an ingress replica's one path to the model replicas, for both protocols.
img2vec-neural requests travel together, as one call per group (`embed`); a bulk request's images in
groups of at most GROUP_SIZE (`embed_many`); multi2vec-clip requests, each whole, travel together
the same way (`embed_request`: Weaviate sends one object per request, often one short text).
Every answer says how far behind the model is (a `Backlog`), so that the door (`enter`) can
refuse what cannot make its deadline before anything is read or decoded.

Why groups: every call into a replica costs its event loop (Serve's request bookkeeping, the
gRPC message, the pickled arguments) and the caller's, per call. One call per image made the
one model replica of a GPU node, which every request of the node reaches, the node's serial
limit (docs/benchmarks.md#where-the-cpu-goes).

How: at most GROUPS_IN_FLIGHT calls are on their way at once; a request that finds a free
slot leaves at once, alone; requests that arrive while every slot is taken wait here, and
when a call comes back, everything that waited (up to the model's pass, at most GROUP_SIZE
images) leaves as one call. Why not `@serve.batch` here: in Ray 2.60 it forms each group as soon as
anything is queued and only then waits for a slot, so under load every call carried 1-1.5
images (measured with `bench.where`). A group is not a forward pass: the model replica's
batcher still decides what runs together.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray.exceptions
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments.edge.health import ModelHealth
from deployments.handoff import GroupAnswer
from img2vec.errors import Img2VecError, NotReady, Overloaded
from img2vec.serving.overload import Backlog

# Images per call: Serve's gRPC transport between deployments (throughput-optimized mode)
# refuses messages over 4 MiB, and 16 images of 224x224x3 are 2.4 MB.
GROUP_SIZE = 16
# Calls in flight per ingress replica; what arrives meanwhile waits here and leaves as one.
GROUPS_IN_FLIGHT = 2

Result = np.ndarray | Img2VecError


@dataclass
class _Waiting:
    """One request waiting here for a call to the model."""

    pixels: np.ndarray
    deadline: float  # epoch seconds
    future: asyncio.Future[Result]


@dataclass
class _WaitingRequest:
    """One multi2vec-clip request waiting here, whole, for a call to the model."""

    images: np.ndarray
    texts: list[np.ndarray]
    deadline: float  # epoch seconds
    future: asyncio.Future[list[Result]]

    @property
    def size(self) -> int:
        return len(self.images) + len(self.texts)


class ModelClient:
    def __init__(self, model: DeploymentHandle, health: ModelHealth) -> None:
        self._model = model
        self._health = health
        self._waiting: deque[_Waiting] = deque()
        self._requests: deque[_WaitingRequest] = deque()
        # Requests let in at the door and not answered yet, wherever they are (being read,
        # decoded, waiting here, at the model): each is ahead of the next one at the door.
        # Those at the model may be in its last backlog too; counting them again is the safe
        # side, and measured better than leaving them out (the groups sent since that answer
        # are not in it): bench/overload.py's second burst was refused in 0.16 s against 2 s.
        self._inside = 0  # inputs of the requests let in at the door, not yet answered
        self._in_flight = 0
        # The model's last word on its backlog, and when it said so (monotonic).
        self._backlog = Backlog(max_pass=GROUP_SIZE)
        self._said_at = 0.0
        self.calls = 0  # calls made, and the inputs they carried: /meta reports them
        self.inputs = 0

    def refusal(self, left_s: float, ahead: int | None = None) -> Overloaded | None:
        """Overloaded when, by the model's last answer (less the time since), a request with
        `left_s` to go would not be answered in time. `ahead`: images waiting here in front
        of it (default: all that wait now). Before the model's first answer, its probe's cost
        per image stands in (ModelHealth: measured at its warm-up)."""
        backlog = self._backlog.aged(time.monotonic() - self._said_at)
        if backlog.per_image_s <= 0:
            backlog = replace(backlog, per_image_s=self._health.seconds_per_image)
        if ahead is None:
            ahead = len(self._waiting) + sum(r.size for r in self._requests)
        return backlog.refusal(left_s, ahead)

    def enter(self, deadline: float) -> None:
        """The door: a request that the model, behind everything let in before it, would
        not answer by `deadline` is refused now (Overloaded), before it is read or decoded,
        which is what makes refusing cheap and prompt; one let in counts ahead of later
        ones until it is answered. Requests still being read or decoded count too: in a
        burst they are most of what is ahead, and counting only those waiting here let a
        whole burst in, to be refused after its decoding, seconds later. A request counts
        as one input until its body says how many it carries (`carry`); each request let in
        `leave`s with its count once answered."""
        refused = self.refusal(deadline - time.time(), ahead=self._inside)
        if refused is not None:
            raise refused
        self._inside += 1

    def carry(self, more: int) -> None:
        """A request let in carries `more` inputs than it was counted for at the door."""
        self._inside += more

    def leave(self, inputs: int = 1) -> None:
        self._inside -= inputs

    async def embed(self, pixels: np.ndarray, deadline: float) -> np.ndarray:
        """One image's vector by `deadline` (epoch seconds), or its error raised. Cancelled
        (the client went away) before its group leaves, it is left out of the group."""
        refused = self.refusal(deadline - time.time())
        if refused is not None:
            raise refused
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(pixels, deadline, future))
        self._pump()
        result = await future
        if isinstance(result, Img2VecError):
            raise result
        return result

    async def embed_many(self, pixels: list[np.ndarray], deadline: float) -> list[Result]:
        """Images already gathered (a bulk request's): in groups of at most GROUP_SIZE, one
        call each, all at once, outside the slots that single requests share. A group the
        model refuses fails only its own images."""
        groups = [pixels[i : i + GROUP_SIZE] for i in range(0, len(pixels), GROUP_SIZE)]
        answers = await asyncio.gather(
            *(self._call(group, [deadline] * len(group)) for group in groups)
        )
        return [result for answer in answers for result in answer]

    def _shed(self) -> None:
        """Answer now, with Overloaded, every waiting request that the model's latest word
        says cannot make its deadline: it would otherwise wait here until the deadline."""
        if not self._waiting or self._backlog.per_image_s <= 0:
            return
        now = time.time()
        kept: deque[_Waiting] = deque()
        for waiting in self._waiting:
            if waiting.future.done():  # cancelled: its client has gone
                continue
            refused = self.refusal(waiting.deadline - now, ahead=len(kept))
            if refused is not None:
                waiting.future.set_result(refused)
            else:
                kept.append(waiting)
        self._waiting = kept

    def group_size(self) -> int:
        """Images per call: the model's pass (by its last answer), at most GROUP_SIZE."""
        return max(1, min(GROUP_SIZE, self._backlog.max_pass))

    def _pump(self) -> None:
        """Start calls while there are free slots and requests waiting."""
        group_size = self.group_size()
        while self._waiting and self._in_flight < GROUPS_IN_FLIGHT:
            group: list[_Waiting] = []
            while self._waiting and len(group) < group_size:
                waiting = self._waiting.popleft()
                if not waiting.future.done():  # cancelled: its client has gone
                    group.append(waiting)
            if group:
                self._in_flight += 1
                asyncio.get_running_loop().create_task(self._send(group))
        while self._requests and self._in_flight < GROUPS_IN_FLIGHT:
            requests = self._next_requests(group_size)
            if requests:
                self._in_flight += 1
                asyncio.get_running_loop().create_task(self._send_requests(requests))

    def _next_requests(self, limit: int) -> list[_WaitingRequest]:
        """The waiting multi2vec-clip requests for one call, oldest first, each whole: up to
        `limit` inputs and GROUP_SIZE images (one larger request goes alone)."""
        group: list[_WaitingRequest] = []
        inputs = images = 0
        while self._requests:
            request = self._requests[0]
            if request.future.done():  # cancelled: its client has gone
                self._requests.popleft()
                continue
            if group and (
                inputs + request.size > limit or images + len(request.images) > GROUP_SIZE
            ):
                break
            group.append(self._requests.popleft())
            inputs += request.size
            images += len(request.images)
        return group

    async def _send(self, group: list[_Waiting]) -> None:
        call = self._call([w.pixels for w in group], [w.deadline for w in group])
        await self._settle([w.future for w in group], call)

    async def _send_requests(self, group: list[_WaitingRequest]) -> None:
        await self._settle([r.future for r in group], self._call_requests(group))

    async def _settle(self, futures: list[asyncio.Future[Any]], call: Awaitable[list[Any]]) -> None:
        """A call's answers to the requests that sent it, one each, in order; its slot freed."""
        try:
            results = await call
        except BaseException as exc:  # our own fault (or cancellation): every request gets it
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            for future, result in zip(futures, results, strict=True):
                if not future.done():
                    future.set_result(result)
        finally:
            self._in_flight -= 1
            self._shed()
            self._pump()

    async def embed_request(
        self, images: np.ndarray, texts: list[np.ndarray], deadline: float
    ) -> list[np.ndarray]:
        """One multi2vec-clip request's vectors, in `request_order`, in a call with the
        requests that waited beside it; the first error raised (the model admits or refuses
        a request whole)."""
        refused = self.refusal(deadline - time.time())
        if refused is not None:
            raise refused
        future: asyncio.Future[list[Result]] = asyncio.get_running_loop().create_future()
        self._requests.append(_WaitingRequest(images, texts, deadline, future))
        self._pump()
        results = await future
        vectors: list[np.ndarray] = []
        for result in results:
            if isinstance(result, Img2VecError):
                raise result
            vectors.append(result)
        return vectors

    async def _call_requests(self, group: list[_WaitingRequest]) -> list[list[Result]]:
        """One call for several multi2vec-clip requests; each request's results, in order."""
        call = self._model.embed_requests.remote([(r.images, r.texts, r.deadline) for r in group])
        results = iter(await self._answer(call, sum(r.size for r in group)))
        return [[next(results) for _ in range(request.size)] for request in group]

    async def _call(self, pixels: list[np.ndarray], deadlines: list[float]) -> list[Result]:
        return await self._answer(
            self._model.embed_group.remote(np.stack(pixels), deadlines), len(pixels)
        )

    async def _answer(self, call: Awaitable[GroupAnswer], n: int) -> list[Result]:
        """A call's results, its backlog kept for the door; a failed call (a replica
        restarting, Serve's queue full) is each input's error, or raised if ours."""
        self.calls += 1
        self.inputs += n
        try:
            answer = await call
        except Exception as exc:
            err = model_error(exc)
            if err is None:
                raise
            return [err] * n
        # A group larger than the model's pass would be answered only after two passes:
        # `_pump` keeps groups within `max_pass`.
        self._backlog, self._said_at = answer.backlog, time.monotonic()
        self._health.answered()
        return answer.results


def model_error(exc: BaseException) -> Img2VecError | None:
    """What a failed call to a model replica means for the client, or None if it is our
    fault. Errors raised in the model replica arrive wrapped in RayTaskError."""
    # First: a RayTaskError wrapping one of ours is also an instance of it (Ray derives a
    # class from both), but without its attributes; the original is its `cause`.
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, Img2VecError):
        return exc.cause
    if isinstance(exc, Img2VecError):
        return exc
    if isinstance(exc, BackPressureError):
        return Overloaded("the model is at capacity; retry later")
    if isinstance(exc, ray.exceptions.RayActorError | ray.exceptions.ActorUnavailableError):
        return NotReady("a model replica is restarting; retry later")
    return None
