"""`ModelHost` (deployments/model/models.py), the part of a model replica that is not the
model, run with a fake model and no Ray: a gathering of calls is queued in one step and each
call gets its own answer; a request that cannot make its deadline is refused whole while the
others run; a call that goes away takes its inputs out of the queue; `reconfigure` warms up
and applies the batch settings."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from deployments.model.models import ModelHost
from img2vec.errors import Overloaded
from img2vec.serving.batching import BatchSettings, Pending, WarmUp

IDENTITY = {
    "model": "fake",
    "weights": "none",
    "weights_sha256": None,
    "device": "cpu",
    "dtype": "float32",
    "preprocess": "none",
}


class FakeModel:
    """Each input x -> the vector [x, x]; every pass recorded. `hold()` makes the next pass
    wait until `release()`."""

    def __init__(self, seconds_per_image: float = 0.001) -> None:
        self.passes: list[list[int]] = []
        self.warmed: list[int] = []
        self.seconds_per_image = seconds_per_image
        self._gate = threading.Event()
        self._gate.set()
        self.started = threading.Event()

    def run(self, items: list[int]) -> list[np.ndarray]:
        self.started.set()
        self._gate.wait(10)
        self.passes.append(list(items))
        return [np.full(2, x, np.float32) for x in items]

    def warm_up(self, max_batch_size: int) -> WarmUp:
        self.warmed.append(max_batch_size)
        return WarmUp([1, max_batch_size], self.seconds_per_image)

    def hold(self) -> None:
        self._gate.clear()
        self.started.clear()

    def release(self) -> None:
        self._gate.set()


def host_of(model: FakeModel) -> ModelHost:
    return ModelHost(
        run=model.run,
        warm_up=model.warm_up,
        identity=lambda: dict(IDENTITY),
        location={"replica": "fake", "node_id": "fake"},
    )


def vectors(answer) -> list[float]:
    return [float(v[0]) for v in answer.results]


def test_calls_gathered_together_are_queued_at_once_and_each_answered_with_its_own():
    async def main():
        model = FakeModel()
        host = host_of(model)
        await host.reconfigure(BatchSettings(max_batch_size=8))
        gathering = [[Pending([1, 2], None)], [Pending([3], None), Pending([4, 5], None)]]
        first, second = host.enqueue(gathering)
        answers = await asyncio.gather(host.answer(first), host.answer(second))
        meta = host.describe()
        host.close()
        return model, answers, meta

    model, (first, second), meta = asyncio.run(main())
    assert vectors(first) == [1, 2] and vectors(second) == [3, 4, 5]
    assert model.passes == [[1, 2, 3, 4, 5]]  # queued in one step: one pass
    assert first.backlog is not None and second.backlog is not None
    assert meta["gathering"] == {"calls": 2, "gatherings": 1}
    assert meta["replica"] == "fake" and meta["model"] == "fake"


def test_a_request_that_cannot_make_its_deadline_is_refused_whole_and_the_others_run():
    async def main():
        model = FakeModel(seconds_per_image=1.0)  # the warm-up's estimate: 1 s an image
        host = host_of(model)
        await host.reconfigure(BatchSettings(max_batch_size=8))
        now = time.time()
        roomy, tight = Pending([1, 2, 3], now + 60), Pending([4, 5], now + 0.5)
        (queued, refused), (after,) = host.enqueue([[roomy, tight], [Pending([6], now + 60)]])
        answer = await host.answer([queued, refused])
        later = await host.answer([after])
        host.close()
        return model, answer, later

    model, answer, later = asyncio.run(main())
    assert [float(v[0]) for v in answer.results[:3]] == [1, 2, 3]
    assert all(isinstance(r, Overloaded) for r in answer.results[3:])
    assert vectors(later) == [6]
    assert [x for p in model.passes for x in p] == [1, 2, 3, 6]  # 4 and 5 never ran


def test_a_call_that_goes_away_takes_its_inputs_out_of_the_queue():
    async def main():
        model = FakeModel()
        host = host_of(model)
        await host.reconfigure(BatchSettings(max_batch_size=8))
        model.hold()
        (running,) = host.enqueue([[Pending([1], None)]])
        first = asyncio.create_task(host.answer(running))
        await asyncio.to_thread(model.started.wait, 10)  # pass [1] is running, held
        (waiting,) = host.enqueue([[Pending([2, 3], None)]])
        gone = asyncio.create_task(host.answer(waiting))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        model.release()
        answer = await first
        (last,) = host.enqueue([[Pending([4], None)]])
        await host.answer(last)
        meta = host.describe()
        host.close()
        return model, answer, gone, meta

    model, answer, gone, meta = asyncio.run(main())
    assert vectors(answer) == [1] and gone.cancelled()
    assert model.passes == [[1], [4]]
    assert meta["batching"]["dropped_caller_gone"] == 2


@pytest.mark.parametrize("size", [2, 3])
def test_reconfigure_warms_the_new_size_up_then_passes_take_at_most_that_many(size):
    async def main():
        model = FakeModel()
        host = host_of(model)
        await host.reconfigure(BatchSettings(max_batch_size=size))
        model.hold()
        (first,) = host.enqueue([[Pending([0], None)]])
        running = asyncio.create_task(host.answer(first))
        await asyncio.to_thread(model.started.wait, 10)
        (rest,) = host.enqueue([[Pending(list(range(1, 8)), None)]])
        model.release()
        answers = await asyncio.gather(running, host.answer(rest))
        meta = host.describe()
        host.close()
        return model, answers, meta

    model, (first, rest), meta = asyncio.run(main())
    assert model.warmed == [size]
    assert vectors(first) == [0] and vectors(rest) == list(range(1, 8))
    assert max(len(p) for p in model.passes[1:]) == size
    assert meta["batching"]["config"]["max_batch_size"] == size
