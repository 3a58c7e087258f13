"""The launcher's watch (deployments/ops/launch.py): what it reads as Ray gone. A slow answer
from its actor is not: on a loaded node (a model loading beside Weaviate on two cores) the
actor's first answer took longer than one call's timeout, and the launcher stopped a healthy
service (CI, 2026-12-05). Ray is gone when its actor is dead, or silent for UNRESPONSIVE_S.
Ray's calls are faked here (`local=False`: no local Ray processes to look at)."""

from __future__ import annotations

import time

import pytest
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from deployments.ops import launch


class _Method:
    """A method of the fake actor: each call returns this object as its reference, and each
    `ray.get` of it gives the next outcome (the last one for ever)."""

    def __init__(self, outcomes: list[object]) -> None:
        self.outcomes = outcomes
        self.calls = 0

    def remote(self, *args: object) -> _Method:
        self.calls += 1
        return self

    def next(self) -> object:
        return self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]


class FakeLifecycle:
    """Each method answers its outcomes in turn; an exception as an outcome is what
    `ray.get` raises for it."""

    def __init__(self, inflight=(0,), drain=(None,), drained=(True,)) -> None:
        self.inflight = _Method(list(inflight))
        self.drain = _Method(list(drain))
        self.drained = _Method(list(drained))


@pytest.fixture(autouse=True)
def fake_get(monkeypatch):
    def get(ref: _Method, timeout: float | None = None) -> object:
        outcome = ref.next()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(ray, "get", get)


def test_an_answer_is_counted():
    watch = launch._Watch()
    launch._count(FakeLifecycle(inflight=[5]), watch, local=False)
    assert watch.inflight == 5 and watch.ray_down is None


def test_a_slow_answer_from_the_launchers_actor_is_not_ray_gone():
    watch = launch._Watch(inflight=3)
    launch._count(FakeLifecycle(inflight=[GetTimeoutError("slow")]), watch, local=False)
    assert watch.ray_down is None and watch.inflight == 3  # the last count kept


def test_a_slow_question_is_waited_on_not_asked_again():
    watch = launch._Watch()
    lifecycle = FakeLifecycle(inflight=[GetTimeoutError("slow"), GetTimeoutError("slow"), 4])
    for _ in range(3):
        launch._count(lifecycle, watch, local=False)
    assert lifecycle.inflight.calls == 1 and watch.inflight == 4


def test_an_actor_silent_past_the_limit_is_ray_gone():
    watch = launch._Watch(counted_at=time.monotonic() - launch.UNRESPONSIVE_S - 1)
    launch._count(FakeLifecycle(inflight=[GetTimeoutError("slow")]), watch, local=False)
    assert watch.ray_down is not None and "has not answered for" in watch.ray_down


def test_a_dead_actor_is_ray_gone_at_once():
    watch = launch._Watch()
    launch._count(FakeLifecycle(inflight=[RayActorError()]), watch, local=False)
    assert watch.ray_down is not None and "did not answer" in watch.ray_down


def test_a_drain_the_actor_is_slow_to_take_still_drains():
    watch = launch._Watch()
    lifecycle = FakeLifecycle(drain=[GetTimeoutError("slow")], drained=[False, True])
    assert launch._drain(lifecycle, watch, accept_s=0.1, grace_s=5, local=False)
    assert watch.ray_down is None
