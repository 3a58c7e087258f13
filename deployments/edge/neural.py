"""Weaviate's img2vec-neural API on FastAPI, as a Serve ingress: `POST /vectors` (and
`/vectors/`) `{"id", "image"}` -> `{"id", "vector", "dim"}`; the bulk route
`POST /vectors/batch`; `/.well-known/live|ready` and `/meta` as every protocol serves them
(`http.EdgeRoutes`).

This protocol owns only its wire format (the schemas below); each route reads top-down, and
everything shared (deadline, byte budget, door, drain, errors made JSON, metrics, decode
pool, the model client) is the `Edge`'s (deployments/edge/edge.py).

This module must not import torch: ingress replicas scale with request rate, and each would
pay for it in start time and memory (docs/benchmarks.md#ingress). (No `from __future__ import
annotations` either: Serve's ingress re-creates the route methods, and FastAPI must see
`Request` as a class, not a string, to inject it; and every module-level helper the class
uses is defined above it.)
"""

import warnings
from typing import ClassVar

import orjson
from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.edge import bulk, http
from deployments.edge.edge import Edge, parse_json
from deployments.settings import IngressSettings
from img2vec.errors import InvalidRequest
from img2vec.inputs.decoding import ImageLimits, ImageReader
from img2vec.inputs.preprocessing import get_preset


class VectorRequest(BaseModel):
    """What Weaviate sends. Unknown keys are ignored so that newer clients keep working."""

    model_config = ConfigDict(extra="ignore")
    SHAPE: ClassVar[str] = "a JSON object with string fields 'id' and 'image'"

    id: StrictStr
    image: StrictStr = Field(description="base64 image bytes; a data: URL prefix is accepted")


class VectorResponse(BaseModel):
    id: str
    vector: list[float]
    dim: int


class BulkRequest(BaseModel):
    items: list[VectorRequest]


class BulkError(BaseModel):
    id: StrictStr | None
    error: str
    status: int


class BulkResponse(BaseModel):
    items: list[VectorResponse | BulkError]


VECTORS_ROUTE = http.post_route(VectorRequest, VectorResponse)
BULK_ROUTE = http.post_route(BulkRequest, BulkResponse)

app = http.new_app(
    "img2vec", "Images to vectors; a drop-in for Weaviate's img2vec-neural inference API."
)


@serve.deployment(name="Ingress", max_ongoing_requests=512)
@serve.ingress(app)
class NeuralIngress(http.EdgeRoutes):
    PROTOCOL = "img2vec-neural"

    def __init__(self, model: DeploymentHandle, settings: IngressSettings, preprocess: str) -> None:
        # Malformed client images make Pillow warn (corrupt EXIF, odd TIFF tags); they are
        # answered with a 400 already, and must not flood this process's log.
        warnings.filterwarnings("ignore", module="PIL")
        self._settings = settings
        self._read_image = ImageReader(
            get_preset(preprocess),
            ImageLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels),
            exif_transpose=settings.exif_transpose,
            jpeg_draft=settings.jpeg_draft,
        )
        replica = serve.get_replica_context().replica_id.unique_id
        self._edge = Edge(model, settings, replica)

    @app.post("/vectors", **VECTORS_ROUTE)
    async def vectors(self, request: Request) -> Response:
        return await self._vectorize("/vectors", request)

    @app.post("/vectors/", include_in_schema=False)
    async def vectors_slash(self, request: Request) -> Response:
        return await self._vectorize("/vectors", request)

    async def _vectorize(self, route: str, request: Request) -> Response:
        async with self._edge.exchange(route, request, door=True) as ex:
            req = self._parse(await ex.read(self._settings.max_body_bytes))
            ex.timing.id = id_ = req.id
            pixels = await ex.decode(self._read_image, req.image)
            # Nothing of what the client sent (body, base64 text, file bytes) is kept once
            # decoded: what waits for the model is the id and 150 KB of pixels.
            del req
            vector = await ex.embed(pixels)
            # orjson writes each float32 in its shortest exact form: 20x faster than json on
            # 2048 floats, half the bytes, and the same float32 values once parsed.
            ex.answer(
                orjson.dumps(
                    {"id": id_, "vector": vector, "dim": int(vector.shape[0])},
                    option=orjson.OPT_SERIALIZE_NUMPY,
                )
            )
        return ex.response

    @app.post("/vectors/batch", **BULK_ROUTE)
    async def vectors_batch(self, request: Request) -> Response:
        """Many images, each answered on its own (deployments/edge/bulk.py)."""
        settings = self._settings
        async with self._edge.exchange("/vectors/batch", request) as ex:
            body = await ex.read(settings.max_bulk_bytes, "max_bulk_bytes")
            items = bulk.parse(body, settings.max_bulk_items, settings.max_id_length)
            del body
            ex.timing.id = f"{len(items)} items"
            await bulk.embed_items(items, ex, self._read_image, self._edge.client.group_size())
            ex.answer(bulk.encode(items))
        return ex.response

    def _parse(self, body: bytes) -> VectorRequest:
        req = parse_json(VectorRequest, body)
        if len(req.id) > self._settings.max_id_length:
            raise InvalidRequest(
                f"id is {len(req.id)} characters; the limit is {self._settings.max_id_length}"
            )
        return req
