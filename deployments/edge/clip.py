"""The multi2vec-clip edge: Weaviate's CLIP inference API on FastAPI, as a Serve ingress.

`POST /vectorize {"texts": [...], "images": ["<base64>", ...]}` -> `{"textVectors": [[...]],
"imageVectors": [[...]]}`, each in input order; `/.well-known/live|ready`, `/meta`. Weaviate
sends one request per object, with all its text and image fields (texts only for `nearText`,
images only for `nearImage`), and averages the vectors itself.

Path of a request: `Answering` (deployments/answering.py: drain, deadline, byte budget, JSON
errors, metrics, access log, as on the img2vec-neural routes) -> refuse at once if the model
is too far behind -> read the body (bounded) -> validate -> decode and resize the images and
tokenize the texts in the decode pool (CPU; a bad image or text fails this request only) ->
one call to the model replica (deployments/clip_model.py), where the inputs of concurrent
requests share passes -> JSON.

The ingress learns how to prepare inputs (image size, crop, tokenizer) from the model replica
(`inputs()`), so it needs no copy of the model directory. No torch here; no `from __future__
import annotations` (FastAPI must see `Request` as a class).
"""

import asyncio
import logging
import time
import warnings
from typing import Any

import numpy as np
import orjson
from fastapi import Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle

import img2vec
from deployments.answering import Answering, ImagePool, Timing, describe_model, readiness
from deployments.handoff import GroupAnswer
from deployments.health import Drain, EmbedderHealth
from deployments.http import (
    ERRORS,
    ErrorResponse,
    Held,
    describe_validation,
    embedder_error,
    error_response,
    new_app,
    read_body,
)
from deployments.metrics import IngressMetrics, keep_fresh
from deployments.settings import IngressSettings
from img2vec.batching import Backlog
from img2vec.decoding import ImageLimits, decode_image
from img2vec.errors import Img2VecError, InvalidRequest, NotReady
from img2vec.multimodal import ClipSpec, TextTokenizer

log = logging.getLogger("ray.serve")

ROUTE = "/vectorize"


class ClipRequest(BaseModel):
    """What Weaviate's multi2vec-clip module sends (Go's nil slices arrive as null)."""

    model_config = ConfigDict(extra="forbid")
    texts: list[StrictStr] | None = None
    images: list[StrictStr] | None = None


class ClipResponse(BaseModel):
    textVectors: list[list[float]]
    imageVectors: list[list[float]]


clip_app = new_app(
    "img2vec multi2vec-clip",
    "Texts and images to one vector space; a drop-in for Weaviate's multi2vec-clip inference API.",
)

VECTORIZE_ROUTE: dict[str, Any] = {
    "response_model": ClipResponse,
    "responses": ERRORS,
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ClipRequest.model_json_schema()}},
        }
    },
}


