"""The HTTP edge: Weaviate's img2vec-neural API on FastAPI, as a Serve ingress.

Path of a request: read the body (bounded) -> validate the JSON -> decode and
resize the image in a thread pool (CPU) -> one call to the Embedder deployment,
which batches -> JSON response. Errors become `{"error": "..."}` here and only
here, through `STATUS`.
"""

import asyncio
import contextlib
import logging
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import ray.exceptions
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

import img2vec
from img2vec.decoding import ImageLimits, decode_image
from img2vec.errors import (
    ImageTooLarge,
    Img2VecError,
    InvalidImage,
    InvalidRequest,
    NotReady,
    Overloaded,
)
from img2vec.preprocessing import Preprocess, get_preset

log = logging.getLogger("ray.serve")

# The one table from what went wrong to what the client is told.
STATUS: dict[type[Img2VecError], int] = {
    InvalidRequest: 422,
    InvalidImage: 400,
    ImageTooLarge: 413,
    Overloaded: 503,
    NotReady: 503,
}
INTERNAL_ERROR = "internal error; the service logged the details"


class VectorRequest(BaseModel):
    """What Weaviate sends. Unknown keys are ignored so that newer clients keep working."""

    model_config = ConfigDict(extra="ignore")

    id: StrictStr
    image: StrictStr = Field(description="base64 image bytes; a data: URL prefix is accepted")


class VectorResponse(BaseModel):
    id: str
    vector: list[float]
    dim: int


class ErrorResponse(BaseModel):
    error: str


class IngressOptions(BaseModel):
    """Structure of the ingress, fixed for the replica's life (from the builder's args)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preprocess: str
    max_body_bytes: int = Field(gt=0)
    max_inflight_bytes: int = Field(gt=0)
    max_image_pixels: int = Field(gt=0)
    max_id_length: int = Field(gt=0)
    decode_workers: int = Field(gt=0)
    exif_transpose: bool = False
    jpeg_draft: bool = False


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "image is not valid base64, or its bytes are not a readable image"),
        (413, "request body or image over a configured limit"),
        (422, "body is not JSON or does not fit the schema"),
        (500, "our fault; details are in the service log"),
        (503, "overloaded or model not ready; retry later"),
    )
}
_VECTORS_ROUTE: dict[str, Any] = {
    "response_model": VectorResponse,
    "responses": _ERRORS,
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": VectorRequest.model_json_schema()}},
        }
    },
}

app = FastAPI(
    title="img2vec",
    version=img2vec.__version__,
    description="Images to vectors; a drop-in for Weaviate's img2vec-neural inference API.",
)


@app.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": _describe(exc.errors())}, status_code=422)


def error_response(exc: Img2VecError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=STATUS.get(type(exc), 500))


def _lower_priority() -> None:
    """Decode threads run at a lower CPU priority than the rest of the node: where the
    model shares the CPU with them, its forward pass (whose threads wait on each other at
    every op) should not be the one that gets preempted. Decoding still fills every idle
    cycle. Linux applies nice values per thread; elsewhere this is a no-op."""
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 4))


class ByteBudget:
    """The request bytes one ingress replica may hold at once (bodies being read, waiting
    for a decode thread, or decoding). Past it a request is answered 503 at once: memory
    stays bounded however many clients send large images. Used from the event loop only."""

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


class _Held:
    """What one request took from the budget, given back when the request ends."""

    def __init__(self, budget: ByteBudget) -> None:
        self.budget = budget
        self.n = 0

    def take(self, n: int) -> None:
        self.budget.take(n)
        self.n += n

    def __enter__(self) -> "_Held":
        return self

    def __exit__(self, *exc: object) -> None:
        self.budget.give(self.n)


async def _read_body(request: Request, limit: int, held: _Held) -> bytes:
    """Read the body, refusing it as soon as it is known to exceed `limit`."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ImageTooLarge(
            f"request body is {declared} bytes; the limit is {limit} bytes (max_body_bytes)"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        held.take(len(chunk))
        size += len(chunk)
        if size > limit:
            raise ImageTooLarge(
                f"request body is over {limit} bytes; the limit is {limit} bytes (max_body_bytes)"
            )
        chunks.append(chunk)
    if not size:
        raise InvalidRequest('request body is empty; expected JSON {"id": ..., "image": ...}')
    return b"".join(chunks)


