"""Faults as Weaviate meets them, through its real server and client: the model replica killed
during a batch import, and a burst beyond capacity. Weaviate gets a clear error for each object
that could not be vectorized (never a hang, never a wrong vector), a re-import of exactly
those completes, and Weaviate then holds exactly the objects sent, each with its own vector.

A service of their own (the launcher on serve_config.yaml, one torch thread, a 2 s request
deadline so that a burst of 192 objects is beyond what 2 s can hold on any CPU) and a Weaviate
of their own: the package's stack stays untouched."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from weaviate.classes.config import Configure, DataType, Property
from weaviate.classes.data import DataObject
from weaviate.exceptions import WeaviateInsertManyAllFailedError
from weaviate.util import generate_uuid5

from bench.processes import launched, marked_pids, wait_ready
from bench.weaviate_server import ROOT, Weaviate, running
from tests.support.helpers import augmented
from tests.support.images import b64, encode, photo
from tests.weaviate.support import photo_files, vector_alone

DEADLINE_S = 2


@dataclass(frozen=True)
class Edge:
    url: str
    marker: str
    weaviate: Weaviate
    client: object


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, resnet50_file: Path) -> Iterator[Edge]:
    work = tmp_path_factory.mktemp("weaviate-faults")
    marker = uuid.uuid4().hex
    env = {
        "IMG2VEC_WEIGHTS": str(resnet50_file),
        "IMG2VEC_TORCH_THREADS": "1",
        "IMG2VEC_REQUEST_TIMEOUT_S": str(DEADLINE_S),
    }
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    with (
        launched(config, work, ROOT, extra_env=env, marker=marker) as (url, _),
        running(work, IMAGE_INFERENCE_API=url) as weaviate,
    ):
        client = weaviate.client()
        try:
            yield Edge(url, marker, weaviate, client)
        finally:
            client.close()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    """40 distinct real images: 18 photos, and altered copies of some."""
    files = photo_files()
    rng = np.random.default_rng(7)
    for name in ("chelsea", "coffee", "astronaut", "rocket", "motorcycle", "camera"):
        for i, img in enumerate(augmented(photo(name), rng)):
            files[f"{name}-{i}"] = encode(img, "JPEG", quality=90)
    return dict(list(files.items())[:40])


def collection(client, name: str):
    with contextlib.suppress(Exception):
        client.collections.delete(name)
    return client.collections.create(
        name,
        vector_config=Configure.Vectors.img2vec_neural(image_fields=["image"]),
        properties=[
            Property(name="image", data_type=DataType.BLOB),
            Property(name="name", data_type=DataType.TEXT),
        ],
    )


def objects(names: list[str], images: dict[str, bytes], tag: str) -> list:
    return [
        DataObject(
            properties={"image": b64(images[n]), "name": n}, uuid=generate_uuid5(f"{tag}/{n}")
        )
        for n in names
    ]


def embedder_pid(marker: str) -> int:
    pids = []
    for pid in marked_pids(marker):
        with contextlib.suppress(OSError):
            if b"ServeReplica:img2vec:Embedder" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
    assert len(pids) == 1, pids
    return pids[0]


def images_embedded(url: str) -> int:
    return httpx.get(url + "/meta", timeout=10).json()["batching"]["images"]


def assert_holds_exactly(coll, names: list[str], images: dict[str, bytes], url: str, tag: str):
    """Weaviate holds these objects and no other, each with the vector its image gets alone."""
    stored = {}
    for obj in coll.iterator(include_vector=True):
        stored[obj.properties["name"]] = (obj.uuid, np.asarray(obj.vector["default"], np.float32))
    assert sorted(stored) == sorted(names)
    for n in names:
        uid, vector = stored[n]
        assert str(uid) == generate_uuid5(f"{tag}/{n}")
        assert np.array_equal(vector, vector_alone(url, images[n])), n


def test_the_model_replica_killed_during_an_import(edge, images):
    coll = collection(edge.client, "Killed")
    names = list(images)
    before = images_embedded(edge.url)
    result: list = []
    importer = threading.Thread(
        target=lambda: result.append(coll.data.insert_many(objects(names, images, "k")))
    )
    started_at = time.monotonic()
    importer.start()
    while images_embedded(edge.url) < before + 4:  # the import is under way
        assert time.monotonic() - started_at < 60 and importer.is_alive()
        time.sleep(0.05)
    os.kill(embedder_pid(edge.marker), signal.SIGKILL)
    importer.join(120)
    assert not importer.is_alive(), "Weaviate's batch import hung after the replica died"
    [answer] = result
    failed = [names[i] for i in answer.errors]
    print(
        f"replica killed: {len(failed)} of {len(names)} objects failed, in "
        f"{time.monotonic() - started_at:.1f} s"
    )
    assert failed, "the kill came too late to meet any object"
    for error in answer.errors.values():
        assert "img2vec" in error.message or "status 5" in error.message, error.message

    wait_ready(edge.url, timeout_s=120)  # Serve replaced the replica
    again = coll.data.insert_many(objects(failed, images, "k"))
    assert not again.has_errors, again.errors
    assert_holds_exactly(coll, names, images, edge.url, "k")


def test_a_burst_beyond_capacity_fails_objects_clearly_never_wrongly(edge, images):
    """24 batch imports at once (Weaviate sends each 4 objects at a time: ~96 in flight),
    192 objects, with 2 s to answer each: refused objects are Weaviate per-object errors naming
    the 503, stored objects have exactly their own vectors, and the re-import completes."""
    wait_ready(edge.url, timeout_s=120)
    coll = collection(edge.client, "Burst")
    names = [f"{n}#{k}" for k in range(5) for n in images][:192]
    files = {f"{n}#{k}": data for k in range(5) for n, data in images.items()}
    chunks = [names[i::24] for i in range(24)]
    answers: list = [None] * len(chunks)

    def one(i: int) -> None:
        try:
            answers[i] = coll.data.insert_many(objects(chunks[i], files, "b"))
        except WeaviateInsertManyAllFailedError as exc:  # the client's way to say "all of them"
            answers[i] = exc

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads)
    failed = []
    for chunk, answer in zip(chunks, answers, strict=True):
        if isinstance(answer, WeaviateInsertManyAllFailedError):
            failed += chunk
            assert "status 503" in str(answer), answer
            continue
        for i, error in answer.errors.items():
            failed.append(chunk[i])
            assert "status 503" in error.message, error.message
    print(f"burst: {len(failed)} of {len(names)} objects refused")
    assert failed, "the burst never exceeded the service's capacity"
    assert len(failed) < len(names)
    assert httpx.get(edge.url + "/.well-known/ready", timeout=5).status_code == 204

    stored = {obj.properties["name"] for obj in coll.iterator()}
    assert stored == set(names) - set(failed)
    for i in range(0, len(failed), 16):
        again = coll.data.insert_many(objects(failed[i : i + 16], files, "b"))
        assert not again.has_errors, again.errors
    assert_holds_exactly(coll, names, files, edge.url, "b")
