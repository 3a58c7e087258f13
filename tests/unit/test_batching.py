"""The batcher (img2vec/serving/batching.py), with a small deterministic fake model: it records each
pass, holds it until the test releases it, and answers each item with its own value, so
every assertion is about what ran together, never about timing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from img2vec.errors import NotReady, Overloaded
from img2vec.serving.batching import MAX_BATCH_SIZE, Batcher, BatchSettings


class FakeModel:
    """Returns 10 * item for each item. A pass blocks until `release()` when `gated`; it
    fails (like a device OOM) when it holds more than `fits` items, or on item 66."""

    def __init__(self, gated: bool = False, fits: int | None = None) -> None:
        self.passes: list[list[int]] = []
        self.threads: set[int] = set()
        self.fits = fits
        self._gate = threading.Semaphore(0) if gated else None
        self.started = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.passes.append(list(items))
        self.threads.add(threading.get_ident())
        self.started.set()
        if self._gate is not None:
            self._gate.acquire(timeout=10)
        if self.fits is not None and len(items) > self.fits:
            raise RuntimeError("CUDA out of memory (fake)")
        if 66 in items:
            raise RuntimeError("device fault")
        return [10 * i for i in items]

    def release(self, passes: int = 1) -> None:
        assert self._gate is not None
        for _ in range(passes):
            self._gate.release()


async def until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.005)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_a_lone_request_runs_at_once_in_a_pass_of_one():
    async def main():
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(max_batch_size=8))
        assert await batcher.submit([7]) == [70]
        return model, batcher

    model, batcher = run(main())
    assert model.passes == [[7]]
    assert batcher.snapshot()["batch_size_histogram"] == {"1": 1}


def test_what_waits_while_a_pass_runs_goes_together_into_the_next_in_order():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(max_batch_size=8))
        first = asyncio.ensure_future(batcher.submit([1]))
        await until(model.started.is_set)  # pass 1 is running
        later = [asyncio.ensure_future(batcher.submit([10 + i, 20 + i])) for i in range(3)]
        await asyncio.sleep(0.05)
        model.release(2)
        return await first, await asyncio.gather(*later), model, batcher

    first, later, model, batcher = run(main())
    assert first == [10]
    assert later == [[100, 200], [110, 210], [120, 220]]
    assert model.passes == [[1], [10, 20, 11, 21, 12, 22]]
    assert batcher.snapshot()["batch_size_histogram"] == {"1": 1, "6": 1}
    assert len(model.threads) == 1  # every pass on the same thread


def test_a_pass_never_exceeds_max_batch_size_oldest_first():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(max_batch_size=4))
        first = asyncio.ensure_future(batcher.submit([0]))
        await until(model.started.is_set)
        rest = asyncio.ensure_future(batcher.submit(list(range(1, 10))))
        await asyncio.sleep(0.05)
        model.release(4)
        await first
        return await rest, model

    rest, model = run(main())
    assert rest == [10 * i for i in range(1, 10)]
    assert model.passes == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_a_request_whose_caller_has_gone_is_dropped_before_its_pass():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(max_batch_size=8))
        first = asyncio.ensure_future(batcher.submit([1]))
        await until(model.started.is_set)
        gone = batcher.enqueue(2)
        kept = batcher.enqueue(3)
        gone.cancel()  # the client disconnected while the model was busy
        model.release(2)
        await first
        return await kept, model, batcher

    kept, model, batcher = run(main())
    assert kept == 30
    assert model.passes == [[1], [3]]  # 2 was never computed
    assert batcher.snapshot()["dropped_caller_gone"] == 1


def test_a_request_past_its_deadline_is_answered_overloaded_unrun():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(max_batch_size=8))
        first = asyncio.ensure_future(batcher.submit([1]))
        await until(model.started.is_set)
        late = batcher.enqueue(2, due=time.monotonic() + 0.01)
        fine = batcher.enqueue(3, due=time.monotonic() + 60)
        await asyncio.sleep(0.05)
        model.release(2)
        await first
        with pytest.raises(Overloaded, match="waited"):
            await late
        return await fine, model

    fine, model = run(main())
    assert fine == 30 and model.passes == [[1], [3]]


def test_a_request_that_its_pass_would_finish_too_late_for_is_answered_before_its_deadline():
    """With the cost of an image known (0.5 s here), a pass of three would end 1.5 s from now:
    a request due in 1 s is answered Overloaded at once, not computed and not left to its
    caller's timeout; the others run."""

    async def main():
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(max_batch_size=8))
        batcher.seed(0.5)
        now = time.monotonic()
        soon = batcher.enqueue(1, due=now + 1.0)
        later = [batcher.enqueue(i, due=now + 60) for i in (2, 3)]
        with pytest.raises(Overloaded, match=r"1\.5 s behind and this request has 1\.0 s left"):
            await soon
        answered_in = time.monotonic() - now
        return await asyncio.gather(*later), answered_in, model

    later, answered_in, model = run(main())
    assert later == [20, 30] and model.passes == [[2, 3]]
    assert answered_in < 0.5


