"""The HTTP edge: Weaviate's img2vec-neural API on FastAPI, as a Serve ingress.

Path of a request: take its declared size from the byte budget -> read the body (bounded) ->
validate the JSON -> decode and resize the image in a thread pool (CPU) -> one call to the
Embedder deployment, which batches -> JSON response, all within `request_timeout_s`. Errors
become `{"error": "..."}` here and only here (`deployments/http.py`).

This module must not import torch: ingress replicas scale with request rate, and each
would pay ~3 s and ~700 MB for it (docs/benchmarks.md#ingress). (No `from __future__ import
annotations` either: Serve's ingress re-creates the route methods, and FastAPI must see
`Request` as a class, not a string, to inject it. For the same reason every module-level
helper the class uses is defined above it.)
"""

import asyncio
import contextlib
import logging
import os
import threading
import time
import warnings
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

import img2vec
from deployments.bulk import BulkItem, bulk_body, parse_bulk
from deployments.health import Drain, EmbedderHealth
from deployments.http import (
    BULK_ROUTE,
    INTERNAL_ERROR,
    VECTORS_ROUTE,
    ByteBudget,
    ErrorResponse,
    Held,
    VectorRequest,
    app,
    describe_validation,
    embedder_error,
    error_response,
    json_error,
    read_body,
)
from deployments.link import GROUP_SIZE, ModelLink
from deployments.metrics import IngressMetrics, keep_fresh
from img2vec.cpus import DECODE_THREAD, name_this_thread
from img2vec.decoding import ImageLimits, decode_image
from img2vec.errors import Img2VecError, InvalidRequest, NotReady, Overloaded
from img2vec.preprocessing import Preprocess, get_preset

log = logging.getLogger("ray.serve")
# A child of Serve's logger: its lines go where Serve writes the replica's log (file, stderr or
# JSON, as its logging_config says).
access = logging.getLogger("ray.serve.img2vec.access")


