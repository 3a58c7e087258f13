"""Every route and every error status, over real HTTP, against a real Serve application."""

from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.support.client import vector_body, vector_of
from tests.support.helpers import png_header_claiming
from tests.support.images import b64, encode, one_pixel_png
from tests.support.limits import (
    MAX_BODY_BYTES,
    MAX_ID_LENGTH,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
)
from tests.support.parity import relative_error


def post(url: str, body: bytes | str, path: str = "/vectors", **headers: str) -> httpx.Response:
    data = body.encode() if isinstance(body, str) else body
    return httpx.post(url + path, content=data, headers=headers, timeout=60)


def assert_error(r: httpx.Response, status: int, fragment: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert list(body) == ["error"], body
    assert isinstance(body["error"], str)
    assert fragment in body["error"], body["error"]


def test_live_and_ready_answer_204_with_no_body(resnet_url):
    for path in ("/.well-known/live", "/.well-known/ready"):
        r = httpx.get(resnet_url + path)
        assert r.status_code == 204
        assert r.content == b""


def test_weaviate_request_without_content_type_is_accepted(resnet_url):
    """Weaviate's Go client sets no Content-Type on POST /vectors."""
    id_ = f"{uuid.uuid4()}_0"
    r = post(resnet_url, vector_body(one_pixel_png(), id_))
    assert "content-type" not in r.request.headers
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "vector", "dim"}
    assert body["id"] == id_
    assert body["dim"] == 2048 == len(body["vector"])
    assert all(isinstance(v, float) for v in body["vector"])
    assert np.isfinite(body["vector"]).all()


@pytest.mark.parametrize("path", ["/vectors", "/vectors/"])
@pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
def test_both_paths_with_any_content_type_give_the_same_vector(
    resnet_url, photos, path, content_type
):
    image = encode(photos["coffee"], "JPEG")
    headers = {"Content-Type": content_type} if content_type else {}
    r = post(resnet_url, vector_body(image, "search_1732400000000000000"), path, **headers)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "search_1732400000000000000"
    again = post(resnet_url, vector_body(image), "/vectors")
    assert relative_error(r.json()["vector"], again.json()["vector"]) < 1e-5


def test_unknown_fields_are_ignored_and_data_urls_accepted(resnet_url):
    data_url = "data:image/png;base64," + b64(one_pixel_png())
    body = json.dumps({"id": "a", "image": data_url, "newer_weaviate_field": {"x": 1}})
    r = post(resnet_url, body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "body is empty"),
        (b"not json", "not valid JSON"),
        (b'{"id": "x", "image": ', "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'"a string"', "JSON object"),
        (b'{"image": "aGk="}', "id: Field required"),
        (b'{"id": "x"}', "image: Field required"),
        (b'{"id": 7, "image": "aGk="}', "id: Input should be a valid string"),
        (b'{"id": "x", "image": null}', "image: Input should be a valid string"),
        (b'{"id": "x", "image": ["aGk="]}', "image: Input should be a valid string"),
    ],
)
def test_bodies_that_do_not_fit_the_schema_get_422(resnet_url, body, fragment):
    assert_error(post(resnet_url, body), 422, fragment)


def test_an_id_over_the_limit_gets_422(resnet_url):
    ok = post(resnet_url, vector_body(one_pixel_png(), "i" * MAX_ID_LENGTH))
    assert ok.status_code == 200
    r = post(resnet_url, vector_body(one_pixel_png(), "i" * (MAX_ID_LENGTH + 1)))
    assert_error(r, 422, f"limit is {MAX_ID_LENGTH}")


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        ("", "image is empty"),
        ("@@@@", "image is empty"),  # b64decode skips every character: nothing is left
        ("aGVsbG8", "not valid base64"),
        (b64(b"definitely not an image"), "not a recognised image format"),
    ],
)
def test_images_that_do_not_decode_get_400(resnet_url, image, fragment):
    assert_error(post(resnet_url, json.dumps({"id": "x", "image": image})), 400, fragment)


