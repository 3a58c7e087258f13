"""The embedder's ForwardQueue: a lone request runs at once, and batches that close while
the device is busy are merged into the next forward pass. A small deterministic fake model
(sleeps, returns the image's first pixel) stands in for the network."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from deployments.embedder import ForwardQueue


class FakeModel:
    def __init__(self, seconds: float = 0.05, fail_on: int | None = None) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.calls: list[int] = []
        self.threads: set[int] = set()

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        self.calls.append(len(images))
        self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        if self.fail_on is not None and any(int(img[0, 0, 0]) == self.fail_on for img in images):
            raise RuntimeError("device fault")
        return np.array([[float(img[0, 0, 0])] for img in images], dtype=np.float32)


def image(value: int) -> np.ndarray:
    return np.full((2, 2, 3), value, dtype=np.uint8)


def test_a_lone_batch_runs_at_once():
    model = FakeModel(seconds=0.0)

    async def main():
        queue = ForwardQueue(model, max_images=8)
        started = time.perf_counter()
        out = await queue.submit([image(7)])
        return out, time.perf_counter() - started

    out, elapsed = asyncio.run(main())
    assert out.tolist() == [[7.0]]
    assert model.calls == [1]
    assert elapsed < 0.5


def test_batches_that_arrive_while_busy_are_merged_and_results_go_back_in_order():
    model = FakeModel(seconds=0.1)

    async def main():
        queue = ForwardQueue(model, max_images=8)
        first = asyncio.create_task(queue.submit([image(1)]))
        await asyncio.sleep(0.02)  # the first forward pass is now running
        later = [
            asyncio.create_task(queue.submit([image(10 + i), image(20 + i)])) for i in range(3)
        ]
        return await first, await asyncio.gather(*later), queue

    first, later, queue = asyncio.run(main())
    assert first.tolist() == [[1.0]]
    assert [v.ravel().tolist() for v in later] == [[10, 20], [11, 21], [12, 22]]
    assert model.calls == [1, 6]  # three batches of 2 merged into one pass of 6
    assert dict(queue.sizes) == {1: 1, 6: 1}
    assert len(model.threads) == 1  # every pass on the same thread


def test_merging_stops_at_max_images_without_splitting_a_batch():
    model = FakeModel(seconds=0.05)

    async def main():
        queue = ForwardQueue(model, max_images=4)
        first = asyncio.create_task(queue.submit([image(0)]))
        await asyncio.sleep(0.01)
        rest = [asyncio.create_task(queue.submit([image(i)] * 3)) for i in range(1, 4)]
        await first
        await asyncio.gather(*rest)

    asyncio.run(main())
    assert model.calls == [1, 3, 3, 3]


def test_a_failing_pass_fails_only_its_own_requests():
    model = FakeModel(seconds=0.05, fail_on=66)

    async def main():
        queue = ForwardQueue(model, max_images=2)
        first = asyncio.create_task(queue.submit([image(1)]))
        await asyncio.sleep(0.01)
        bad = asyncio.create_task(queue.submit([image(66), image(2)]))
        good = asyncio.create_task(queue.submit([image(3)]))
        await first
        with pytest.raises(RuntimeError, match="device fault"):
            await bad
        return await good

    assert asyncio.run(main()).tolist() == [[3.0]]
