"""Weaviate's img2vec-neural module against the service, through Weaviate's real server and its
own Python client: the README's example as written, Weaviate's own acceptance case, and the
vectors Weaviate stores."""

from __future__ import annotations

import functools
import re
import time

import httpx
import numpy as np
import weaviate
from weaviate.classes.config import Configure, DataType, Property

from bench.weaviate_server import running
from tests.support.images import b64, one_pixel_png
from tests.weaviate.support import photo_files, readme_block, vector_alone


def test_weaviate_started_before_the_service_waits_for_it_then_works(stack):
    """The fixture started Weaviate while both services were still loading: Weaviate polled
    the modules' /.well-known/ready (warning while one answered 503 or nothing; it asks them
    in turn, so the second is often ready by then), and answered ready only after both
    services were."""
    log = stack.weaviate.log_text()
    assert re.search(r"(img2vec-neural|multi2vec-clip) inference service not ready", log)
    assert "modules didn't initialize" not in log
    assert stack.weaviate_ready_s >= stack.services_ready_s
    meta = httpx.get(stack.weaviate.url + "/v1/meta", timeout=10).json()
    assert meta["version"] == "1.39.0"
    assert {"img2vec-neural", "multi2vec-clip"} <= set(meta["modules"])


def test_the_readme_example_runs_as_written(stack, client, fresh, tmp_path, monkeypatch, capsys):
    """README "Using it with Weaviate": the Python block, run as it is written, in a folder of
    real photos; Weaviate from the fixture stands in for the compose file's (only where to
    connect changes). Its query photo is found first, and every photo finds itself first."""
    files = photo_files()
    (tmp_path / "photos").mkdir()
    for name, data in files.items():
        (tmp_path / "photos" / f"{name}.jpg").write_bytes(data)
    (tmp_path / "query.jpg").write_bytes(files["coffee"])
    monkeypatch.chdir(tmp_path)
    w = stack.weaviate
    monkeypatch.setattr(
        weaviate,
        "connect_to_local",
        functools.partial(weaviate.connect_to_local, port=w.port, grpc_port=w.grpc_port),
    )
    fresh.append("Photo")
    exec(compile(readme_block("With the Weaviate Python client (v4)"), "README.md", "exec"), {})
    printed = capsys.readouterr().out.split()
    assert printed[0] == "photos/coffee.jpg", printed
    assert len(printed) == 5

    photos = client.collections.get("Photo")
    assert len(photos) == len(files)
    for name, data in files.items():
        [hit] = photos.query.near_image(near_image=b64(data), limit=1).objects
        assert hit.properties["path"] == f"photos/{name}.jpg"


def test_weaviates_own_acceptance_case_fashion_item(stack, fresh):
    """Weaviate's test/modules/img2vec-neural, over its REST and GraphQL API: a FashionItem
    class with imageFields ["image"], a 1x1 PNG imported, nearImage finds it with its vector."""
    url = stack.weaviate.url
    fresh.append("FashionItem")
    klass = {
        "class": "FashionItem",
        "vectorizer": "img2vec-neural",
        "moduleConfig": {"img2vec-neural": {"imageFields": ["image"]}},
        "properties": [
            {"name": "image", "dataType": ["blob"]},
            {"name": "description", "dataType": ["text"], "tokenization": "whitespace"},
        ],
    }
    r = httpx.post(url + "/v1/schema", json=klass, timeout=30)
    assert r.status_code == 200, r.text
    pixel = b64(one_pixel_png())
    obj = {"class": "FashionItem", "properties": {"image": pixel, "description": "one pixel"}}
    r = httpx.post(url + "/v1/objects", json=obj, timeout=60)
    assert r.status_code == 200, r.text
    fields = "image description _additional { vector }"
    query = f'{{ Get {{ FashionItem(nearImage: {{image: "{pixel}"}}) {{ {fields} }} }} }}'
    r = httpx.post(url + "/v1/graphql", json={"query": query}, timeout=60)
    assert r.status_code == 200 and "errors" not in r.json(), r.text
    [item] = r.json()["data"]["Get"]["FashionItem"]
    assert item["image"] == pixel and item["description"] == "one pixel"
    assert len(item["_additional"]["vector"]) == 2048
    assert np.array_equal(
        np.asarray(item["_additional"]["vector"], dtype=np.float32),
        vector_alone(stack.image_url, one_pixel_png()),
    )


def test_a_stored_vector_is_the_one_the_service_gives_that_image_alone(stack, client, fresh):
    """A batch import (Weaviate calls the service once per object, several at once, so our
    ingress and model batch them together) stores, for each photo, exactly (as float32) the
    vector that photo gets in a request of its own."""
    files = photo_files()
    fresh.append("Exact")
    exact = client.collections.create(
        "Exact",
        vector_config=Configure.Vectors.img2vec_neural(image_fields=["image"]),
        properties=[
            Property(name="image", data_type=DataType.BLOB),
            Property(name="name", data_type=DataType.TEXT),
        ],
    )
    result = exact.data.insert_many(
        [{"image": b64(data), "name": name} for name, data in files.items()]
    )
    assert not result.has_errors, result.errors
    for i, (name, data) in enumerate(files.items()):
        obj = exact.query.fetch_object_by_id(result.uuids[i], include_vector=True)
        stored = np.asarray(obj.vector["default"], dtype=np.float32)
        alone = vector_alone(stack.image_url, data)
        assert stored.shape == (2048,)
        assert np.array_equal(stored, alone), (name, float(np.abs(stored - alone).max()))


def test_modules_validate_base_url_keeps_weaviate_from_the_service(stack, tmp_path):
    """With MODULES_VALIDATE_BASE_URL on, Weaviate's module client refuses to dial a loopback
    or private address, where the service lives (docs/weaviate.md): a second Weaviate so
    configured never gets past the ready service's /.well-known/ready, and says why."""
    assert httpx.get(stack.image_url + "/.well-known/ready", timeout=5).status_code == 204
    refusal = "refusing to dial internal address"
    with running(
        tmp_path, wait=False, IMAGE_INFERENCE_API=stack.image_url, MODULES_VALIDATE_BASE_URL="true"
    ) as guarded:
        deadline = time.monotonic() + 30
        while refusal not in guarded.log_text():
            assert time.monotonic() < deadline, guarded.log_text()[-2000:]
            time.sleep(0.25)
        assert not guarded.ready()
