"""The edge: one `Edge` per ingress replica, whatever the protocol. It owns what every request
shares, so that a protocol's route reads top-down and owns only its wire format:

    async with self._edge.exchange(route, request) as ex:   # drain, deadline, errors -> JSON
        body = await ex.read(limit)                          # door, byte budget, bounded read
        req = parse_json(TheProtocolsSchema, body)           # 422 saying what, no echo
        pixels = await ex.decode(prepare, req.image)         # the decode pool
        vector = await ex.embed(pixels)                      # the model client
        ex.answer(encoded)
    return ex.response

What the `Edge` holds: the byte budget (`ByteBudget`, `read_body`), the deadline
(`request_timeout_s`), the door (early refusal, deployments/edge/client.py), drain (graceful
stop), the model's health (readiness), the metrics and the access-log line
(deployments/metrics.py), the decode pool, and the model client; and the
`/.well-known/live|ready` and `/meta` answers both protocols give. This module also holds the
one table from error to status (`STATUS`) and the JSON error body every answer but a vector
is.

No torch here (ingress replicas scale with request rate, docs/benchmarks.md#ingress).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Histogram

import img2vec
from deployments.edge.client import ModelClient, Result, model_error
from deployments.edge.health import Drain, ModelHealth
from deployments.edge.proxy import RETRY_AFTER_S
from deployments.metrics import IngressMetrics, Timing, keep_fresh
from deployments.settings import IngressSettings
from img2vec import errors
from img2vec.errors import (
    INTERNAL_ERROR,
    ImageTooLarge,
    Img2VecError,
    InvalidRequest,
    NotReady,
    Overloaded,
)
from img2vec.serving.cpus import as_decode_thread

log = logging.getLogger("ray.serve")

T = TypeVar("T")
Schema = TypeVar("Schema", bound=BaseModel)

# The one table from what went wrong to what the client is told.
STATUS: dict[type[Img2VecError], int] = {
    errors.InvalidRequest: 422,
    errors.InvalidImage: 400,
    errors.ImageTooLarge: 413,
    errors.Overloaded: 503,
    errors.NotReady: 503,
}


class Edge:
    """Everything one ingress replica's requests share. Created in the ingress's
    `__init__`, inside the replica (its metrics and tasks need Serve's context)."""

    def __init__(self, model: DeploymentHandle, settings: IngressSettings, replica: str) -> None:
        self.settings = settings
        self.metrics = IngressMetrics()
        self.budget = ByteBudget(settings.max_inflight_bytes)
        self.health = ModelHealth(settings.unready_after_s)
        self.client = ModelClient(model, self.health)
        self.drain = Drain(replica, self.count_inflight)
        self.inflight = 0
        self._model = model
        self._pool = ThreadPoolExecutor(
            settings.decode_workers, thread_name_prefix="decode", initializer=as_decode_thread
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.health.watch(model)),
            loop.create_task(self.drain.watch()),
            loop.create_task(keep_fresh(self._refresh_metrics)),
        ]

    def count_inflight(self) -> int:
        return self.inflight

    async def run_off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in this replica's decode pool: CPU work (decoding, resizing,
        tokenizing) off the event loop, at a lower priority than it."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _refresh_metrics(self) -> None:
        self.metrics.refresh(self.budget.held)

    @contextlib.asynccontextmanager
    async def exchange(
        self, route: str, request: Request, *, door: bool = False
    ) -> AsyncIterator[Exchange]:
        """One request, from arrival to answer: bounded in time (`request_timeout_s`) and in
        bytes held; whatever goes wrong inside is made its JSON answer (`ex.response`); then
        counted and logged. `door`: this route's requests pass the early refusal
        (`ModelClient.enter`) when their body is read."""
        ex = Exchange(self, request, door)
        timeout = self.settings.request_timeout_s
        self.inflight += 1
        try:
            # The budget covers the request until it is answered, not only until decoded:
            # Serve's receive path keeps its own copies of the body for the request's life
            # (measured: ~3x the body per waiting request), so only this bounds memory.
            async with asyncio.timeout(timeout):
                with Held(self.budget) as ex.held:
                    yield ex
        except TimeoutError:
            ex.response = error_response(Overloaded(f"not answered within {timeout:g} s; retry"))
        except Img2VecError as exc:
            ex.response = error_response(exc)
        except Exception:
            log.exception("%s failed", route)
            ex.response = json_error(INTERNAL_ERROR, 500)
        finally:
            if ex.inside:
                self.client.leave(ex.inputs)
            self.inflight -= 1
            self.metrics.inflight_bytes.set(self.budget.held)
        self.metrics.account(route, ex.response.status_code, ex.timing, self.settings.access_log)

    # -- what both protocols answer besides vectors ------------------------------------

    def ready(self, *, loading: bool = False) -> Response:
        """204 while the model answers; a JSON 503 saying why not (loading, stuck, draining)."""
        if self.drain.unready:
            return error_response(NotReady("the service is shutting down"))
        if loading or self.health.info is None:
            return error_response(NotReady("model is loading"))
        if not self.health.ready:
            return error_response(
                NotReady(f"the model has not answered for over {self.health.unready_after_s} s")
            )
        return Response(status_code=204)

    async def meta(self, protocol: str, limits: dict[str, Any]) -> Response:
        """/meta: the model's identity (what every stored vector depends on) and batching,
        from the one model replica that answered (no answer within 5 s: 503; a replica
        restarting: 503; our fault: 500, logged), with this replica's limits and calls."""
        try:
            described: dict[str, Any] = await asyncio.wait_for(self._model.describe.remote(), 5)
        except TimeoutError:
            return error_response(Overloaded("the model did not answer within 5 s"))
        except Exception as exc:
            err = model_error(exc)
            if err is None:
                log.error("/meta failed: %r", exc)
                return json_error(INTERNAL_ERROR, 500)
            return error_response(err)
        # This ingress replica's calls to the model: each carries a group of inputs.
        calls = {"calls_to_model": self.client.calls, "inputs_to_model": self.client.inputs}
        return JSONResponse(
            {
                "version": img2vec.__version__,
                "protocol": protocol,
                **described,
                "limits": limits,
                "ingress": calls,
            }
        )


