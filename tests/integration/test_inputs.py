"""Whatever arrives, the service answers with the right status, writes nothing to disk,
keeps memory bounded, and keeps serving. Formats are compared with the reference."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.client import post_vectors
from tests.support.formats import SAMPLES, sample
from tests.support.images import b64, encode, one_pixel_png
from tests.support.limits import MAX_BODY_BYTES, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS
from tests.support.parity import assert_same_vector, min_separation
from tests.support.reference import ReferenceImg2Vec


@pytest.fixture(scope="module")
def reference(resnet50_file):
    return ReferenceImg2Vec("resnet50", resnet50_file)


@pytest.fixture(scope="module")
def separation(reference, photos) -> float:
    """How far apart the reference puts different photos (tests/support/parity.py)."""
    return min_separation({name: reference.vector_of(img) for name, img in photos.items()})


@pytest.mark.parametrize("name", SAMPLES)
def test_every_format_gets_the_reference_vector(resnet_url, reference, separation, name):
    data = sample(name)
    r = post_vectors(resnet_url, data, name)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == name
    assert_same_vector(r.json()["vector"], reference.vector(data), separation, name)


@pytest.mark.parametrize(
    "id_",
    ["../../etc/passwd", "/etc/hosts", "C:\\\\Windows\\\\x", "ünïcödé 🐱", "a\u0000b", "", " "],
)
def test_ids_are_only_echoed(resnet_url, id_):
    r = post_vectors(resnet_url, one_pixel_png(), id_)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == id_


def _tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, float]:
    """Every file under root with its modification time, skipping the named folders."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = Path(dirpath, name)
            with contextlib.suppress(OSError):
                found[str(path)] = path.stat().st_mtime
    return found


def test_nothing_is_written_to_disk(resnet_url, serve_instance, photos):
    """The container we replace writes each image to a file named by the id."""
    pids = serve_instance.replica_pids()
    assert pids, "no replica processes found"
    cwds = {Path(os.readlink(f"/proc/{pid}/cwd")) for pid in pids}
    skip = (".venv", ".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache")
    before_cwd = {cwd: _tree(cwd, skip) for cwd in cwds}
    before_tmp = set(os.listdir("/tmp"))
    assert _tree(serve_instance.tmpdir) == {}

    tag = uuid.uuid4().hex
    ids = [f"/tmp/{tag}-abs", f"../../{tag}-up", f"{tag}-plain", f"{tag}/nested"]
    images = [encode(photos["coffee"], "JPEG"), b"not an image", one_pixel_png()]
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda i: post_vectors(resnet_url, images[i % 3], ids[i % 4]).status_code, range(24)
            )
        )
    assert sorted(set(codes)) == [200, 400]

    assert _tree(serve_instance.tmpdir) == {}, "a replica wrote into its temp dir"
    assert set(os.listdir("/tmp")) - before_tmp == set()
    for cwd in cwds:
        assert _tree(cwd, skip) == before_cwd[cwd], f"files changed under {cwd}"
        assert not list(cwd.parent.parent.glob(f"{tag}*"))


def test_memory_in_flight_is_bounded_and_answered_503(mobilenet_small_budget_url):
    """One slow client holds most of the in-flight budget; the next large body is refused
    at once with a 503 instead of being buffered, and the slow client still succeeds."""
    url, budget = mobilenet_small_budget_url
    image = b64(np.random.default_rng(0).bytes(int(budget * 0.45)))
    body = json.dumps({"id": "slow", "image": image}).encode()
    release = threading.Event()

    def slow_chunks():
        half = len(body) * 3 // 4
        yield body[:half]
        release.wait(30)  # hold the bytes until the second request was answered
        yield body[half:]

    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(lambda: httpx.post(url + "/vectors", content=slow_chunks(), timeout=60))
        time.sleep(1.0)  # let the first 3/4 of the slow body arrive at the ingress
        try:
            r = httpx.post(url + "/vectors", content=body, timeout=60)
        finally:
            release.set()
        assert r.status_code == 503, r.text
        assert "max_inflight_bytes" in r.json()["error"]
        # The slow request was held, not dropped: it completes (its bytes are not an image).
        assert slow.result().status_code == 400
    # And once it is done, the budget is free again.
    assert post_vectors(url, one_pixel_png()).status_code == 200


def test_an_image_exactly_at_the_pixel_limit_is_served_and_one_more_row_is_not(resnet_url, photos):
    side = int(MAX_IMAGE_PIXELS**0.5)
    assert side * side == MAX_IMAGE_PIXELS
    at_limit = encode(photos["astronaut"].resize((side, side)), "JPEG", quality=85)
    assert len(b64(at_limit)) < MAX_BODY_BYTES and len(at_limit) < MAX_IMAGE_BYTES
    assert post_vectors(resnet_url, at_limit).status_code == 200
    over = encode(photos["astronaut"].resize((side, side + 1)), "JPEG", quality=85)
    r = post_vectors(resnet_url, over)
    assert r.status_code == 413 and f"limit is {MAX_IMAGE_PIXELS} pixels" in r.json()["error"]