class IngressOptions(BaseModel):
    """Structure of the ingress, fixed for the replica's life (from the builder's args)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preprocess: str
    max_body_bytes: int = Field(gt=0)
    max_inflight_bytes: int = Field(gt=0)
    max_image_bytes: int = Field(gt=0)
    max_image_pixels: int = Field(gt=0)
    max_id_length: int = Field(gt=0)
    decode_workers: int = Field(gt=0)
    exif_transpose: bool = False
    jpeg_draft: bool = False
    # Readiness turns 503 when the Embedder has not answered anything for this long.
    unready_after_s: float = Field(10.0, gt=0)
    # Every request is answered within this (a 503 if the model could not make it).
    request_timeout_s: float = Field(20.0, gt=0)
    access_log: bool = True
    max_bulk_items: int = Field(256, gt=0)
    max_bulk_bytes: int = Field(64 * 1024 * 1024, gt=0)


def _lower_priority() -> None:
    """Decode threads run at a lower CPU priority than the rest of the node: where the
    model shares the CPU with them, its forward pass (whose threads wait on each other at
    every op) should not be the one that gets preempted. Decoding still fills every idle
    cycle. Linux applies nice values per thread; elsewhere this is a no-op. Named, so that
    `bench.where` counts its CPU as decoding."""
    name_this_thread(DECODE_THREAD)
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 4))


class _Timing:
    """Where one request's time went, for its access-log line."""

    __slots__ = ("decode_s", "id", "model_s", "nbytes", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.decode_s = self.model_s = 0.0
        self.id: str | None = None
        self.nbytes = 0


def _loggable(id_: str | None, limit: int = 100) -> str:
    """The client's id in a log line: quoted, escaped, cut short (it is theirs, not ours)."""
    if id_ is None:
        return "-"
    text = repr(id_)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@serve.deployment(name="Ingress", max_ongoing_requests=512)
@serve.ingress(app)
class Ingress:
    def __init__(self, embedder: DeploymentHandle, options: IngressOptions) -> None:
        # Malformed client images make Pillow warn (corrupt EXIF, odd TIFF tags); they are
        # answered with a 400 already, and must not flood this process's log.
        warnings.filterwarnings("ignore", module="PIL")
        self._embedder = embedder
        self._options = options
        self._preset: Preprocess = get_preset(options.preprocess)
        self._limits = ImageLimits(
            max_bytes=options.max_image_bytes, max_pixels=options.max_image_pixels
        )
        self._pool = ThreadPoolExecutor(
            options.decode_workers, thread_name_prefix="decode", initializer=_lower_priority
        )
        self._budget = ByteBudget(options.max_inflight_bytes)
        # Draft decoding keeps at least twice the model's input size, so the final resize
        # still averages over several source pixels.
        h, w = self._preset.output_size
        self._draft = (2 * w, 2 * h) if options.jpeg_draft else None
        self._metrics = IngressMetrics()
        self._inflight = 0
        self._health = EmbedderHealth(options.unready_after_s)
        self._link = ModelLink(embedder, on_answer=self._health.answered)
        replica = serve.get_replica_context().replica_id.unique_id
        self._drain = Drain(replica, lambda: self._inflight)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._health.watch(embedder)),
            loop.create_task(self._drain.watch()),
            loop.create_task(keep_fresh(lambda: self._metrics.refresh(self._budget.held))),
        ]

    # -- health ---------------------------------------------------------------------

    @app.get("/.well-known/live", status_code=204, response_class=Response)
    async def live(self) -> Response:
        return Response(status_code=204)

    @app.get(
        "/.well-known/ready",
        status_code=204,
        response_class=Response,
        responses={503: {"model": ErrorResponse, "description": "not loaded, stuck or draining"}},
    )
    async def ready(self) -> Response:
        if self._drain.unready:
            return error_response(NotReady("the service is shutting down"))
        if self._health.info is None:
            return error_response(NotReady("model is loading"))
        if not self._health.ready:
            return error_response(
                NotReady(f"the model has not answered for over {self._health.unready_after_s} s")
            )
        return Response(status_code=204)

    @app.get("/meta", responses={503: {"model": ErrorResponse}})
    async def meta(self) -> JSONResponse:
        """Model identity (what every stored vector depends on) and live batching stats,
        both from the one Embedder replica that answered (named by `replica`)."""
        try:
            described = await asyncio.wait_for(self._embedder.describe.remote(), 5)
        except TimeoutError:
            return error_response(Overloaded("the model did not answer within 5 s"))
        except Exception as exc:
            err = embedder_error(exc)
            if err is None:
                log.error("/meta failed: %r", exc)
                return json_error(INTERNAL_ERROR, 500)
            return error_response(err)
        limits = {
            "max_body_bytes": self._options.max_body_bytes,
            "max_inflight_bytes": self._options.max_inflight_bytes,
            "max_image_bytes": self._options.max_image_bytes,
            "max_image_pixels": self._options.max_image_pixels,
            "max_id_length": self._options.max_id_length,
            "request_timeout_s": self._options.request_timeout_s,
            "max_bulk_items": self._options.max_bulk_items,
            "max_bulk_bytes": self._options.max_bulk_bytes,
        }
        # This ingress replica's calls to the model: each carries a group of requests.
        link = {"calls_to_model": self._link.groups, "images_to_model": self._link.images}
        return JSONResponse(
            {"version": img2vec.__version__, **described, "limits": limits, "ingress": link}
        )

    # -- vectors --------------------------------------------------------------------

    @app.post("/vectors", **VECTORS_ROUTE)
    async def vectors(self, request: Request) -> Response:
        return await self._answer("/vectors", self._vectorize, request)

    @app.post("/vectors/", include_in_schema=False)
    async def vectors_slash(self, request: Request) -> Response:
        return await self._answer("/vectors", self._vectorize, request)

    @app.post("/vectors/batch", **BULK_ROUTE)
    async def vectors_batch(self, request: Request) -> Response:
        """Many images, each answered on its own (deployments/bulk.py)."""
        return await self._answer("/vectors/batch", self._vectorize_bulk, request)

    async def _answer(
        self,
        route: str,
        handler: Callable[[Request, _Timing], Awaitable[Response]],
        request: Request,
    ) -> Response:
        """One request, from arrival to answer: bounded in time, counted, logged."""
        timing = _Timing()
        self._inflight += 1
        try:
            response = await handler(request, timing)
        finally:
            self._inflight -= 1
            self._metrics.inflight_bytes.set(self._budget.held)
        took = time.perf_counter() - timing.started
        self._metrics.answered(route, response.status_code, took)
        if self._options.access_log:
            access.info(
                "%s %d id=%s bytes=%d total_ms=%.1f decode_ms=%.1f model_ms=%.1f",
                route,
                response.status_code,
                _loggable(timing.id),
                timing.nbytes,
                1e3 * took,
                1e3 * timing.decode_s,
                1e3 * timing.model_s,
            )
        return response

    async def _bounded(
        self, work: Callable[[Held, float], Awaitable[Response]], what: str
    ) -> Response:
        """Run one request's work within `request_timeout_s` and the byte budget; whatever
        goes wrong becomes its JSON answer."""
        if self._drain.refusing:
            return error_response(NotReady("the service is shutting down; retry elsewhere"))
        timeout = self._options.request_timeout_s
        deadline = time.time() + timeout
        try:
            # The budget covers the request until it is answered, not only until decoded:
            # Serve's receive path keeps its own copies of the body for the request's life
            # (measured: ~3x the body per waiting request), so only this bounds memory.
            async with asyncio.timeout(timeout):
                with Held(self._budget) as held:
                    self._metrics.inflight_bytes.set(self._budget.held)
                    return await work(held, deadline)
        except TimeoutError:
            return error_response(Overloaded(f"not answered within {timeout:g} s; retry"))
        except Img2VecError as exc:
            return error_response(exc)
        except Exception:
            log.exception("%s failed", what)
            return json_error(INTERNAL_ERROR, 500)

    async def _vectorize(self, request: Request, timing: _Timing) -> Response:
        async def work(held: Held, deadline: float) -> Response:
            refused = self._link.refusal(deadline - time.time())
            if refused is not None:
                raise refused
            id_, pixels = await self._decode_request(request, held, timing)
            vector = await self._embed(pixels, deadline, timing)
            # orjson writes each float32 in its shortest exact form: 20x faster than json on
            # 2048 floats, half the bytes, and the same float32 values once parsed.
            body = orjson.dumps(
                {"id": id_, "vector": vector, "dim": int(vector.shape[0])},
                option=orjson.OPT_SERIALIZE_NUMPY,
            )
            return Response(body, media_type="application/json")

        return await self._bounded(work, "vectorize")

    async def _vectorize_bulk(self, request: Request, timing: _Timing) -> Response:
        options = self._options

        async def work(held: Held, deadline: float) -> Response:
            body = await read_body(request, options.max_bulk_bytes, held, "max_bulk_bytes")
            timing.nbytes = len(body)
            items = parse_bulk(body, options.max_bulk_items, options.max_id_length)
            del body
            timing.id = f"{len(items)} items"
            started = time.perf_counter()
            await asyncio.gather(*(self._decode_item(item) for item in items))
            timing.decode_s = time.perf_counter() - started
            todo = [item for item in items if item.pixels is not None]
            if todo:
                started = time.perf_counter()
                results = await self._embed_many([item.pixels for item in todo], deadline)
                timing.model_s = time.perf_counter() - started
                for item, result in zip(todo, results, strict=True):
                    item.pixels = None
                    if isinstance(result, Img2VecError):
                        item.error = result
                    else:
                        item.vector = result
            return Response(bulk_body(items), media_type="application/json")

        return await self._bounded(work, "bulk vectorize")

    async def _decode_item(self, item: BulkItem) -> None:
        if item.image is None:
            return
        image, item.image = item.image, None
        try:
            item.pixels = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._prepare, image
            )
        except Img2VecError as exc:
            item.error = exc

    async def _embed_many(
        self, pixels: list[np.ndarray], deadline: float
    ) -> list[np.ndarray | Img2VecError]:
        """The items' pixels to the model in chunks of GROUP_SIZE (one call each), all at
        once. A chunk the model refuses fails only its own items."""
        chunks = [pixels[i : i + GROUP_SIZE] for i in range(0, len(pixels), GROUP_SIZE)]
        answers = await asyncio.gather(
            *(self._link.embed_chunk(chunk, deadline) for chunk in chunks)
        )
        return [result for answer in answers for result in answer]

    async def _decode_request(
        self, request: Request, held: Held, timing: _Timing
    ) -> tuple[str, np.ndarray]:
        """Body -> (id, 224x224 uint8 pixels). Nothing of what the client sent (body, base64
        text, file bytes) is kept once decoded: what waits for the model is the id and
        150 KB of pixels."""
        body = await read_body(request, self._options.max_body_bytes, held)
        timing.nbytes = len(body)
        req = self._parse(body)
        del body
        id_, image = req.id, req.image
        timing.id = id_
        del req
        started = time.perf_counter()
        pixels = await asyncio.get_running_loop().run_in_executor(self._pool, self._prepare, image)
        timing.decode_s = time.perf_counter() - started
        self._metrics.decode.observe(timing.decode_s)
        del image
        return id_, pixels

    def _parse(self, body: bytes) -> VectorRequest:
        # Parsed from bytes ourselves: Weaviate sends no Content-Type header at all.
        try:
            req = VectorRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation(exc.errors())) from None
        if len(req.id) > self._options.max_id_length:
            raise InvalidRequest(
                f"id is {len(req.id)} characters; the limit is {self._options.max_id_length}"
            )
        return req

    def _prepare(self, image: str) -> np.ndarray:
        img = decode_image(
            image,
            limits=self._limits,
            exif_transpose=self._options.exif_transpose,
            jpeg_draft=self._draft,
        )
        return self._preset.to_array(img)

    async def _embed(self, pixels: np.ndarray, deadline: float, timing: _Timing) -> np.ndarray:
        started = time.perf_counter()
        try:
            return await self._link.embed(pixels, deadline)
        finally:
            timing.model_s = time.perf_counter() - started
