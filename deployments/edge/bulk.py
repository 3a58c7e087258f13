"""`POST /vectors/batch`: many images in one request, each answered on its own.

`{"items": [{"id", "image"}, ...]}` -> `{"items": [...]}` in the same order, each
`{"id", "vector", "dim"}` or `{"id", "error", "status"}`. One bad item fails only itself; the
request as a whole is a 200. Past `max_bulk_items` items or `max_bulk_bytes` of body, the whole
request is a 413, before anything is decoded. (Not `/vectorize`: that is the multi2vec-clip
protocol, `{"images": [...]}`, and this is not it.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from deployments.edge.edge import status_of
from img2vec.errors import ImageTooLarge, Img2VecError, InvalidRequest

if TYPE_CHECKING:
    from deployments.edge.edge import Exchange


@dataclass
class BulkItem:
    id: str | None
    image: str | None
    error: Img2VecError | None = None
    pixels: np.ndarray | None = None
    vector: np.ndarray | None = None

    def settle(self, result: np.ndarray | Img2VecError) -> None:
        """The model's answer for this item: its vector or its own error."""
        self.pixels = None
        if isinstance(result, Img2VecError):
            self.error = result
        else:
            self.vector = result


def parse(body: bytes, max_items: int, max_id_length: int) -> list[BulkItem]:
    """The body's items, each valid or carrying its own error. What makes the whole request
    unusable (not JSON, no `items` list, too many items) raises."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"body is not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise InvalidRequest('body must be a JSON object {"items": [{"id": ..., "image": ...}]}')
    raw = data["items"]
    if len(raw) > max_items:
        raise ImageTooLarge(f"{len(raw)} items; the limit is {max_items} (max_bulk_items)")
    if not raw:
        raise InvalidRequest("items is empty")
    return [_item(entry, max_id_length) for entry in raw]


def _item(entry: Any, max_id_length: int) -> BulkItem:
    if not isinstance(entry, dict):
        return BulkItem(None, None, InvalidRequest("item must be an object {id, image}"))
    id_, image = entry.get("id"), entry.get("image")
    id_ok = id_ if isinstance(id_, str) else None
    if not isinstance(id_, str):
        return BulkItem(None, None, InvalidRequest("id: a string is required"))
    if not isinstance(image, str):
        return BulkItem(id_ok, None, InvalidRequest("image: a base64 string is required"))
    if len(id_) > max_id_length:
        error = InvalidRequest(f"id is {len(id_)} characters; the limit is {max_id_length}")
        return BulkItem(id_, None, error)
    return BulkItem(id_, image)


async def embed_items(
    items: list[BulkItem], ex: Exchange, read_image: Callable[[str], np.ndarray], group: int
) -> None:
    """Every item's vector or its own error. Every image is handed to the decode pool at
    once (it takes them in order), and each run of `group` items goes to the model as soon
    as it is decoded: the model works on the first images while the rest still decode,
    instead of waiting for the last one."""
    decodes = [asyncio.ensure_future(_decode(item, ex, read_image)) for item in items]
    sends: list[asyncio.Future[None]] = []
    try:
        for start in range(0, len(items), group):
            await asyncio.gather(*decodes[start : start + group])
            ready = [item for item in items[start : start + group] if item.pixels is not None]
            if ready:
                sends.append(asyncio.ensure_future(_embed(ready, ex)))
        await asyncio.gather(*sends)
    finally:  # the client went away, or a call failed: nothing left running for it
        for task in decodes + sends:
            task.cancel()


async def _decode(item: BulkItem, ex: Exchange, read_image: Callable[[str], np.ndarray]) -> None:
    if item.image is None:
        return
    image, item.image = item.image, None
    try:
        item.pixels = await ex.decode(read_image, image)
    except Img2VecError as exc:
        item.error = exc


async def _embed(ready: list[BulkItem], ex: Exchange) -> None:
    results = await ex.embed_many([item.pixels for item in ready if item.pixels is not None])
    for item, result in zip(ready, results, strict=True):
        item.settle(result)


def encode(items: list[BulkItem]) -> bytes:
    out: list[dict[str, Any]] = []
    for item in items:
        if item.vector is not None:
            out.append({"id": item.id, "vector": item.vector, "dim": int(item.vector.shape[0])})
        else:
            assert item.error is not None
            out.append(
                {"id": item.id, "error": item.error.message, "status": status_of(item.error)}
            )
    return orjson.dumps({"items": out}, option=orjson.OPT_SERIALIZE_NUMPY)