def test_a_failing_pass_fails_only_its_own_requests():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(max_batch_size=2))
        first = asyncio.ensure_future(batcher.submit([1]))
        await until(model.started.is_set)
        bad = asyncio.ensure_future(batcher.submit([66, 2]))
        good = asyncio.ensure_future(batcher.submit([3]))
        await asyncio.sleep(0.05)
        model.release(3)
        await first
        with pytest.raises(RuntimeError, match="device fault"):
            await bad
        return await good, batcher

    good, batcher = run(main())
    assert good == [30]
    assert batcher.snapshot()["failed_passes"] == 1


def test_out_of_memory_splits_the_batch_and_retries_the_halves():
    async def main():
        model = FakeModel(fits=2)
        batcher = Batcher(
            model, BatchSettings(max_batch_size=8), is_out_of_memory=lambda e: "memory" in str(e)
        )
        return await batcher.submit(list(range(1, 6))), model, batcher

    out, model, batcher = run(main())
    assert out == [10, 20, 30, 40, 50]  # nobody failed
    assert model.passes == [[1, 2, 3, 4, 5], [1, 2, 3], [1, 2], [3], [4, 5]]
    assert batcher.snapshot()["oom_splits"] == 2
    assert batcher.snapshot()["batch_size_histogram"] == {"1": 1, "2": 2}


def test_out_of_memory_on_a_single_item_fails_that_item_alone():
    async def main():
        model = FakeModel(fits=0)
        batcher = Batcher(model, is_out_of_memory=lambda e: "memory" in str(e))
        results = await asyncio.gather(
            *(batcher.enqueue(i) for i in (1, 2)), return_exceptions=True
        )
        return results, model

    results, model = run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    assert model.passes == [[1, 2], [1], [2]]


def test_without_an_oom_predicate_a_failure_is_not_retried():
    async def main():
        model = FakeModel(fits=1)
        batcher = Batcher(model)
        with pytest.raises(RuntimeError):
            await batcher.submit([1, 2])
        return model

    assert run(main()).passes == [[1, 2]]


def test_the_wait_lets_an_idle_device_fill_a_batch_and_a_full_batch_goes_at_once():
    async def main():
        model = FakeModel()
        batcher = Batcher(model, BatchSettings(max_batch_size=3, batch_wait_timeout_s=0.5))
        started = time.monotonic()
        first = batcher.enqueue(1)
        await asyncio.sleep(0.02)
        others = [batcher.enqueue(2), batcher.enqueue(3)]  # fills the batch: runs now
        await asyncio.gather(first, *others)
        filled_after = time.monotonic() - started
        started = time.monotonic()
        await batcher.submit([4])  # alone: waits the full timeout, then runs
        alone_after = time.monotonic() - started
        return model, filled_after, alone_after

    model, filled_after, alone_after = run(main())
    assert model.passes == [[1, 2, 3], [4]]
    assert filled_after < 0.4 and alone_after >= 0.45


def test_settings_change_live_from_the_next_pass():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(max_batch_size=8))
        first = asyncio.ensure_future(batcher.submit([0]))
        await until(model.started.is_set)
        rest = asyncio.ensure_future(batcher.submit([1, 2, 3, 4]))
        batcher.reconfigure(BatchSettings(max_batch_size=2))
        model.release(3)
        await first
        await rest
        return model, batcher

    model, batcher = run(main())
    assert model.passes == [[0], [1, 2], [3, 4]]
    assert batcher.snapshot()["config"] == {"max_batch_size": 2, "batch_wait_timeout_s": 0.0}


