"""The Embedder as a building block: another Serve deployment composes it through its handle
and sends single images (`embed()`); the model replica's `@serve.batch` gathers the calls that
arrive together, and every call still gets its own image's vector, the same one the HTTP
route gives."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import numpy as np

from tests.support.images import b64, encode
from tests.support.parity import assert_same_vector, min_separation

BURST = 64


def _composer_app():
    """A deployment of another application that holds a handle to the resnet50 app's
    Embedder (defined here so that Ray pickles it by value)."""
    from ray import serve

    @serve.deployment(name="Composer", ray_actor_options={"num_cpus": 0})
    class Composer:
        def __init__(self) -> None:
            self._embedder = serve.get_deployment_handle("Embedder", app_name="resnet50")

        async def burst(self, images: np.ndarray) -> tuple[list[np.ndarray], dict, dict]:
            before = (await self._embedder.describe.remote())["gathering"]
            vectors = await asyncio.gather(*(self._embedder.embed.remote(i) for i in images))
            after = (await self._embedder.describe.remote())["gathering"]
            return list(vectors), before, after

    return Composer.bind()


def test_another_deployment_composes_the_embedder_and_its_calls_are_gathered(resnet_url, photos):
    from ray import serve

    from img2vec.inputs.preprocessing import get_preset

    preset = get_preset("stretch224")
    names = sorted(photos)
    images = [photos[name].convert("RGB") for name in names]
    pixels = np.stack([preset.to_array(img) for img in images])
    over_http = [
        np.array(
            httpx.post(
                resnet_url + "/vectors",
                content=json.dumps({"id": name, "image": b64(encode(img, "PNG"))}),
                timeout=60,
            ).json()["vector"]
        )
        for name, img in zip(names, images, strict=True)
    ]

    handle = serve.run(_composer_app(), name="composer", route_prefix=None)
    try:
        burst = np.stack([pixels[i % len(pixels)] for i in range(BURST)])
        vectors, before, after = handle.burst.remote(burst).result(timeout_s=120)
    finally:
        serve.delete("composer")

    # Each call got its own image's vector, as the HTTP route computes it.
    separation = min_separation(dict(zip(names, over_http, strict=True)))
    for i, vector in enumerate(vectors):
        assert_same_vector(vector, over_http[i % len(pixels)], separation, f"call {i}")
    # ...and @serve.batch gathered the calls that arrived together: fewer gatherings than
    # calls (one each without the decorator; none at all if embed() bypassed it).
    calls = after["calls"] - before["calls"]
    gatherings = after["gatherings"] - before["gatherings"]
    assert calls == BURST
    assert 0 < gatherings < calls, (gatherings, calls)


def test_a_call_cancelled_by_its_caller_leaves_the_models_queue(resnet_url):
    """A composing caller that gives up (Serve's `response.cancel()`) frees the model of its
    images: they are dropped before their pass instead of being computed for nobody."""
    from ray import serve

    embedder = serve.get_deployment_handle("Embedder", app_name="resnet50")
    rng = np.random.default_rng(7)
    group = rng.integers(0, 256, (8, 224, 224, 3), dtype=np.uint8)
    before = embedder.describe.remote().result(timeout_s=60)["batching"]
    # Enough ahead of it that the cancelled call is still queued when it is cancelled.
    ahead = [embedder.embed_group.remote(group, [None] * len(group)) for _ in range(6)]
    cancelled = embedder.embed_group.remote(group, [None] * len(group))
    time.sleep(0.3)  # long enough to reach the replica, far shorter than the passes ahead
    cancelled.cancel()
    for response in ahead:
        assert all(isinstance(v, np.ndarray) for v in response.result(timeout_s=120).results)
    after = embedder.describe.remote().result(timeout_s=60)["batching"]

    assert after["dropped_caller_gone"] - before["dropped_caller_gone"] == len(group)
    assert after["images"] - before["images"] == len(ahead) * len(group)
