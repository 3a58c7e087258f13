"""The Edge (deployments/edge/edge.py) without Ray: one ingress replica's shared path, driven
as a route drives it (`exchange`, `read`, `embed`, `answer`) with a stand-in for the model's
handle and real Starlette requests. What every request of both protocols gets from it: its
answer within `request_timeout_s`, every error a JSON body with its status, the byte budget and
the door given back on every path, drain and readiness. (Over real Serve and HTTP:
tests/integration/test_api.py and test_overload.py.)"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import numpy as np
import pytest
from starlette.requests import Request

from deployments import lifecycle
from deployments.edge import edge as edge_module
from deployments.edge.edge import Edge, parse_json
from deployments.edge.neural import VectorRequest
from deployments.handoff import GroupAnswer
from deployments.settings import IngressSettings
from img2vec.errors import INTERNAL_ERROR
from img2vec.serving.overload import Backlog


class Call:
    """`handle.method.remote(...)`: an awaitable answered by `answer`, or never (`hang`)."""

    def __init__(self, answer: Any = None, hang: bool = False) -> None:
        self.answer = answer
        self.hang = hang
        self.calls = 0

    def remote(self, *args: Any) -> Any:
        self.calls += 1
        return self._result(*args)

    async def _result(self, *args: Any) -> Any:
        if self.hang:
            await asyncio.Event().wait()
        return self.answer(*args) if callable(self.answer) else self.answer


def vectors_of(images: np.ndarray, deadlines: list[float]) -> GroupAnswer:
    vectors = [np.full(4, float(image[0, 0, 0]), np.float32) for image in images]
    return GroupAnswer(vectors, Backlog(0.0, 0.001, max_pass=8))


class FakeModel:
    def __init__(self, hang: bool = False) -> None:
        self.info = Call({"seconds_per_image": 0.001})
        self.describe = Call({"model": "fake", "batching": {}})
        self.embed_group = Call(vectors_of, hang=hang)


def post(body: bytes, declared: int | None = None) -> tuple[Request, list[int]]:
    """A POST whose body arrives in one message; the list counts the body's reads."""
    size = len(body) if declared is None else declared
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/vectors",
        "headers": [(b"content-length", str(size).encode())],
    }
    reads: list[int] = []

    async def receive() -> dict[str, Any]:
        reads.append(1)
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive), reads


def run(test: Any, model: FakeModel | None = None, **settings: Any) -> Any:
    async def main() -> Any:
        edge = Edge(model or FakeModel(), IngressSettings(**settings), "replica-1")
        try:
            return await test(edge)
        finally:
            for task in edge._tasks:
                task.cancel()

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    # Started without the launcher: no lifecycle actor to find (and no Ray to ask).
    monkeypatch.setattr(lifecycle, "find", lambda: None)


async def vectors_route(edge: Edge, request: Request, door: bool = True) -> Any:
    """The shape of the /vectors route: read, parse, embed, answer."""
    async with edge.exchange("/vectors", request, door=door) as ex:
        body = await ex.read(edge.settings.max_body_bytes)
        req = parse_json(VectorRequest, body)
        pixels = np.full((2, 2, 3), len(req.id), np.uint8)
        vector = await ex.embed(pixels)
        ex.answer(json.dumps({"id": req.id, "vector": vector.tolist()}).encode())
    return ex.response


def error_of(response: Any) -> str:
    return str(json.loads(response.body)["error"])


def test_a_request_is_answered_and_gives_back_all_it_held():
    async def test(edge: Edge) -> Any:
        request, _ = post(b'{"id": "abc", "image": "x"}')
        response = await vectors_route(edge, request)
        return response, edge.budget.held, edge.inflight, edge.client._inside

    response, held, inflight, inside = run(test)
    assert response.status_code == 200
    assert json.loads(response.body) == {"id": "abc", "vector": [3.0] * 4}
    assert (held, inflight, inside) == (0, 0, 0)


def test_a_body_declared_past_its_limit_is_413_before_it_is_read():
    async def test(edge: Edge) -> Any:
        request, reads = post(b"{}", declared=1001)
        response = await vectors_route(edge, request)
        return response, reads, edge.budget.held, edge.client._inside

    response, reads, held, inside = run(test, max_body_bytes=1000)
    assert response.status_code == 413 and "max_body_bytes" in error_of(response)
    assert reads == [] and (held, inside) == (0, 0)


