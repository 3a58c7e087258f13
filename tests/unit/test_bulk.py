"""`bulk.embed_items` (deployments/edge/bulk.py): a bulk request's images go to the model a chunk
at a time, each chunk as soon as its images are decoded, while the rest still decode. Decodes and
model calls here complete when the test says so. (The route over real Serve, its order and
per-item errors: tests/integration/test_bulk.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from deployments.edge.bulk import BulkItem, embed_items
from img2vec.errors import Img2VecError, InvalidImage, InvalidRequest, Overloaded


class Stage:
    """What `bulk.embed_items` asks of the request's Exchange: decodes that finish when
    `decoded(i)` is called, and model calls answered by `answer`."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.calls: list[tuple[list[int], asyncio.Future]] = []

    async def decode(self, read: Callable[[str], np.ndarray], image: str) -> np.ndarray:
        id_ = image.split(":")[1]
        self.started.append(id_)
        gate = self.gates.setdefault(id_, asyncio.Event())
        try:
            await gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(id_)
            raise
        return read(image)

    async def embed_many(self, pixels: list[np.ndarray]) -> list[np.ndarray | Img2VecError]:
        future = asyncio.get_running_loop().create_future()
        self.calls.append(([int(p[0, 0, 0]) for p in pixels], future))
        return await future

    def decoded(self, *ids: int) -> None:
        for i in ids:
            self.gates.setdefault(str(i), asyncio.Event()).set()

    def answer(self, call: int, refuse: bool = False) -> None:
        values, future = self.calls[call]
        if refuse:
            future.set_result([Overloaded("the model is 60 s behind")] * len(values))
        else:
            future.set_result([np.array([v], dtype=np.float32) for v in values])

    def sent(self) -> list[list[int]]:
        return [values for values, _ in self.calls]


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def items(*images: str | None) -> list[BulkItem]:
    """Items whose image text says what it is and which item it belongs to."""
    return [
        BulkItem(str(i), None if image is None else f"{image}:{i}")
        for i, image in enumerate(images)
    ]


def read_image(image: str) -> np.ndarray:
    """What the decode pool runs per image: a corrupt one raises, as decode_image does."""
    kind, id_ = image.split(":")
    if kind == "corrupt":
        raise InvalidImage("image data is truncated or corrupt")
    return np.full((2, 2, 3), int(id_), dtype=np.uint8)


def test_each_chunk_goes_to_the_model_as_soon_as_it_is_decoded():
    async def scenario() -> None:
        stage, bulk = Stage(), items(*["photo"] * 6)
        task = asyncio.create_task(embed_items(bulk, stage, read_image, 2))
        await settle()
        assert stage.started == [str(i) for i in range(6)]  # every decode handed over at once
        assert stage.sent() == []
        stage.decoded(0, 1)
        await settle()
        # The first chunk is with the model while images 2..5 are still being decoded.
        assert stage.sent() == [[0, 1]]
        stage.decoded(3)  # out of order: chunk 2-3 still waits for image 2
        await settle()
        assert stage.sent() == [[0, 1]]
        stage.decoded(2)
        await settle()
        assert stage.sent() == [[0, 1], [2, 3]]
        stage.answer(1)  # answers may come back in any order
        stage.decoded(4, 5)
        await settle()
        stage.answer(0)
        stage.answer(2)
        await task
        assert stage.sent() == [[0, 1], [2, 3], [4, 5]]
        assert [float(item.vector[0]) for item in bulk if item.vector is not None] == [
            0.0, 1.0, 2.0, 3.0, 4.0, 5.0,
        ]  # fmt: skip

    asyncio.run(scenario())


def test_bad_items_keep_their_own_errors_and_are_never_sent():
    async def scenario() -> None:
        stage = Stage()
        bulk = items("photo", "corrupt", "photo", None, "photo")
        bulk[3].error = InvalidRequest("image: a base64 string is required")
        task = asyncio.create_task(embed_items(bulk, stage, read_image, 2))
        stage.decoded(0, 1, 2, 4)
        await settle()
        assert stage.sent() == [[0], [2], [4]]  # per chunk, only what decoded
        stage.answer(0)
        stage.answer(1, refuse=True)  # the model refuses one chunk: only its image fails
        stage.answer(2)
        await task
        outcome = [
            "vector" if item.vector is not None else type(item.error).__name__ for item in bulk
        ]
        assert outcome == ["vector", "InvalidImage", "Overloaded", "InvalidRequest", "vector"]

    asyncio.run(scenario())


def test_a_client_that_goes_away_leaves_no_decode_or_call_behind():
    async def scenario() -> None:
        stage = Stage()
        task = asyncio.create_task(embed_items(items(*["photo"] * 4), stage, read_image, 2))
        stage.decoded(0, 1)
        await settle()
        assert stage.sent() == [[0, 1]]
        task.cancel()
        await settle()
        assert task.cancelled()
        assert sorted(stage.cancelled) == ["2", "3"]
        assert stage.calls[0][1].cancelled()

    asyncio.run(scenario())