class Exchange:
    """One request's way through the edge; each step is one method, called in order by the
    route. Its `response` is the answer, set by `answer()` or by the error that ended it."""

    def __init__(self, edge: Edge, request: Request, door: bool) -> None:
        self.timing = Timing()
        self.deadline = time.time() + edge.settings.request_timeout_s  # epoch seconds
        self.held: Held
        self.response: Response = json_error(INTERNAL_ERROR, 500)  # until answered
        self.inside = False  # let in at the door, and counted there until answered
        self.inputs = 1  # what the door counts it as: one input until `carries` says more
        self._door = door
        self._edge = edge
        self._request = request
        self._first_sent: float | None = None

    async def read(
        self,
        limit: int,
        setting: str = "max_body_bytes",
        expected: str = '{"id": ..., "image": ...}',
    ) -> bytes:
        """The body, once the request is let in: refused while draining (503), refused at
        the door when the model cannot answer it in time (503, before anything is read),
        its declared size taken from the byte budget (503 if it does not fit, 413 past
        `limit`), then read, bounded."""
        edge = self._edge
        if edge.drain.refusing:
            raise NotReady("the service is shutting down; retry elsewhere")
        if self._door and not self.inside:
            edge.client.enter(self.deadline)
            self.inside = True
        body = await read_body(self._request, limit, self.held, setting, expected)
        edge.metrics.inflight_bytes.set(edge.budget.held)
        self.timing.nbytes = len(body)
        return body

    def carries(self, inputs: int) -> None:
        """This request, once parsed, carries `inputs` inputs: the door counts each of them
        ahead of later requests (a /vectorize request may carry many)."""
        if self.inside and inputs > self.inputs:
            self._edge.client.carry(inputs - self.inputs)
            self.inputs = inputs

    async def decode(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (an image's decoding) in the decode pool (CPU work off the event
        loop), its time added to this request's and recorded in the decode metric."""
        result, took = await self._off_loop(self._edge.metrics.decode, fn, *args)
        self.timing.decode_s += took
        return result

    async def tokenize(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (a request's texts tokenized) in the same pool, its time recorded
        apart from decoding: in its own metric and the access line's `tokenize_ms`."""
        result, took = await self._off_loop(self._edge.metrics.tokenize, fn, *args)
        self.timing.tokenize_s += took
        return result

    async def _off_loop(
        self, metric: Histogram, fn: Callable[..., T], *args: Any
    ) -> tuple[T, float]:
        """`fn(*args)` in the decode pool, and the seconds it took, recorded in `metric`."""
        started = time.perf_counter()
        result = await self._edge.run_off_loop(fn, *args)
        took = time.perf_counter() - started
        metric.observe(took)
        return result, took

    async def embed(self, pixels: np.ndarray) -> np.ndarray:
        """One image's vector from the model, in a group with other requests' images."""
        started = time.perf_counter()
        try:
            return await self._edge.client.embed(pixels, self.deadline)
        finally:
            self.timing.model_s += time.perf_counter() - started

    async def embed_many(self, pixels: list[np.ndarray]) -> list[Result]:
        """Several images of this request: each its vector or its own error. The model's
        time runs from the first images sent (decoding and the model overlap)."""
        if self._first_sent is None:
            self._first_sent = time.perf_counter()
        results = await self._edge.client.embed_many(pixels, self.deadline)
        self.timing.model_s = time.perf_counter() - self._first_sent
        return results

    async def embed_request(self, images: np.ndarray, texts: list[np.ndarray]) -> list[np.ndarray]:
        """A multi2vec-clip request's vectors, in `request_order`, in one call."""
        started = time.perf_counter()
        try:
            return await self._edge.client.embed_request(images, texts, self.deadline)
        finally:
            self.timing.model_s += time.perf_counter() - started

    def answer(self, body: bytes) -> None:
        self.response = Response(body, media_type="application/json")


def json_error(message: str, status: int) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def status_of(exc: Img2VecError) -> int:
    return next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 500)


def error_response(exc: Img2VecError) -> JSONResponse:
    return json_error(exc.message, status_of(exc))


def parse_json(schema: type[Schema], body: bytes) -> Schema:
    """A body validated against a protocol's schema, parsed from bytes ourselves (Weaviate
    sends no Content-Type): anything else is a 422 saying what, without echoing the input.
    A body of the wrong JSON type is told the schema's `SHAPE` (each protocol its own)."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        shape = getattr(schema, "SHAPE", "a JSON object")
        raise InvalidRequest(describe_validation(exc.errors(), shape)) from None


def describe_validation(problems: Any, shape: str = "a JSON object") -> str:
    """pydantic/FastAPI error list -> one readable sentence, without echoing input; `shape`:
    what the body must be, said when it is not even that."""
    parts = []
    for err in problems:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            parts.append(
                f"body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
            )
        elif err.get("type") == "model_type":
            parts.append(f"body must be {shape}")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


class ByteBudget:
    """The request bytes one ingress replica may hold at once: the bodies of every request
    from its first byte read until it is answered. Past it a request is answered 503 at
    once, so memory stays bounded however many clients send large images (and however long
    the model takes). Used from the event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> None:
        if self.held + n > self.limit:
            raise Overloaded(
                f"the service holds {self.held} bytes of requests (max_inflight_bytes is "
                f"{self.limit}); retry later"
            )
        self.held += n

    def give(self, n: int) -> None:
        self.held -= n


class Held:
    """What one request took from the budget, given back when the request ends."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.n = 0

    def take(self, n: int) -> None:
        self.budget.take(n)
        self.n += n

    def __enter__(self) -> Held:
        return self

    def __exit__(self, *exc: object) -> None:
        self.budget.give(self.n)


async def read_body(
    request: Request,
    limit: int,
    held: Held,
    setting: str = "max_body_bytes",
    expected: str = '{"id": ..., "image": ...}',
) -> bytes:
    """Read the body, refusing it as soon as it is known to exceed `limit`.

    A declared Content-Length is taken from the budget before anything is read, and a
    refusal happens before this coroutine first waits: Serve's receive task, which pulls
    the body into this process, has then not run yet, so a refused body costs (almost)
    nothing here. A chunked body is taken from the budget as it arrives."""
    declared = request.headers.get("content-length")
    taken = 0
    if declared is not None and declared.isdigit():
        if int(declared) > limit:
            raise ImageTooLarge(
                f"request body is {declared} bytes; the limit is {limit} bytes ({setting})"
            )
        taken = int(declared)
        held.take(taken)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ImageTooLarge(f"request body is over the limit of {limit} bytes ({setting})")
        if size > taken:
            held.take(size - taken)
            taken = size
        chunks.append(chunk)
    if not size:
        raise InvalidRequest(f"request body is empty; expected JSON {expected}")
    return b"".join(chunks)
