"""The FastAPI app both protocols build (`new_app`: the errors FastAPI answers itself, 404,
405, its own validation, made JSON as ours are; the routes every protocol shares, live, ready
and meta, answered by the `Edge` through `EdgeRoutes`) and the OpenAPI descriptions of their
routes. A request's own way is its protocol's route and the `Edge` (deployments/edge/edge.py),
which owns the error table and parses bodies."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

import img2vec
from deployments.edge.edge import Edge, describe_validation, json_error
from img2vec.errors import INTERNAL_ERROR

log = logging.getLogger("ray.serve")


class ErrorResponse(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "image is not valid base64, or its bytes are not a readable image"),
        (413, "request body or image over a configured limit"),
        (422, "body is not JSON or does not fit the schema"),
        (500, "our fault; details are in the service log"),
        (503, "overloaded or model not ready; retry after the Retry-After header's seconds"),
    )
}


def post_route(request: type[BaseModel], response: type[BaseModel]) -> dict[str, Any]:
    """A POST route's OpenAPI description: the body is read from bytes by the route itself
    (Weaviate sends no Content-Type), so its schema is declared here."""
    return {
        "response_model": response,
        "responses": ERRORS,
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request.model_json_schema()}},
            }
        },
    }


LIVE_ROUTE: dict[str, Any] = {"status_code": 204, "response_class": Response}
READY_ROUTE: dict[str, Any] = {
    **LIVE_ROUTE,
    "responses": {503: {"model": ErrorResponse, "description": "not loaded, stuck or draining"}},
}
META_ROUTE: dict[str, Any] = {"responses": {503: {"model": ErrorResponse}}}


class EdgeRoutes:
    """The routes every protocol serves the same way, answered by its ingress replica's
    `Edge`: `/.well-known/live`, `/.well-known/ready`, `/meta`. Each protocol's ingress class
    inherits them (Serve binds a route whose method a base class defines to the replica's
    instance) and says only what is its own: its name, the limits /meta reports, and whether
    it is still learning how to prepare inputs."""

    PROTOCOL: ClassVar[str]
    _edge: Edge

    def limits(self) -> dict[str, Any]:
        """The limits /meta reports (each protocol's own names)."""
        return self._edge.settings.limits()

    def loading(self) -> bool:
        """Not ready for requests yet, whatever the model says."""
        return False

    async def live(self) -> Response:
        return Response(status_code=204)

    async def ready(self) -> Response:
        return self._edge.ready(loading=self.loading())

    async def meta(self) -> Response:
        """Model identity (what every stored vector depends on) and live batching stats,
        both from the one model replica that answered (named by `replica`)."""
        return await self._edge.meta(self.PROTOCOL, self.limits())


def new_app(title: str, description: str) -> FastAPI:
    """A FastAPI app whose every error, its own included (404, 405, validation), is JSON, with
    the routes every protocol shares (`EdgeRoutes`)."""
    api = FastAPI(title=title, version=img2vec.__version__, description=description)
    api.add_api_route("/.well-known/live", EdgeRoutes.live, methods=["GET"], **LIVE_ROUTE)
    api.add_api_route("/.well-known/ready", EdgeRoutes.ready, methods=["GET"], **READY_ROUTE)
    api.add_api_route("/meta", EdgeRoutes.meta, methods=["GET"], **META_ROUTE)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return json_error(str(exc.detail), exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return json_error(describe_validation(exc.errors()), 422)

    @api.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error: %r", exc, exc_info=exc)
        return json_error(INTERNAL_ERROR, 500)

    return api