@serve.deployment(name="Ingress", max_ongoing_requests=512)
@serve.ingress(clip_app)
class ClipIngress:
    def __init__(self, embedder: DeploymentHandle, settings: IngressSettings) -> None:
        warnings.filterwarnings("ignore", module="PIL")
        self._embedder = embedder
        self._settings = settings
        self._limits = ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        self._metrics = IngressMetrics()
        self._pool = ImagePool(settings.decode_workers, self._metrics)
        self._health = EmbedderHealth(settings.unready_after_s)
        self._answer = Answering(settings, self._metrics)
        replica = serve.get_replica_context().replica_id.unique_id
        self._drain = self._answer.drain = Drain(replica, lambda: self._answer.inflight)
        self._spec: ClipSpec | None = None
        self._tokenizer: TextTokenizer | None = None
        # The model's last word on its backlog, and when it said so (monotonic).
        self._backlog, self._said_at = Backlog(), 0.0
        budget = self._answer.budget
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._health.watch(embedder)),
            loop.create_task(self._drain.watch()),
            loop.create_task(keep_fresh(lambda: self._metrics.refresh(budget.held))),
            loop.create_task(self._learn_inputs()),
        ]

    async def _learn_inputs(self) -> None:
        """Ask the model replica how inputs are prepared, until it answers (it is loading)."""
        while self._spec is None:
            try:
                spec: ClipSpec = await asyncio.wait_for(self._embedder.inputs.remote(), 30)
            except Exception as exc:
                log.info("waiting for the CLIP model's input spec: %r", exc)
                await asyncio.sleep(0.5)
                continue
            self._tokenizer = TextTokenizer(spec)
            self._spec = spec

    # -- health ---------------------------------------------------------------------

    @clip_app.get("/.well-known/live", status_code=204, response_class=Response)
    async def live(self) -> Response:
        return Response(status_code=204)

    @clip_app.get(
        "/.well-known/ready",
        status_code=204,
        response_class=Response,
        responses={503: {"model": ErrorResponse, "description": "not loaded, stuck or draining"}},
    )
    async def ready(self) -> Response:
        if self._spec is None:
            return error_response(NotReady("model is loading"))
        return readiness(self._drain, self._health)

    @clip_app.get("/meta", responses={503: {"model": ErrorResponse}})
    async def meta(self) -> Response:
        """The model (what every stored vector depends on, long texts' truncation included)
        and live batching stats, from the one model replica that answered."""
        described = await describe_model(self._embedder)
        if isinstance(described, Response):
            return described
        limits = self._settings.limits()
        limits["max_inputs"] = limits.pop("max_bulk_items")
        del limits["max_bulk_bytes"]
        return JSONResponse(
            {
                "version": img2vec.__version__,
                "protocol": "multi2vec-clip",
                **described,
                "limits": limits,
            }
        )

    # -- vectors --------------------------------------------------------------------

    @clip_app.post(ROUTE, **VECTORIZE_ROUTE)
    async def vectorize(self, request: Request) -> Response:
        return await self._answer(ROUTE, self._vectorize, request)

    async def _vectorize(
        self, request: Request, held: Held, deadline: float, timing: Timing
    ) -> Response:
        spec, tokenizer = self._spec, self._tokenizer
        if spec is None or tokenizer is None:
            raise NotReady("model is loading")
        refused = self._backlog.aged(time.monotonic() - self._said_at).refusal(
            deadline - time.time()
        )
        if refused is not None:
            raise refused
        body = await read_body(
            request,
            self._settings.max_body_bytes,
            held,
            expected='{"texts": [...], "images": [...]}',
        )
        timing.nbytes = len(body)
        req = self._parse(body)
        del body
        texts, images = req.texts or [], req.images or []
        del req
        timing.id = f"{len(texts)} texts, {len(images)} images"
        pixels, ids = await asyncio.gather(
            asyncio.gather(
                *(self._decode(i, image, spec, timing) for i, image in enumerate(images))
            ),
            self._pool.run(tokenizer.encode, texts, timing=timing),
        )
        del images, texts
        h, w = spec.preprocess.output_size
        batch = np.stack(pixels) if pixels else np.zeros((0, h, w, 3), np.uint8)
        vectors = await self._model(batch, ids, deadline, timing) if len(batch) or ids else []
        n = len(batch)
        body = orjson.dumps(
            {"textVectors": vectors[n:], "imageVectors": vectors[:n]},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        return Response(body, media_type="application/json")

    async def _model(
        self, images: np.ndarray, ids: list[np.ndarray], deadline: float, timing: Timing
    ) -> list[np.ndarray]:
        started = time.perf_counter()
        try:
            answer: GroupAnswer = await self._embedder.vectorize.remote(images, ids, deadline)
        except Exception as exc:
            err = embedder_error(exc)
            if err is None:
                raise
            raise err from None
        finally:
            timing.model_s = time.perf_counter() - started
        self._backlog, self._said_at = answer.backlog, time.monotonic()
        self._health.answered()
        vectors: list[np.ndarray] = []
        for result in answer.results:
            if isinstance(result, Img2VecError):
                raise result
            vectors.append(result)
        return vectors

    async def _decode(self, i: int, image: str, spec: ClipSpec, timing: Timing) -> np.ndarray:
        try:
            return await self._pool.run(self._prepare, image, spec, timing=timing)
        except Img2VecError as exc:
            raise type(exc)(f"images[{i}]: {exc.message}") from None

    def _prepare(self, image: str, spec: ClipSpec) -> np.ndarray:
        img = decode_image(image, limits=self._limits, exif_transpose=self._settings.exif_transpose)
        return spec.preprocess.to_array(img)

    def _parse(self, body: bytes) -> ClipRequest:
        # Parsed from bytes ourselves, whatever the Content-Type says.
        try:
            req = ClipRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidRequest(describe_validation(exc.errors())) from None
        count = len(req.texts or ()) + len(req.images or ())
        if count > self._settings.max_bulk_items:
            raise InvalidRequest(
                f"{count} texts and images in one request; the limit is "
                f"{self._settings.max_bulk_items} (max_bulk_items)"
            )
        return req
