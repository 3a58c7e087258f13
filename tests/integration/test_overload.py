"""Past capacity, every request gets a JSON answer within the request timeout: 200, or 503
with Retry-After. None is lost or hangs, the ingress's memory stays bounded, and the service
serves normally right after."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx
import pytest

from tests.support.images import b64, encode, photo
from tests.support.service import deploy, rss_mb

TIMEOUT_S = 4.0
# Slack for the HTTP hops, the proxy and the client itself on a loaded 2-core machine.
MARGIN_S = 3.0


@pytest.fixture(scope="module")
def slow(serve_instance, resnet50_file):
    """ResNet50 on one thread, eager (a few images a second here), answering within 4 s.

    Eager, not the faster default engine: the burst is 10x the model's capacity, and every
    request of it also costs the HTTP path (here Serve's Python proxy, ~7 ms of one core
    each) a fixed amount. On the default engine the burst doubled to ~750 requests, which
    the proxy alone took longer than the timeout to pass in on a slower CI machine (slowest
    answer 15.4 s): that measured the proxy on 2 cores, not the model's admission."""
    env = {
        "IMG2VEC_MODEL": "resnet50",
        "IMG2VEC_WEIGHTS": str(resnet50_file),
        "IMG2VEC_ENGINE": "eager",
        "IMG2VEC_TORCH_THREADS": "1",
        "IMG2VEC_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
    }
    url = deploy("overload", "/overload", env, serve_instance.base_url)
    yield url
    from ray import serve

    serve.delete("overload")


IMAGE = b64(encode(photo("coffee").resize((320, 240)), "JPEG"))


def body(i: int) -> bytes:
    return json.dumps({"id": f"burst-{i}", "image": IMAGE}).encode()


async def burst(url: str, n: int) -> list[tuple[object, float, dict]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

        async def one(i: int) -> tuple[object, float, dict]:
            started = time.monotonic()
            try:
                r = await client.post(url + "/vectors", content=body(i))
            except httpx.HTTPError as exc:
                return type(exc).__name__, time.monotonic() - started, {}
            took = time.monotonic() - started
            info = {
                "type": r.headers.get("content-type", ""),
                "retry": r.headers.get("retry-after"),
            }
            info["json"] = r.json() if info["type"].startswith("application/json") else None
            return r.status_code, took, info

        return await asyncio.gather(*(one(i) for i in range(n)))


def capacity(url: str) -> float:
    """Images this application finishes within the request timeout, measured."""
    started = time.monotonic()
    results = asyncio.run(burst(url, 8))
    assert [status for status, _, _ in results] == [200] * 8, results
    return 8 / (time.monotonic() - started) * TIMEOUT_S


def test_ten_times_capacity_is_answered_in_json_within_the_timeout(slow, serve_instance):
    fits = capacity(slow)
    # Ten times what fits, at most 500: past that the proxy, not the model, is measured.
    n = max(200, min(int(10 * fits) + 1, 500))
    ingress = serve_instance.replica_pid("overload", "Ingress")
    before = rss_mb(ingress)
    results = asyncio.run(burst(slow, n))
    grown = rss_mb(ingress) - before
    statuses = Counter(status for status, _, _ in results)
    slowest = max(took for _, took, _ in results)
    print(
        f"capacity within {TIMEOUT_S} s: {fits:.0f}; sent {n}: {dict(statuses)}; "
        f"slowest answer {slowest:.1f} s; ingress RSS +{grown:.0f} MB"
    )
    assert set(statuses) <= {200, 503}, statuses  # every request answered, nothing lost
    assert statuses[200] >= 1 and statuses[503] >= n // 2
    assert slowest <= TIMEOUT_S + MARGIN_S
    for status, _, info in results:
        assert info["type"].startswith("application/json"), info
        if status == 503:
            assert set(info["json"]) == {"error"} and info["retry"] == "1", info
    assert grown < 250  # per request: its pixels and their copy to the model, ~0.45 MB
    # ...and right after, it serves normally.
    assert httpx.get(slow + "/.well-known/ready").status_code == 204
    again = asyncio.run(burst(slow, 4))
    assert [status for status, _, _ in again] == [200] * 4


def test_a_full_model_queue_is_answered_at_once_not_at_the_timeout(slow):
    """Refusals come from the model's admission (it knows how far behind it is), not from
    the deadline: the typical 503 of a burst comes well before the timeout."""
    results = asyncio.run(burst(slow, 200))
    refused = sorted(took for status, took, _ in results if status == 503)
    assert refused, "expected refusals"
    fast = sum(took < TIMEOUT_S / 2 for took in refused)
    print(
        f"{len(refused)} refused; median {refused[len(refused) // 2]:.2f} s; {fast} under "
        f"{TIMEOUT_S / 2} s"
    )
    assert refused[len(refused) // 2] < TIMEOUT_S - 0.5
    # No refusal waits for the deadline: each is decided at the door or as soon as the
    # model's backlog says so (the door counts requests still being read and decoded).
    assert refused[-1] < TIMEOUT_S, refused[-5:]