def test_close_answers_whatever_is_queued():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model)
        first = batcher.enqueue(1)
        await until(model.started.is_set)
        waiting = batcher.enqueue(2)
        batcher.close()
        model.release()
        with pytest.raises(NotReady):
            await waiting
        with pytest.raises(NotReady):
            batcher.enqueue(3)
        return await first

    assert run(main()) == 10


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_batch_size": MAX_BATCH_SIZE + 1}, "max_batch_size"),
        ({"max_batch_size": 2.0}, "max_batch_size"),
        ({"batch_wait_timeout_s": -1}, "batch_wait_timeout_s"),
        ({"batch_wait_timeout_s": 5}, "batch_wait_timeout_s"),
        ({"max_batchsize": 4}, "unknown batch setting"),
    ],
)
def test_bad_settings_are_refused_with_their_name(config, fragment):
    with pytest.raises(ValueError, match=fragment):
        BatchSettings.from_user_config(config)


def test_settings_are_serves_user_config_keys():
    settings = BatchSettings.from_user_config({"max_batch_size": 16, "batch_wait_timeout_s": 0.01})
    assert settings.as_dict() == {"max_batch_size": 16, "batch_wait_timeout_s": 0.01}
    assert BatchSettings.from_user_config(None) == BatchSettings()


def test_the_expected_wait_counts_only_requests_still_waited_for():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(max_batch_size=1))
        assert batcher.expected_wait_s() == 0.0  # nothing measured yet
        first = batcher.enqueue(1)
        model.release()
        await first  # one pass measured: the cost per image is known
        model.started.clear()
        running = batcher.enqueue(2)
        await until(model.started.is_set)
        queued = [batcher.enqueue(i) for i in range(3, 8)]
        busy = batcher.expected_wait_s()
        for future in queued:
            future.cancel()  # their clients went away: no longer waited for
        await asyncio.sleep(0)
        after = batcher.expected_wait_s()
        model.release(10)
        await running
        return busy, after

    busy, after = run(main())
    assert after < busy / 2, (busy, after)


def test_the_expected_wait_leaves_out_requests_past_their_deadline():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(max_batch_size=1))
        first = batcher.enqueue(1)
        model.release()
        await first
        model.started.clear()
        running = batcher.enqueue(2)
        await until(model.started.is_set)
        soon = time.monotonic() + 0.05
        late = [batcher.enqueue(i, due=soon) for i in range(3, 8)]
        busy = batcher.expected_wait_s()
        await asyncio.sleep(0.1)  # their deadlines pass while the model is still busy
        after = batcher.expected_wait_s()
        model.release(10)
        await running
        await asyncio.gather(*late, return_exceptions=True)
        return busy, after

    busy, after = run(main())
    assert after < busy / 2, (busy, after)


def test_the_backlog_counts_what_waits_and_refuses_what_cannot_make_its_deadline():
    async def main():
        model = FakeModel(gated=True)
        batcher = Batcher(model, BatchSettings(max_batch_size=2))
        assert batcher.backlog().per_image_s == 0  # no estimate before a pass has run
        first = batcher.enqueue(1)
        await until(model.started.is_set)
        await asyncio.sleep(0.2)
        model.release()
        assert await first == 10
        per_image = batcher.seconds_per_image()
        assert per_image >= 0.2
        idle = batcher.backlog()
        waiting = [batcher.enqueue(i) for i in range(2, 6)]
        busy = batcher.backlog()
        model.release(3)
        await asyncio.gather(*waiting)
        return per_image, idle, busy

    per_image, idle, busy = run(main())
    assert (idle.behind_s, idle.max_pass) == (per_image, 2)
    # Four images queued in front of a new one: five images' worth until its result.
    assert busy.behind_s == pytest.approx(5 * per_image)
    assert busy.refusal(left_s=10 * per_image) is None
    refused = busy.refusal(left_s=10 * per_image, ahead=6)  # six more not yet enqueued
    assert isinstance(refused, Overloaded) and "behind" in refused.message
    # Seen later, with nothing added meanwhile, the same backlog is smaller.
    assert busy.aged(3 * per_image).behind_s == pytest.approx(2 * per_image)
    assert busy.aged(60).behind_s == 0