def test_past_the_byte_budget_a_request_is_503_with_retry_after():
    async def test(edge: Edge) -> Any:
        edge.budget.take(990)  # what other requests hold
        request, reads = post(b'{"id": "abc", "image": "x"}')
        response = await vectors_route(edge, request)
        return response, reads, edge.budget.held

    response, reads, held = run(
        test, max_body_bytes=1000, max_bulk_bytes=1000, max_inflight_bytes=1000
    )
    assert response.status_code == 503 and "max_inflight_bytes" in error_of(response)
    assert response.headers["Retry-After"] and reads == [] and held == 990


def test_a_request_the_model_does_not_answer_in_time_is_503_and_leaves_the_door():
    async def test(edge: Edge) -> Any:
        request, _ = post(b'{"id": "abc", "image": "x"}')
        response = await vectors_route(edge, request)
        return response, edge.budget.held, edge.inflight, edge.client._inside

    response, held, inflight, inside = run(test, FakeModel(hang=True), request_timeout_s=0.2)
    assert response.status_code == 503 and "not answered within 0.2 s" in error_of(response)
    assert (held, inflight, inside) == (0, 0, 0)


def test_a_bad_body_is_422_saying_what_without_echoing_it():
    async def test(edge: Edge) -> Any:
        request, _ = post(b'{"id": "abc", "img": "secret-bytes"}')
        return await vectors_route(edge, request)

    response = run(test)
    assert response.status_code == 422 and "image" in error_of(response)
    assert "secret-bytes" not in error_of(response)


def test_a_bug_in_a_route_is_a_json_500_logged_and_counted_out(caplog):
    async def test(edge: Edge) -> Any:
        request, _ = post(b'{"id": "abc", "image": "x"}')
        async with edge.exchange("/vectors", request, door=True) as ex:
            await ex.read(1000)
            raise RuntimeError("a bug")
        return ex.response, edge.budget.held, edge.inflight, edge.client._inside

    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        response, held, inflight, inside = run(test)
    assert response.status_code == 500 and error_of(response) == INTERNAL_ERROR
    assert "/vectors failed" in caplog.text and "a bug" in caplog.text
    assert (held, inflight, inside) == (0, 0, 0)


def test_readiness_waits_for_the_model_and_a_drain_turns_it_and_the_door_away():
    async def test(edge: Edge) -> Any:
        seen = [edge.ready()]
        for _ in range(100):  # the health watch's first probe
            if edge.health.info is not None:
                break
            await asyncio.sleep(0.01)
        seen.append(edge.ready())
        edge.drain.state = lifecycle.REFUSING
        seen.append(edge.ready())
        request, reads = post(b'{"id": "abc", "image": "x"}')
        seen.append(await vectors_route(edge, request))
        return seen, reads

    (loading, ready, draining, refused), reads = run(test)
    assert loading.status_code == 503 and error_of(loading) == "model is loading"
    assert ready.status_code == 204
    assert draining.status_code == 503 and "shutting down" in error_of(draining)
    assert refused.status_code == 503 and "retry elsewhere" in error_of(refused)
    assert reads == []


def test_meta_is_the_models_identity_with_this_replicas_limits_and_calls():
    async def test(edge: Edge) -> Any:
        request, _ = post(b'{"id": "abc", "image": "x"}')
        await vectors_route(edge, request)
        return await edge.meta("img2vec-neural", {"max_body_bytes": 1000})

    meta = json.loads(run(test).body)
    assert meta["protocol"] == "img2vec-neural" and meta["model"] == "fake"
    assert meta["limits"] == {"max_body_bytes": 1000}
    assert meta["ingress"] == {"calls_to_model": 1, "inputs_to_model": 1}
    assert meta["version"] == edge_module.img2vec.__version__


def test_a_body_of_the_wrong_json_type_is_told_its_own_protocols_shape():
    from deployments.edge.clip import ClipRequest
    from img2vec.errors import InvalidRequest

    for schema, named, foreign in (
        (VectorRequest, "'image'", "texts"),
        (ClipRequest, "'texts'", "'id'"),
    ):
        with pytest.raises(InvalidRequest) as refused:
            parse_json(schema, b"[1, 2]")
        assert named in refused.value.message and foreign not in refused.value.message


