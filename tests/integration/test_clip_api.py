"""Weaviate's multi2vec-clip protocol through real Ray Serve and real HTTP: the routes, the
vectors (the independent reference's, tests/support/clip_reference.py), the errors, long texts, and
concurrent requests sharing the towers' passes. Requests are sent as Weaviate's module client
sends them: JSON with a Content-Type, one object's texts and images per request."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter

import httpx
import numpy as np
import pytest

from tests.support.clip_reference import ReferenceClip, ReferenceOpenClip
from tests.support.images import b64, encode, photo
from tests.support.parity import min_separation, relative_error
from tests.support.service import deploy

BOUND = 1e-3  # the bound for the OpenAI CLIP path (tests/unit/test_towers.py)
MAX_INPUTS = 8
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def clip_url(serve_base, clip_dir) -> str:
    env = {
        "IMG2VEC_WEIGHTS": str(clip_dir),
        "IMG2VEC_DEVICE": "cpu",
        "IMG2VEC_TORCH_THREADS": "2",
        "IMG2VEC_MAX_BULK_ITEMS": str(MAX_INPUTS),
        "IMG2VEC_MAX_BODY_BYTES": "3000000",
        "IMG2VEC_MAX_IMAGE_BYTES": "1000000",
    }
    url = deploy("clip", "/clip", env, serve_base, builder="build_clip_app")
    yield url
    from ray import serve

    serve.delete("clip")


@pytest.fixture(scope="module")
def reference(clip_dir) -> ReferenceClip:
    return ReferenceClip(clip_dir)


def vectorize(url: str, texts=None, images=None, **kwargs) -> httpx.Response:
    body = json.dumps({"texts": texts, "images": images})
    return httpx.post(url + "/vectorize", content=body, timeout=60, **kwargs)


NAMES = ("astronaut", "chelsea", "coffee", "rocket")


def test_health_and_meta_describe_the_model_and_its_truncation(clip_url):
    assert httpx.get(clip_url + "/.well-known/live").status_code == 204
    assert httpx.get(clip_url + "/.well-known/ready").status_code == 204
    meta = httpx.get(clip_url + "/meta").json()
    assert meta["protocol"] == "multi2vec-clip"
    assert (meta["family"], meta["architecture"], meta["dim"]) == ("clip", "CLIPModel", 32)
    assert meta["text_context_tokens"] == 77 and "truncated to 77 tokens" in meta["long_texts"]
    assert meta["limits"]["max_inputs"] == MAX_INPUTS
    assert len(meta["weights_sha256"]) == 64


def test_texts_and_images_get_the_references_vectors_in_input_order(clip_url, reference):
    images = [photo(name) for name in NAMES]
    texts = ["a photo of a cat", "an astronaut on the moon", "coffee"]
    r = vectorize(clip_url, texts, [b64(encode(img, "PNG")) for img in images], headers=JSON)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"textVectors", "imageVectors"}
    ref_images, ref_texts = reference.images(images), reference.texts(texts)
    assert min_separation(dict(zip(NAMES, ref_images, strict=True))) > 100 * BOUND
    assert len(body["imageVectors"]) == 4 and len(body["textVectors"]) == 3
    for name, ours, ref in zip(NAMES, body["imageVectors"], ref_images, strict=True):
        assert relative_error(ours, ref) <= BOUND, name
    for text, ours, ref in zip(texts, body["textVectors"], ref_texts, strict=True):
        assert relative_error(ours, ref) <= BOUND, text


def test_what_nearText_and_nearImage_send_and_go_nil_slices(clip_url, reference):
    """Texts only, images only (the other field null, as Go's nil slice), nothing at all."""
    texts = vectorize(clip_url, ["a red rocket"], None).json()
    assert texts["imageVectors"] == [] and len(texts["textVectors"]) == 1
    assert relative_error(texts["textVectors"][0], reference.texts(["a red rocket"])[0]) <= BOUND
    images = vectorize(clip_url, None, [b64(encode(photo("coffee"), "JPEG"))]).json()
    assert images["textVectors"] == [] and len(images["imageVectors"]) == 1
    assert vectorize(clip_url).json() == {"textVectors": [], "imageVectors": []}


def test_a_text_longer_than_the_context_is_truncated_not_a_500(clip_url, reference):
    """The container answers these with a 500 (its issue 19, Weaviate issue 2909)."""
    long = "a photograph of " + " ".join(f"astronaut number {i}" for i in range(200))
    r = vectorize(clip_url, [long])
    assert r.status_code == 200, r.text
    assert relative_error(r.json()["textVectors"][0], reference.texts([long])[0]) <= BOUND


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"", 422, "body is empty"),
        (b"{not json", 422, "not valid JSON"),
        (json.dumps({"texts": [1]}).encode(), 422, "texts.0"),
        (json.dumps({"texts": "a cat"}).encode(), 422, "texts"),
        (json.dumps({"text": ["a cat"]}).encode(), 422, "text"),
        (json.dumps({"texts": ["x"] * (MAX_INPUTS + 1)}).encode(), 422, "max_bulk_items"),
        (json.dumps({"images": ["bm90IGFuIGltYWdl"]}).encode(), 400, "images[0]"),
        (json.dumps({"images": ["A" * 1_600_000]}).encode(), 413, "max_image_bytes"),
        (b'{"texts": ["' + b"a" * 3_100_000 + b'"]}', 413, "max_body_bytes"),
    ],
)
def test_bad_input_is_a_clear_json_4xx_and_the_service_stays_up(clip_url, body, status, says):
    r = httpx.post(clip_url + "/vectorize", content=body, timeout=60)
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and says in r.json()["error"], r.json()
    assert vectorize(clip_url, ["still here"]).status_code == 200


