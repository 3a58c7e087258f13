"""The HTTP edge: Weaviate's img2vec-neural API on FastAPI, as a Serve ingress.

Path of a request (`Answering` in deployments/answering.py, then the route's handler, top to
bottom): refuse at once if the model is too far behind -> take its declared size from the
byte budget -> read the body (bounded) -> validate the JSON -> decode and resize the image in
a thread pool (CPU) -> the model, through `ModelLink` (one call per group) -> JSON response,
all within `request_timeout_s`. Errors become `{"error": "..."}` in `Answering` and only
there, by the table in `deployments/http.py`.

This module must not import torch: ingress replicas scale with request rate, and each would
pay for it in start time and memory (docs/benchmarks.md#ingress). (No `from __future__ import
annotations` either: Serve's ingress re-creates the route methods, and FastAPI must see
`Request` as a class, not a string, to inject it. For the same reason every module-level
helper the class uses is defined above it.)
"""

import asyncio
import logging
import time
import warnings

import numpy as np
import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

import img2vec
from deployments.answering import Answering, ImagePool, Timing, describe_model, readiness
from deployments.bulk import BulkItem, bulk_body, parse_bulk, vectorize_items
from deployments.health import Drain, EmbedderHealth
from deployments.http import (
    BULK_ROUTE,
    VECTORS_ROUTE,
    ErrorResponse,
    Held,
    VectorRequest,
    app,
    describe_validation,
    read_body,
)
from deployments.link import ModelLink
from deployments.metrics import IngressMetrics, keep_fresh
from deployments.settings import IngressSettings
from img2vec.decoding import ImageLimits, decode_image
from img2vec.errors import Img2VecError, InvalidRequest
from img2vec.preprocessing import Preprocess, get_preset

log = logging.getLogger("ray.serve")


@serve.deployment(name="Ingress", max_ongoing_requests=512)
@serve.ingress(app)
class Ingress:
    def __init__(
        self, embedder: DeploymentHandle, settings: IngressSettings, preprocess: str
    ) -> None:
        # Malformed client images make Pillow warn (corrupt EXIF, odd TIFF tags); they are
        # answered with a 400 already, and must not flood this process's log.
        warnings.filterwarnings("ignore", module="PIL")
        self._embedder = embedder
        self._settings = settings
        self._preset: Preprocess = get_preset(preprocess)
        self._limits = ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        # Draft decoding keeps at least twice the model's input size, so the final resize
        # still averages over several source pixels.
        h, w = self._preset.output_size
        self._draft = (2 * w, 2 * h) if settings.jpeg_draft else None
        self._metrics = IngressMetrics()
        self._pool = ImagePool(settings.decode_workers, self._metrics)
        self._health = EmbedderHealth(settings.unready_after_s)
        self._link = ModelLink(embedder, self._health)
        self._answer = Answering(settings, self._metrics)
        replica = serve.get_replica_context().replica_id.unique_id
        self._drain = self._answer.drain = Drain(replica, lambda: self._answer.inflight)
        budget = self._answer.budget
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._health.watch(embedder)),
            loop.create_task(self._drain.watch()),
            loop.create_task(keep_fresh(lambda: self._metrics.refresh(budget.held))),
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
        return readiness(self._drain, self._health)

    @app.get("/meta", responses={503: {"model": ErrorResponse}})
    async def meta(self) -> Response:
        """Model identity (what every stored vector depends on) and live batching stats,
        both from the one Embedder replica that answered (named by `replica`)."""
        described = await describe_model(self._embedder)
        if isinstance(described, Response):
            return described
        # This ingress replica's calls to the model: each carries a group of requests.
        link = {"calls_to_model": self._link.groups, "images_to_model": self._link.images}
        return JSONResponse(
            {
                "version": img2vec.__version__,
                **described,
                "limits": self._settings.limits(),
                "ingress": link,
            }
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

    async def _vectorize(
        self, request: Request, held: Held, deadline: float, timing: Timing
    ) -> Response:
        with self._link.admission(deadline):
            body = await read_body(request, self._settings.max_body_bytes, held)
            timing.nbytes = len(body)
            req = self._parse(body)
            del body
            timing.id = req.id
            pixels = await self._decode(req.image, timing)
            # Nothing of what the client sent (body, base64 text, file bytes) is kept once
            # decoded: what waits for the model is the id and 150 KB of pixels.
            id_ = req.id
            del req
            started = time.perf_counter()
            try:
                vector = await self._link.embed(pixels, deadline)
            finally:
                timing.model_s = time.perf_counter() - started
        # orjson writes each float32 in its shortest exact form: 20x faster than json on
        # 2048 floats, half the bytes, and the same float32 values once parsed.
        body = orjson.dumps(
            {"id": id_, "vector": vector, "dim": int(vector.shape[0])},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        return Response(body, media_type="application/json")

    async def _vectorize_bulk(
        self, request: Request, held: Held, deadline: float, timing: Timing
    ) -> Response:
        settings = self._settings
        body = await read_body(request, settings.max_bulk_bytes, held, "max_bulk_bytes")
        timing.nbytes = len(body)
        items = parse_bulk(body, settings.max_bulk_items, settings.max_id_length)
        del body
        timing.id = f"{len(items)} items"
        first_sent: list[float] = []

        async def embed(pixels: list[np.ndarray]) -> list[np.ndarray | Img2VecError]:
            if not first_sent:
                first_sent.append(time.perf_counter())
            return await self._link.embed_many(pixels, deadline)

        await vectorize_items(
            items, lambda item: self._decode_item(item, timing), embed, self._link.group_size()
        )
        # Decoding and the model overlap: the model's time runs from the first images sent.
        timing.model_s = time.perf_counter() - first_sent[0] if first_sent else 0.0
        return Response(bulk_body(items), media_type="application/json")

    async def _decode_item(self, item: BulkItem, timing: Timing) -> None:
        if item.image is None:
            return
        image, item.image = item.image, None
        try:
            item.pixels = await self._decode(image, timing)
        except Img2VecError as exc:
            item.error = exc

    async def _decode(self, image: str, timing: Timing) -> np.ndarray:
        """base64 text -> the preset's uint8 pixels, in the decode pool."""
        return await self._pool.run(self._prepare, image, timing=timing)

    def _parse(self, body: bytes) -> VectorRequest:
        # Parsed from bytes ourselves: Weaviate sends no Content-Type header at all.
        try:
            req = VectorRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation(exc.errors())) from None
        if len(req.id) > self._settings.max_id_length:
            raise InvalidRequest(
                f"id is {len(req.id)} characters; the limit is {self._settings.max_id_length}"
            )
        return req

    def _prepare(self, image: str) -> np.ndarray:
        img = decode_image(
            image,
            limits=self._limits,
            exif_transpose=self._settings.exif_transpose,
            jpeg_draft=self._draft,
        )
        return self._preset.to_array(img)