def test_tokenizing_is_timed_apart_from_decoding_in_the_access_line(caplog):
    async def test(edge: Edge) -> Any:
        request, _ = post(b'{"texts": ["a"]}')
        async with edge.exchange("/vectorize", request) as ex:
            await ex.read(1000)
            await ex.decode(time.sleep, 0.0)
            await ex.tokenize(time.sleep, 0.05)
            ex.answer(b"{}")
        return ex.timing

    with caplog.at_level(logging.INFO, logger="ray.serve.img2vec.access"):
        timing = run(test)
    assert timing.tokenize_s >= 0.05 > timing.decode_s
    (line,) = [r.getMessage() for r in caplog.records if r.name.endswith("access")]
    decode_ms = float(line.split("decode_ms=")[1].split()[0])
    assert decode_ms < 50 <= float(line.split("tokenize_ms=")[1].split()[0])


def test_the_door_counts_every_input_a_request_carries_until_it_is_answered():
    async def test(edge: Edge) -> Any:
        # The model's last word: an input costs 1 s; requests have 20 s.
        edge.client._backlog = Backlog(0.0, 1.0, max_pass=8)
        edge.client._said_at = time.monotonic()
        request, _ = post(b'{"texts": ["a"]}')
        seen = []
        async with edge.exchange("/vectorize", request, door=True) as ex:
            await ex.read(1000)
            ex.carries(25)  # a request of 25 inputs: 25 s of work ahead of the next one
            seen.append(edge.client._inside)
            late, _ = post(b'{"texts": ["b"]}')
            seen.append(await vectors_route(edge, late))
            ex.answer(b"{}")
        seen.append(edge.client._inside)
        return seen

    inside, late, after = run(test)
    assert inside == 25 and after == 0
    assert late.status_code == 503 and "25.0 s behind" in error_of(late)


class RecordingEdge:
    """What the shared routes ask of an Edge, recorded."""

    def __init__(self, settings: IngressSettings) -> None:
        self.settings = settings
        self.asked: list[Any] = []

    def ready(self, *, loading: bool = False) -> str:
        self.asked.append(("ready", loading))
        return "ready"

    async def meta(self, protocol: str, limits: dict[str, Any]) -> str:
        self.asked.append(("meta", protocol, limits))
        return "meta"


def served_routes(routes: list[Any]) -> list[tuple[str, Any]]:
    """(path, endpoint) of every route, those Serve moved into an included router too."""
    found = []
    for route in routes:
        if getattr(route, "endpoint", None) is not None:
            found.append((route.path, route.endpoint))
        router = getattr(route, "original_router", None)
        if router is not None:
            found += served_routes(router.routes)
    return found


def test_live_ready_and_meta_are_declared_once_for_every_protocol():
    """Both protocols' apps route /.well-known/live, /.well-known/ready and /meta to the one
    `EdgeRoutes` declaration; each protocol only says its name, its limits and whether it is
    still loading."""
    from deployments.edge import clip, neural

    shared = {"/.well-known/live": "live", "/.well-known/ready": "ready", "/meta": "meta"}
    for app in (neural.app, clip.clip_app):
        routes = {path: endpoint.__qualname__ for path, endpoint in served_routes(app.routes)}
        assert {path: routes[path] for path in shared} == {
            path: f"EdgeRoutes.{name}" for path, name in shared.items()
        }
    settings = IngressSettings()

    def bare(deployment: Any, **state: Any) -> Any:
        """The protocol's own class (beneath Serve's ASGI wrapper), not initialised."""
        protocol = deployment.func_or_class.__mro__[1]
        assert protocol.__name__ == deployment.func_or_class.__name__
        replica = object.__new__(protocol)
        replica._settings, replica._edge = settings, RecordingEdge(settings)
        replica.__dict__.update(state)
        return replica

    neural_replica = bare(neural.NeuralIngress)
    clip_replica = bare(clip.ClipIngress, _tokenizer=None)
    for replica in (neural_replica, clip_replica):
        asyncio.run(replica.ready())
        asyncio.run(replica.meta())
        assert asyncio.run(replica.live()).status_code == 204
    clip_limits = {k: v for k, v in settings.limits().items() if k != "max_bulk_bytes"}
    clip_limits["max_inputs"] = clip_limits.pop("max_bulk_items")
    assert neural_replica._edge.asked == [
        ("ready", False),
        ("meta", "img2vec-neural", settings.limits()),
    ]
    # multi2vec-clip is loading until the model replica has said how inputs are prepared.
    assert clip_replica._edge.asked == [("ready", True), ("meta", "multi2vec-clip", clip_limits)]
