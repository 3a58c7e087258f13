"""Property-based requests over HTTP: whatever the body, never a 5xx, always the JSON shape
Weaviate expects, and the service healthy afterwards."""

from __future__ import annotations

import json

import httpx
from hypothesis import given, settings

from tests.support.fuzzing import fuzz_settings, request_bodies
from tests.support.images import b64, one_pixel_png

CLIENT_ERRORS = {400, 413, 422}


@fuzz_settings(150)
@given(body=request_bodies())
def test_any_body_gets_a_vector_or_a_clear_client_error(fuzz_url, body: bytes):
    r = httpx.post(fuzz_url + "/vectors", content=body, timeout=60)
    assert r.status_code == 200 or r.status_code in CLIENT_ERRORS, (r.status_code, r.text)
    payload = r.json()
    if r.status_code == 200:
        assert set(payload) == {"id", "vector", "dim"}
        assert len(payload["vector"]) == payload["dim"] == 1280
    else:
        assert list(payload) == ["error"] and payload["error"]


@settings(fuzz_settings(40), max_examples=40)  # a sample, however long `make fuzz` runs
@given(body=request_bodies())
def _fuzz_a_little(fuzz_url, body: bytes):
    r = httpx.post(fuzz_url + "/vectors", content=body, timeout=60)
    assert r.status_code < 500, (r.status_code, r.text)


def test_the_service_is_healthy_after_fuzzing(fuzz_url):
    """Fuzzed bodies are sent here first, whatever ran before; then the service is ready and
    answers a good image."""
    _fuzz_a_little(fuzz_url)
    assert httpx.get(fuzz_url + "/.well-known/ready").status_code == 204
    body = json.dumps({"id": "after", "image": b64(one_pixel_png())})
    r = httpx.post(fuzz_url + "/vectors", content=body, timeout=60)
    assert r.status_code == 200 and r.json()["id"] == "after"