def _describe(errors: Any) -> str:
    """pydantic/FastAPI error list -> one readable sentence, without echoing input."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        if err.get("type") == "json_invalid":
            parts.append(
                f"body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})"
            )
        elif err.get("type") == "model_type":
            parts.append("body must be a JSON object with string fields 'id' and 'image'")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


@serve.deployment(name="Ingress", max_ongoing_requests=256)
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
            max_bytes=options.max_body_bytes, max_pixels=options.max_image_pixels
        )
        self._pool = ThreadPoolExecutor(
            options.decode_workers, thread_name_prefix="decode", initializer=_lower_priority
        )
        self._budget = ByteBudget(options.max_inflight_bytes)
        # Draft decoding keeps at least twice the model's input size, so the final resize
        # still averages over several source pixels.
        h, w = self._preset.output_size
        self._draft = (2 * w, 2 * h) if options.jpeg_draft else None
        self._model_info: dict[str, Any] | None = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch_embedder())

    # -- health ---------------------------------------------------------------------

    async def _watch_embedder(self) -> None:
        """Keep `ready` a cached fact, so that the probe never waits on inference."""
        while True:
            try:
                self._model_info = await asyncio.wait_for(self._embedder.info.remote(), 10)
            except (asyncio.TimeoutError, BackPressureError):
                pass  # busy is not down: keep the last answer
            except Exception as exc:
                if self._model_info is not None:
                    log.warning("embedder not answering, reporting not ready: %r", exc)
                self._model_info = None
            await asyncio.sleep(2.0 if self._model_info else 0.25)

    @app.get("/.well-known/live", status_code=204, response_class=Response)
    async def live(self) -> Response:
        return Response(status_code=204)

    @app.get(
        "/.well-known/ready",
        status_code=204,
        response_class=Response,
        responses={503: {"model": ErrorResponse, "description": "model not loaded yet"}},
    )
    async def ready(self) -> Response:
        if self._model_info is None:
            return error_response(NotReady("model is loading"))
        return Response(status_code=204)

    @app.get("/meta")
    async def meta(self) -> JSONResponse:
        """Model identity (what every stored vector depends on) and live batching stats."""
        try:
            info, stats = await asyncio.wait_for(
                asyncio.gather(self._embedder.info.remote(), self._embedder.stats.remote()), 5
            )
        except (asyncio.TimeoutError, BackPressureError):
            return error_response(Overloaded("embedder did not answer within 5 s"))
        limits = {
            "max_body_bytes": self._options.max_body_bytes,
            "max_inflight_bytes": self._options.max_inflight_bytes,
            "max_image_pixels": self._options.max_image_pixels,
            "max_id_length": self._options.max_id_length,
        }
        body = {"version": img2vec.__version__, **info, "limits": limits, "batching": stats}
        return JSONResponse(body)

    # -- vectors --------------------------------------------------------------------

    @app.post("/vectors", **_VECTORS_ROUTE)
    async def vectors(self, request: Request) -> Response:
        return await self._vectorize(request)

    @app.post("/vectors/", include_in_schema=False)
    async def vectors_slash(self, request: Request) -> Response:
        return await self._vectorize(request)

    async def _vectorize(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            with _Held(self._budget) as held:
                body = await _read_body(request, self._options.max_body_bytes, held)
                req = self._parse(body)
                del body
                pixels = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._prepare, req.image
                )
            vector = await self._embed(pixels)
        except Img2VecError as exc:
            return error_response(exc)
        except Exception:
            log.exception("vectorize failed")
            return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)
        log.debug("vectorized in %.1f ms", (time.perf_counter() - started) * 1e3)
        # orjson writes each float32 in its shortest exact form: 20x faster than json on
        # 2048 floats, half the bytes, and the same float32 values once parsed.
        body = orjson.dumps(
            {"id": req.id, "vector": vector, "dim": int(vector.shape[0])},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        return Response(body, media_type="application/json")

    def _parse(self, body: bytes) -> VectorRequest:
        # Parsed from bytes ourselves: Weaviate sends no Content-Type header at all.
        try:
            req = VectorRequest.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidRequest(_describe(exc.errors())) from None
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

    async def _embed(self, pixels: np.ndarray) -> np.ndarray:
        try:
            return await self._embedder.embed.remote(pixels)
        except BackPressureError:
            raise Overloaded("the model is at capacity; retry later") from None
        except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError):
            raise NotReady("a model replica is restarting; retry later") from None
