"""POST /vectors/batch: many images in one request, each answered on its own, in order,
through the same batcher as single requests."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from tests.support.images import b64, encode, one_pixel_png
from tests.support.limits import MAX_BULK_BYTES, MAX_BULK_ITEMS, MAX_ID_LENGTH
from tests.support.parity import relative_error


def bulk(url: str, body: bytes | str) -> httpx.Response:
    data = body.encode() if isinstance(body, str) else body
    return httpx.post(url + "/vectors/batch", content=data, timeout=120)


def single(url: str, image: bytes) -> np.ndarray:
    r = httpx.post(url + "/vectors", content=json.dumps({"id": "s", "image": b64(image)}))
    assert r.status_code == 200, r.text
    return np.array(r.json()["vector"])


@pytest.fixture(scope="module")
def images(photos) -> list[bytes]:
    return [encode(img.resize((320, 240)), "JPEG") for img in photos.values()]


def test_each_item_is_answered_on_its_own_in_order(resnet_url, images, photos):
    truncated = encode(photos["astronaut"], "JPEG")[:5000]
    items = [
        {"id": "ok-0", "image": b64(images[0])},
        {"id": "bad-base64", "image": "aGVsbG8"},
        {"id": "ok-1", "image": b64(images[1])},
        {"id": "not-an-image", "image": b64(b"plain text")},
        {"id": "truncated", "image": b64(truncated)},
        {"image": b64(images[2])},
        {"id": "x" * (MAX_ID_LENGTH + 1), "image": b64(images[2])},
        {"id": "ok-2", "image": b64(one_pixel_png())},
        "not an object",
    ]
    r = bulk(resnet_url, json.dumps({"items": items}))
    assert r.status_code == 200, r.text
    out = r.json()["items"]
    assert len(out) == len(items)
    expected = [
        ("ok-0", 200), ("bad-base64", 400), ("ok-1", 200), ("not-an-image", 400),
        ("truncated", 400), (None, 422), (None, 422), ("ok-2", 200), (None, 422),
    ]  # fmt: skip
    for item, (id_, status) in zip(out, expected, strict=True):
        if status == 200:
            assert set(item) == {"id", "vector", "dim"} and item["id"] == id_
            assert item["dim"] == 2048 == len(item["vector"])
        else:
            assert set(item) == {"id", "error", "status"}, item
            assert item["status"] == status and item["error"], item
            if id_ is not None:
                assert item["id"] == id_
    assert out[6]["id"] == "x" * (MAX_ID_LENGTH + 1) and "limit" in out[6]["error"]
    # The vectors are the ones single requests get.
    for i, image in ((0, images[0]), (2, images[1]), (7, one_pixel_png())):
        assert relative_error(out[i]["vector"], single(resnet_url, image)) < 1e-5


def test_items_run_in_the_batchers_passes(resnet_url, images):
    before = httpx.get(resnet_url + "/meta").json()["batching"]
    items = [{"id": str(i), "image": b64(images[i % len(images)])} for i in range(MAX_BULK_ITEMS)]
    r = bulk(resnet_url, json.dumps({"items": items}))
    assert r.status_code == 200 and all("vector" in item for item in r.json()["items"])
    after = httpx.get(resnet_url + "/meta").json()["batching"]
    # Each item bit for bit what its image gets in a request of its own.
    for i, item in enumerate(r.json()["items"]):
        lone = single(resnet_url, images[i % len(images)])
        assert np.array_equal(np.float32(item["vector"]), np.float32(lone)), i
    passes = after["passes"] - before["passes"]
    assert after["images"] - before["images"] == MAX_BULK_ITEMS
    assert passes < MAX_BULK_ITEMS  # not one pass per image
    assert passes >= MAX_BULK_ITEMS // after["config"]["max_batch_size"]


def test_too_many_items_or_bytes_are_refused_before_decoding(resnet_url, images):
    before = httpx.get(resnet_url + "/meta").json()["batching"]["images"]
    items = [{"id": str(i), "image": b64(images[0])} for i in range(MAX_BULK_ITEMS + 1)]
    r = bulk(resnet_url, json.dumps({"items": items}))
    assert r.status_code == 413, r.text
    assert f"the limit is {MAX_BULK_ITEMS} (max_bulk_items)" in r.json()["error"]
    big = json.dumps({"items": [{"id": "big", "image": "A" * MAX_BULK_BYTES}]})
    r = bulk(resnet_url, big)
    assert r.status_code == 413 and "max_body_bytes" not in r.json()["error"]
    assert f"the limit is {MAX_BULK_BYTES} bytes" in r.json()["error"]
    assert httpx.get(resnet_url + "/meta").json()["batching"]["images"] == before


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("not json", "not valid JSON"),
        ('{"images": []}', '{"items": ['),
        ('{"items": []}', "items is empty"),
        ("[1]", '{"items": ['),
    ],
)
def test_a_body_that_is_not_a_bulk_request_gets_422(resnet_url, body, fragment):
    r = bulk(resnet_url, body)
    assert r.status_code == 422 and fragment in r.json()["error"], r.text


def test_the_bulk_route_is_documented(resnet_url):
    spec = httpx.get(resnet_url + "/openapi.json").json()
    op = spec["paths"]["/vectors/batch"]["post"]
    assert "items" in json.dumps(op["requestBody"])
    assert {"200", "413", "422", "503"} <= set(op["responses"])
