"""ModelClient (deployments/edge/client.py), the ingress's path to the model, against a
deterministic stand-in for the model's handle whose calls complete when the test says so:
requests that wait while calls are in flight leave together, and those that cannot make their
deadline are answered at once. (Over real Serve: tests/integration/test_api.py counts the calls,
test_overload.py times the refusals.)"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from deployments.edge.client import GROUPS_IN_FLIGHT, ModelClient
from deployments.edge.health import ModelHealth
from deployments.handoff import GroupAnswer
from img2vec.errors import Overloaded
from img2vec.serving.overload import Backlog


class FakeModel:
    """`embed_group.remote(images, deadlines)`: one pending call per invocation, answered by
    `answer()` with one vector per image and the backlog the test chooses."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, asyncio.Future]] = []
        self.embed_group = self
        self.embed_requests = FakeClipCalls()

    def remote(self, images: np.ndarray, deadlines: list[float]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.calls.append((images, future))
        return future

    def answer(self, i: int, behind_s: float = 0.0, per_image_s: float = 0.01) -> None:
        images, future = self.calls[i]
        vectors = [images[k, 0, 0].astype(np.float32) for k in range(len(images))]
        future.set_result(GroupAnswer(vectors, Backlog(behind_s, per_image_s, max_pass=8)))


def linked() -> tuple[FakeModel, ModelClient]:
    fake = FakeModel()
    return fake, ModelClient(fake, ModelHealth(10.0))  # type: ignore[arg-type]


def pixels(value: int) -> np.ndarray:
    return np.full((224, 224, 3), value, dtype=np.uint8)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_requests_that_wait_for_a_slot_leave_as_one_call():
    async def scenario() -> None:
        fake, link = linked()
        deadline = time.time() + 20
        tasks = [asyncio.create_task(link.embed(pixels(i), deadline)) for i in range(7)]
        await settle()
        # Two slots: the first two requests left alone; the other five wait.
        assert [len(images) for images, _ in fake.calls] == [1] * GROUPS_IN_FLIGHT
        fake.answer(0)
        await settle()
        assert [len(images) for images, _ in fake.calls] == [1, 1, 5]
        fake.answer(1)
        fake.answer(2)
        vectors = await asyncio.gather(*tasks)
        # Each request got its own image's vector back, in spite of the grouping.
        assert [int(v[0]) for v in vectors] == list(range(7))
        assert (link.calls, link.inputs) == (3, 7)

    asyncio.run(scenario())


def test_waiting_requests_that_cannot_make_their_deadline_are_refused_at_once():
    async def scenario() -> None:
        fake, link = linked()
        tasks = [asyncio.create_task(link.embed(pixels(i), time.time() + 4)) for i in range(6)]
        await settle()
        # The model says it is 10 s behind: nothing waiting here can be answered within 4 s.
        fake.answer(0, behind_s=10.0)
        await settle()
        for task in tasks[2:]:
            assert task.done()
            with pytest.raises(Overloaded, match="behind"):
                task.result()
        assert len(fake.calls) == 2  # none of them was sent
        # ...and a new request is refused before it would even wait.
        with pytest.raises(Overloaded):
            await link.embed(pixels(9), time.time() + 4)
        fake.answer(1)
        await asyncio.gather(*tasks[:2])

    asyncio.run(scenario())


def test_a_cancelled_request_is_left_out_of_its_group():
    async def scenario() -> None:
        fake, link = linked()
        deadline = time.time() + 20
        tasks = [asyncio.create_task(link.embed(pixels(i), deadline)) for i in range(4)]
        await settle()
        tasks[2].cancel()  # its client went away while it waited
        await settle()
        fake.answer(0, per_image_s=0.0)  # no estimate yet: nothing is shed, only skipped
        await settle()
        assert [len(images) for images, _ in fake.calls] == [1, 1, 1]
        fake.answer(1)
        fake.answer(2)
        assert int((await tasks[3])[0]) == 3

    asyncio.run(scenario())


def test_before_the_models_first_answer_its_probes_estimate_refuses_at_the_door():
    """A burst that arrives first: the door counts every request let in before (still being
    read or decoded, not waiting here yet) at the cost per image the model's probe reported
    from its warm-up, and refuses the ones that would not make their deadline, at once."""

    async def main() -> tuple[int, int, float]:
        _, link = linked()
        link._health.info = {"seconds_per_image": 0.1}
        deadline = time.time() + 1.0  # room for ~10 images at 0.1 s each
        held, refused = [], 0
        for i in range(30):
            try:
                link.enter(deadline)
            except Overloaded:
                refused += 1
            else:
                held.append(i)
        for _ in held:
            link.leave()
        return len(held), refused, link._inside

    admitted, refused, left = asyncio.run(main())
    assert 8 <= admitted <= 11 and admitted + refused == 30 and left == 0, (admitted, refused)


def test_without_any_estimate_the_door_lets_everything_in():
    _, link = linked()
    deadline = time.time() + 1.0
    for _ in range(30):
        link.enter(deadline)
    assert link._inside == 30


class FakeClipCalls:
    """`embed_requests.remote([(images, texts, deadline), ...])`, answered by `answer(i)`:
    each input's vector is its first value (image pixel or token id), in request order; a
    request whose first text starts with 999 is refused whole."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, asyncio.Future]] = []

    def remote(self, requests: list) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.calls.append((requests, future))
        return future

    def answer(self, i: int) -> None:
        requests, future = self.calls[i]
        results: list = []
        for images, texts, _ in requests:
            if texts and texts[0][0] == 999:
                results += [Overloaded("refused whole")] * (len(images) + len(texts))
                continue
            results += [np.float32([img[0, 0, 0]]) for img in images]
            results += [np.float32([t[0]]) for t in texts]
        future.set_result(GroupAnswer(results, Backlog(0.0, 0.001, max_pass=8)))


def test_clip_requests_that_wait_for_a_slot_leave_as_one_call_each_whole():
    async def scenario() -> None:
        fake, link = linked()
        clip = fake.embed_requests
        deadline = time.time() + 20

        def request(i: int, first: int | None = None) -> asyncio.Task:
            images = np.stack([pixels(i)]) if i % 2 else np.zeros((0, 224, 224, 3), np.uint8)
            texts = [np.int32([first or 100 + i, 1]), np.int32([200 + i])]
            return asyncio.create_task(link.embed_request(images, texts, deadline))

        tasks = [request(i) for i in range(6)] + [request(6, first=999)]
        await settle()
        # Two slots: the first two requests left alone; the other five wait.
        assert [len(requests) for requests, _ in clip.calls] == [1] * GROUPS_IN_FLIGHT
        clip.answer(0)
        await settle()
        # Up to the model's pass (8 inputs): requests of 2 and 3 inputs, each whole.
        assert [len(requests) for requests, _ in clip.calls] == [1, 1, 3]
        clip.answer(1)
        clip.answer(2)
        await settle()
        assert [len(requests) for requests, _ in clip.calls] == [1, 1, 3, 2]
        clip.answer(3)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        # Each request got its own vectors back, images first, in spite of the grouping...
        for i, vectors in enumerate(results[:6]):
            expected = ([i] if i % 2 else []) + [100 + i, 200 + i]
            assert [int(v[0]) for v in vectors] == expected
        # ...and a request the model refused is refused alone.
        assert isinstance(results[6], Overloaded)
        assert (link.calls, link.inputs) == (4, 6 * 2 + 3 + 2)

    asyncio.run(scenario())
