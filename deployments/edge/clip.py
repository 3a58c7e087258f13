"""Weaviate's multi2vec-clip API on FastAPI, as a Serve ingress.

`POST /vectorize {"texts": [...], "images": ["<base64>", ...]}` -> `{"textVectors": [[...]],
"imageVectors": [[...]]}`, each in input order; `/.well-known/live|ready` and `/meta` as every
protocol serves them (`http.EdgeRoutes`). Weaviate sends one request per object, with all its
text and image fields (texts only for `nearText`, images only for `nearImage`), and averages
the vectors itself.

This protocol owns only its wire format and how its inputs are prepared (images resized and
cropped the model's way, texts tokenized); the rest is the `Edge`'s
(deployments/edge/edge.py), as on the img2vec-neural routes. The ingress learns how to
prepare inputs from the model replica (`inputs()`), so it needs no copy of the model
directory. No torch here; no `from __future__ import annotations` (FastAPI must see `Request`
as a class), and every module-level helper the class uses is defined above it (Serve's
ingress re-creates the route methods).
"""

import asyncio
import logging
import warnings
from collections.abc import Awaitable
from typing import Any, ClassVar

import numpy as np
import orjson
from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, StrictStr
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.edge import http
from deployments.edge.edge import Edge, parse_json
from deployments.handoff import split_request
from deployments.settings import IngressSettings
from img2vec.errors import Img2VecError, InvalidRequest, NotReady
from img2vec.inputs.decoding import ImageLimits, ImageReader
from img2vec.inputs.multimodal import ClipSpec, TextTokenizer

log = logging.getLogger("ray.serve")

ROUTE = "/vectorize"


class ClipRequest(BaseModel):
    """What Weaviate's multi2vec-clip module sends (Go's nil slices arrive as null)."""

    model_config = ConfigDict(extra="forbid")
    SHAPE: ClassVar[str] = "a JSON object with 'texts' and 'images', each a list of strings or null"
    texts: list[StrictStr] | None = None
    images: list[StrictStr] | None = None


class ClipResponse(BaseModel):
    textVectors: list[list[float]]
    imageVectors: list[list[float]]


clip_app = http.new_app(
    "img2vec multi2vec-clip",
    "Texts and images to one vector space; a drop-in for Weaviate's multi2vec-clip inference API.",
)

VECTORIZE_ROUTE = http.post_route(ClipRequest, ClipResponse)


async def _numbered(i: int, decoding: Awaitable[np.ndarray]) -> np.ndarray:
    """An image's decoding, its error saying which image it was."""
    try:
        return await decoding
    except Img2VecError as exc:
        raise type(exc)(f"images[{i}]: {exc.message}") from None


@serve.deployment(name="Ingress", max_ongoing_requests=512)
@serve.ingress(clip_app)
class ClipIngress(http.EdgeRoutes):
    PROTOCOL = "multi2vec-clip"

    def __init__(self, model: DeploymentHandle, settings: IngressSettings) -> None:
        warnings.filterwarnings("ignore", module="PIL")
        self._model = model
        self._settings = settings
        self._limits = ImageLimits(
            max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels
        )
        # How inputs are prepared, once the model replica has said (it may be loading).
        self._read_image: ImageReader | None = None
        self._tokenizer: TextTokenizer | None = None
        replica = serve.get_replica_context().replica_id.unique_id
        self._edge = Edge(model, settings, replica)
        self._learning = asyncio.get_running_loop().create_task(self._learn_inputs())

    async def _learn_inputs(self) -> None:
        """Ask the model replica how inputs are prepared, until it answers (it is loading)."""
        while self._tokenizer is None:
            try:
                spec: ClipSpec = await asyncio.wait_for(self._model.inputs.remote(), 30)
            except Exception as exc:
                log.info("waiting for the CLIP model's input spec: %r", exc)
                await asyncio.sleep(0.5)
                continue
            self._read_image = ImageReader(
                spec.preprocess, self._limits, exif_transpose=self._settings.exif_transpose
            )
            self._tokenizer = TextTokenizer(spec)

    def loading(self) -> bool:
        return self._tokenizer is None

    def limits(self) -> dict[str, Any]:
        """A request's inputs are limited as a bulk request's items; no bulk body here."""
        limits = self._settings.limits()
        limits["max_inputs"] = limits.pop("max_bulk_items")
        del limits["max_bulk_bytes"]
        return limits

    @clip_app.post(ROUTE, **VECTORIZE_ROUTE)
    async def vectorize(self, request: Request) -> Response:
        async with self._edge.exchange(ROUTE, request, door=True) as ex:
            read_image, tokenizer = self._read_image, self._tokenizer
            if read_image is None or tokenizer is None:
                raise NotReady("model is loading")
            body = await ex.read(
                self._settings.max_body_bytes, expected='{"texts": [...], "images": [...]}'
            )
            req = self._parse(body)
            del body
            texts, images = req.texts or [], req.images or []
            del req
            ex.carries(len(texts) + len(images))
            ex.timing.id = f"{len(texts)} texts, {len(images)} images"
            pixels, ids = await asyncio.gather(
                asyncio.gather(
                    *(_numbered(i, ex.decode(read_image, image)) for i, image in enumerate(images))
                ),
                ex.tokenize(tokenizer.encode, texts),
            )
            del images, texts
            h, w = read_image.preset.output_size
            batch = np.stack(pixels) if pixels else np.zeros((0, h, w, 3), np.uint8)
            vectors = await ex.embed_request(batch, ids) if len(batch) or ids else []
            image_vectors, text_vectors = split_request(vectors, len(batch))
            ex.answer(
                orjson.dumps(
                    {"textVectors": text_vectors, "imageVectors": image_vectors},
                    option=orjson.OPT_SERIALIZE_NUMPY,
                )
            )
        return ex.response

    def _parse(self, body: bytes) -> ClipRequest:
        req = parse_json(ClipRequest, body)
        count = len(req.texts or ()) + len(req.images or ())
        if count > self._settings.max_bulk_items:
            raise InvalidRequest(
                f"{count} texts and images in one request; the limit is "
                f"{self._settings.max_bulk_items} (max_bulk_items)"
            )
        return req
