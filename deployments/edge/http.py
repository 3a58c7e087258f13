"""The HTTP vocabulary of the edge: the FastAPI app and its JSON error handlers, the wire
schemas and the routes' OpenAPI descriptions, a body parsed against a schema, the one table
from error to status, and JSON error bodies. (The routes are the ingress deployments'
methods: deployments/edge/neural.py, clip.py; the byte budget and the bounded body read are
the `Edge`'s: deployments/edge/edge.py.)"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import ray.exceptions
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

import img2vec
from deployments.edge.proxy import RETRY_AFTER_S
from img2vec import errors
from img2vec.errors import INTERNAL_ERROR, Img2VecError, InvalidRequest, NotReady, Overloaded

log = logging.getLogger("ray.serve")
Schema = TypeVar("Schema", bound=BaseModel)

# The one table from what went wrong to what the client is told.
STATUS: dict[type[Img2VecError], int] = {
    errors.InvalidRequest: 422,
    errors.InvalidImage: 400,
    errors.ImageTooLarge: 413,
    errors.Overloaded: 503,
    errors.NotReady: 503,
}


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


def json_error(message: str, status: int) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def status_of(exc: Img2VecError) -> int:
    return next((STATUS[c] for c in type(exc).__mro__ if c in STATUS), 500)


def error_response(exc: Img2VecError) -> JSONResponse:
    return json_error(exc.message, status_of(exc))


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


def parse_json(schema: type[Schema], body: bytes) -> Schema:
    """A body validated against a protocol's schema, parsed from bytes ourselves (Weaviate
    sends no Content-Type): anything else is a 422 saying what, without echoing the input."""
    try:
        return schema.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation(exc.errors())) from None


def describe_validation(errors: Any) -> str:
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


def new_app(title: str, description: str) -> FastAPI:
    """A FastAPI app whose every error, its own included (404, 405, validation), is JSON."""
    api = FastAPI(title=title, version=img2vec.__version__, description=description)

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