def test_one_bad_image_fails_its_own_request_only(clip_url):
    good = b64(encode(photo("chelsea"), "JPEG"))

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                client.post(clip_url + "/vectorize", json={"texts": ["x"], "images": [good, "!!"]}),
                client.post(clip_url + "/vectorize", json={"texts": ["x"], "images": [good]}),
            )

    bad, fine = asyncio.run(both())
    assert bad.status_code == 400 and "images[1]" in bad.json()["error"]
    assert fine.status_code == 200 and len(fine.json()["imageVectors"]) == 1


def test_concurrent_objects_share_the_towers_passes_and_each_gets_its_own_vectors(clip_url):
    """32 objects at once, each one image and one text of its own length (what Weaviate sends
    per object): every answer is that object's, bit for bit the vectors it gets alone (texts
    batched with longer ones included: Weaviate's BlobHash case compares with ==), and the
    model's passes held the inputs of several requests."""
    objects = [
        (photo(NAMES[i % 4]).rotate(9 * i), f"object number {i}" + " with more words" * (i % 5))
        for i in range(32)
    ]
    bodies = [{"texts": [text], "images": [b64(encode(img, "JPEG"))]} for img, text in objects]
    alone = [vectorize(clip_url, b["texts"], b["images"]).json() for b in bodies]
    before = httpx.get(clip_url + "/meta").json()["batching"]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(client.post(clip_url + "/vectorize", json=b) for b in bodies)
            )

    answers = asyncio.run(together())
    after = httpx.get(clip_url + "/meta").json()["batching"]
    assert [r.status_code for r in answers] == [200] * 32
    for i, (single, r) in enumerate(zip(alone, answers, strict=True)):
        for key in ("textVectors", "imageVectors"):
            ours = np.asarray(r.json()[key][0], np.float32)
            assert np.array_equal(ours, np.asarray(single[key][0], np.float32)), (i, key)
    texts = [np.asarray(r.json()["textVectors"][0]) for r in answers]
    assert min(relative_error(a, b) for a, b in itertools.pairwise(texts)) > 1e-3  # distinct
    passes, inputs = after["passes"] - before["passes"], after["images"] - before["images"]
    print(f"64 inputs of 32 requests in {passes} passes; largest {after['max_batch_size_run']}")
    assert inputs == 64 and passes < 32


def test_the_containers_smoke_test_holds_under_concurrent_load(clip_url):
    """multi2vec-clip-inference's own smoke_test.py: two copies of one image (and of one
    text) in one request get equal vectors. Here while 24 other requests of other images and
    texts of other lengths run at once, and equal to what that image and text get alone."""
    image = b64(encode(photo("astronaut"), "JPEG"))
    text = "an astronaut on a horse"
    alone = vectorize(clip_url, [text], [image]).json()
    others = [
        {"texts": ["a cup" + " of coffee" * i], "images": [b64(encode(photo(NAMES[i % 4]), "PNG"))]}
        for i in range(24)
    ]

    async def together() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            pair = {"texts": [text, text], "images": [image, image]}
            return await asyncio.gather(
                *(client.post(clip_url + "/vectorize", json=b) for b in [*others[:12], pair,
                                                                          *others[12:]])
            )  # fmt: skip

    answers = asyncio.run(together())
    assert [r.status_code for r in answers] == [200] * 25
    pair = answers[12].json()
    for key in ("imageVectors", "textVectors"):
        first, second = (np.asarray(v, np.float32) for v in pair[key])
        assert np.array_equal(first, second), key
        assert np.array_equal(first, np.asarray(alone[key][0], np.float32)), key


def test_the_default_multilingual_model_serves_sentence_transformers_vectors(
    serve_base, tmp_path_factory
):
    """multi2vec-clip's default layout (clip/ + text/) through the service: the vectors
    sentence-transformers gives for the same two directories, unnormalized as the
    container's."""
    from ray import serve
    from sentence_transformers import SentenceTransformer

    from tests.support.clip_models import write_multilingual

    root = write_multilingual(tmp_path_factory.mktemp("multilingual"))
    env = {"IMG2VEC_WEIGHTS": str(root), "IMG2VEC_TORCH_THREADS": "2"}
    url = deploy("multilingual", "/multilingual", env, serve_base, builder="build_clip_app")
    try:
        texts = ["Ein Foto einer Katze", "une photo d'un chat"]
        image = photo("astronaut")
        r = vectorize(url, texts, [b64(encode(image, "PNG"))], headers=JSON)
        assert r.status_code == 200, r.text
        ref_texts = SentenceTransformer(str(root / "text"), device="cpu").encode(texts)
        ref_image = SentenceTransformer(str(root / "clip"), device="cpu").encode([image])[0]
        for ours, ref in zip(r.json()["textVectors"], ref_texts, strict=True):
            assert relative_error(ours, ref) <= BOUND
        assert relative_error(r.json()["imageVectors"][0], ref_image) <= BOUND
        meta = httpx.get(url + "/meta").json()
        assert meta["family"] == "sentence-transformers" and meta["normalized"] is False
        assert meta["text_context_tokens"] == 128
    finally:
        serve.delete("multilingual")