def test_a_truncated_image_gets_400(resnet_url, photos):
    data = encode(photos["astronaut"], "JPEG")
    assert_error(post(resnet_url, vector_body(data[: len(data) // 3])), 400, "corrupt")


def test_a_body_over_the_limit_gets_413(resnet_url):
    body = json.dumps({"id": "x", "image": "A" * MAX_BODY_BYTES}).encode()
    assert_error(post(resnet_url, body), 413, f"the limit is {MAX_BODY_BYTES} bytes")

    def chunks():  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = httpx.post(resnet_url + "/vectors", content=chunks(), timeout=60)
    assert "content-length" not in r.request.headers
    assert_error(r, 413, f"request body is over the limit of {MAX_BODY_BYTES} bytes")


def test_too_many_pixels_gets_413_from_the_header_alone(resnet_url):
    """3000x3000 is over our limit (4 MP here) and far under Pillow's own bomb guard
    (89 MP), so only our check can refuse it; the PNG holds 64 bytes of pixel data, so
    decoding it would fail as truncated (a 400), not as too large."""
    r = post(resnet_url, vector_body(png_header_claiming(3000, 3000)))
    assert_error(r, 413, f"image is 3000x3000 = 9000000 pixels; the limit is {MAX_IMAGE_PIXELS}")


def test_an_image_over_the_byte_limit_gets_413_inside_a_body_under_it(resnet_url):
    noise = np.random.default_rng(1).integers(0, 256, (700, 700, 3), dtype=np.uint8)
    image = encode(Image.fromarray(noise), "PNG")
    assert len(image) > MAX_IMAGE_BYTES and len(vector_body(image)) < MAX_BODY_BYTES
    r = post(resnet_url, vector_body(image))
    assert_error(r, 413, f"the limit is {MAX_IMAGE_BYTES} bytes (max_image_bytes)")


def test_base64_the_replaced_container_accepted_is_accepted(resnet_url, photos):
    """It decoded with base64.b64decode: stray characters and line breaks are skipped."""
    text = b64(encode(photos["rocket"], "JPEG"))
    wrapped = "\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    sloppy = "*" + text[:100] + " !" + text[100:]
    exact = post(resnet_url, json.dumps({"id": "x", "image": text}))
    assert exact.status_code == 200, exact.text
    for variant in (wrapped, sloppy):
        r = post(resnet_url, json.dumps({"id": "x", "image": variant}))
        assert r.status_code == 200, r.text
        assert r.json()["vector"] == exact.json()["vector"]


def test_unknown_routes_and_methods_answer_json(resnet_url):
    assert_error(httpx.get(resnet_url + "/nope"), 404, "Not Found")
    assert_error(httpx.get(resnet_url + "/vectors"), 405, "Method Not Allowed")


def test_meta_names_the_model_and_its_weights(resnet_url, resnet50_file):
    from img2vec.models.weights import sha256_of

    meta = httpx.get(resnet_url + "/meta").json()
    assert meta["model"] == "resnet50" and meta["dim"] == 2048
    assert meta["weights_source"] == "file" and meta["weights"] == "custom"
    assert meta["weights_sha256"] == sha256_of(resnet50_file)
    assert meta["preprocess"] == "stretch224"
    assert meta["dtype"] == "float32" and meta["engine"] == "openvino"  # the default on CPU
    assert meta["limits"]["max_image_pixels"] == MAX_IMAGE_PIXELS
    assert meta["limits"]["max_image_bytes"] == MAX_IMAGE_BYTES
    # Identity and batching come from one replica, which is named.
    assert meta["replica"] and meta["batching"]["config"]["max_batch_size"] >= 1


def test_openapi_documents_the_vectors_contract(resnet_url):
    spec = httpx.get(resnet_url + "/openapi.json").json()
    op = spec["paths"]["/vectors"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["required"]) == {"id", "image"}
    assert {"200", "400", "413", "422", "503"} <= set(op["responses"])


def _solo_vectors(url: str, images: list[bytes]) -> list[np.ndarray]:
    return [vector_of(url, img, np.float64) for img in images]


def test_16_concurrent_requests_are_answered_correctly_in_batches(resnet_url, photos):
    # 16 distinct images: each photo at four different crops.
    images = []
    for img in photos.values():
        for k in range(4):
            w, h = img.size
            images.append(encode(img.crop((k * 7, k * 5, w - k * 3, h - k * 2)), "PNG"))
    solo = _solo_vectors(resnet_url, images)
    meta = httpx.get(resnet_url + "/meta").json()
    before, link_before = meta["batching"], meta["ingress"]

    def call(i: int) -> httpx.Response:
        return post(resnet_url, vector_body(images[i], f"req-{i}"))

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(call, range(16)))

    meta = httpx.get(resnet_url + "/meta").json()
    after, link_after = meta["batching"], meta["ingress"]
    for i, r in enumerate(responses):
        assert r.status_code == 200, r.text
        assert r.json()["id"] == f"req-{i}"
        # Bit for bit the vector it gets alone, whatever it was batched with.
        assert np.array_equal(np.float32(r.json()["vector"]), np.float32(solo[i])), i
    assert after["images"] - before["images"] == 16
    formed = {
        int(size): n - before["batch_size_histogram"].get(size, 0)
        for size, n in after["batch_size_histogram"].items()
    }
    assert max(size for size, n in formed.items() if n > 0) > 1, formed
    assert after["passes"] - before["passes"] < 16
    # ...and they reached the model in fewer calls than requests (deployments/edge/client.py).
    assert link_after["inputs_to_model"] - link_before["inputs_to_model"] == 16
    assert link_after["calls_to_model"] - link_before["calls_to_model"] < 16, link_after


def test_the_same_id_in_concurrent_requests_gets_each_its_own_vector(resnet_url, photos):
    """The container we replace writes each image to a file named by the id, so
    concurrent requests sharing an id could get each other's vectors."""
    images = [encode(photos[name], "PNG") for name in photos]
    solo = _solo_vectors(resnet_url, images)
    jobs = [i % len(images) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        responses = list(
            pool.map(lambda i: post(resnet_url, vector_body(images[i], "../same")), jobs)
        )
    for i, r in zip(jobs, responses, strict=True):
        assert r.status_code == 200 and r.json()["id"] == "../same"
        np.testing.assert_allclose(r.json()["vector"], solo[i], rtol=1e-4, atol=1e-4)


# One of each kind of bad input: not JSON, a wrong type, not base64, not an image, a truncated
# image, an id past max_id_length.
BAD_BODIES = [
    b"{not json",
    json.dumps({"id": 1, "image": "AAAA"}).encode(),
    json.dumps({"id": "x", "image": "%%%%"}).encode(),
    json.dumps({"id": "x", "image": b64(b"plain text, not an image")}).encode(),
    json.dumps({"id": "x", "image": b64(encode(Image.new("RGB", (64, 64)), "PNG")[:60])}).encode(),
    json.dumps({"id": "x" * 5000, "image": b64(one_pixel_png())}).encode(),
]


def test_the_service_is_healthy_after_all_the_bad_input(resnet_url):
    """The bad input is sent here, whatever ran before: each gets its 4xx, then the service
    is ready and answers a good image."""
    for body in BAD_BODIES:
        r = post(resnet_url, body)
        assert 400 <= r.status_code < 500 and r.json()["error"], (body[:40], r.text)
    assert httpx.get(resnet_url + "/.well-known/ready").status_code == 204
    r = post(resnet_url, vector_body(encode(Image.new("RGB", (3, 5), (1, 2, 3)), "BMP")))
    assert r.status_code == 200 and r.json()["dim"] == 2048


def test_the_ingress_replica_does_not_load_torch(resnet_url, serve_instance):
    """Ingress replicas scale with request rate: none of them maps libtorch (the Embedder,
    for contrast, does)."""
    ingress = serve_instance.replica_pids("resnet50", "Ingress")
    embedder = serve_instance.replica_pids("resnet50", "Embedder")
    assert ingress and embedder
    for pid in ingress:
        assert "libtorch" not in Path(f"/proc/{pid}/maps").read_text()
    assert "libtorch" in Path(f"/proc/{embedder[0]}/maps").read_text()


def _log_lines_with(text: str, app: str) -> list[str]:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    lines = []
    for path in logs.glob(f"replica_{app}_Ingress_*.log"):
        lines += [line for line in path.read_text(errors="replace").splitlines() if text in line]
    return lines


def test_each_request_is_one_access_line_without_its_image(resnet_url, photos):
    id_ = f"access-{uuid.uuid4()}"
    image = b64(encode(photos["coffee"], "JPEG"))
    assert post(resnet_url, json.dumps({"id": id_, "image": image})).status_code == 200
    assert post(resnet_url, json.dumps({"id": id_, "image": "@@"})).status_code == 400
    deadline = time.monotonic() + 10
    while len(lines := _log_lines_with(id_, "resnet50")) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(lines) == 2, lines
    ok, bad = sorted(lines, key=lambda line: " 400 " in line)
    assert "/vectors 200" in ok and "total_ms=" in ok and "decode_ms=" in ok and "model_ms=" in ok
    assert "/vectors 400" in bad
    assert image[100:140] not in "".join(lines)  # no image bytes


def test_access_lines_can_be_switched_off(fuzz_url):
    id_ = f"quiet-{uuid.uuid4()}"
    r = post(fuzz_url, json.dumps({"id": id_, "image": b64(one_pixel_png())}))
    assert r.status_code == 200
    time.sleep(1)
    assert _log_lines_with(id_, "fuzz") == []


def test_model_replicas_start_without_serves_batching_warning(resnet_url):
    """Ray warns when the model replica's @serve.batch could hold more calls than
    max_ongoing_requests lets in; the sizes the code and the config give it must not."""
    import ray

    # @serve.batch builds its queue (and checks its sizes) at the first call, which every
    # /vectors request makes (ImageModel.embed_group -> HostedModel.gather).
    body = json.dumps({"id": "warn", "image": b64(one_pixel_png())})
    assert httpx.post(resnet_url + "/vectors", content=body, timeout=60).status_code == 200
    time.sleep(1)
    logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    texts = [p.read_text(errors="replace") for p in logs.glob("replica_resnet50_Embedder_*.log")]
    assert texts and all("model batching" in t for t in texts)  # the replica's own start line
    assert not any("is larger than `max_ongoing_requests`" in t for t in texts)