def test_past_capacity_every_request_is_answered_200_or_a_json_503_in_time(serve_base, clip_dir):
    """A burst of objects far past what fits in a 1 s request timeout: each is answered, 200
    or a JSON 503 with Retry-After, within the timeout and some slack; none is lost."""
    from ray import serve

    env = {
        "IMG2VEC_WEIGHTS": str(clip_dir),
        "IMG2VEC_TORCH_THREADS": "1",
        "IMG2VEC_ENGINE": "eager",
        "IMG2VEC_REQUEST_TIMEOUT_S": "1",
    }
    url = deploy("clip-overload", "/clip-overload", env, serve_base, builder="build_clip_app")
    image = b64(encode(photo("coffee"), "JPEG"))
    body = {"texts": ["a cup of coffee"], "images": [image] * 4}

    async def burst() -> list[tuple[int, float, httpx.Response]]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def one() -> tuple[int, float, httpx.Response]:
                started = time.monotonic()
                r = await client.post(url + "/vectorize", json=body)
                return r.status_code, time.monotonic() - started, r

            return await asyncio.gather(*(one() for _ in range(200)))

    try:
        answers = asyncio.run(burst())
        # ...and right after, it serves normally.
        after = httpx.post(url + "/vectorize", json={"texts": ["a cat"]}, timeout=30)
    finally:
        serve.delete("clip-overload")
    assert after.status_code == 200, after.text
    statuses = Counter(status for status, _, _ in answers)
    print(
        f"200 objects of 4 images: {dict(statuses)}; slowest {max(t for _, t, _ in answers):.1f} s"
    )
    assert set(statuses) <= {200, 503} and statuses[503] > 0, statuses  # none lost
    for status, took, r in answers:
        assert took < 1 + 5, took  # the timeout, and slack for 200 connections on 2 cores
        if status == 503:
            assert set(r.json()) == {"error"} and r.headers["retry-after"] == "1"


FAMILY_IN_META = {"metaclip2": "metaclip_2", "siglip2": "siglip", "openclip": "openclip"}


@pytest.mark.parametrize("family", ["metaclip2", "siglip2", "openclip"])
def test_metaclip_2_siglip_2_and_openclip_serve_their_references_vectors(
    family, request, serve_base
):
    """MetaCLIP 2, SigLIP 2 and OpenCLIP through the service as Weaviate calls it: one
    object's texts and images against the family's reference library, then the same text
    alone and in a crowd of other requests (the same bits)."""
    path = request.getfixturevalue(f"{family}_dir")
    env = {"IMG2VEC_WEIGHTS": str(path), "IMG2VEC_DEVICE": "cpu", "IMG2VEC_TORCH_THREADS": "2"}
    url = deploy(family, f"/{family}", env, serve_base, builder="build_clip_app")
    try:
        reference: ReferenceClip | ReferenceOpenClip = (
            ReferenceOpenClip(path / "tiny") if family == "openclip" else ReferenceClip(path)
        )
        meta = httpx.get(url + "/meta").json()
        assert meta["family"] == FAMILY_IN_META[family]
        images = [photo(name) for name in NAMES]
        texts = ["a photo of a cat", "red rocket on the moon with a big blue dog &amp; ΣΑΣ"]
        r = vectorize(url, texts, [b64(encode(img, "PNG")) for img in images], headers=JSON)
        assert r.status_code == 200, r.text
        ref_images = reference.images(images)
        bound = max(BOUND, 0.01 * min_separation(dict(zip(NAMES, ref_images, strict=True))))
        for name, ours, ref in zip(NAMES, r.json()["imageVectors"], ref_images, strict=True):
            assert relative_error(ours, ref) <= bound, name
        for text, ours, ref in zip(
            texts, r.json()["textVectors"], reference.texts(texts), strict=True
        ):
            assert relative_error(ours, ref) <= BOUND, text
        alone = vectorize(url, ["a dog"]).json()["textVectors"][0]

        async def crowd() -> list[dict]:
            async with httpx.AsyncClient(timeout=60) as client:
                bodies = [json.dumps({"texts": ["a dog", *texts[: i % 3]]}) for i in range(12)]
                answers = await asyncio.gather(
                    *(client.post(url + "/vectorize", content=b) for b in bodies)
                )
            return [a.json() for a in answers]

        for answer in asyncio.run(crowd()):
            assert answer["textVectors"][0] == alone
    finally:
        from ray import serve

        serve.delete(family)
