"""Weaviate's multi2vec-clip module against the service: Weaviate's own acceptance cases
(test/modules/multi2vec-clip) re-expressed with its Python client, the BlobHash case among
them (two named vectors of the same image must be exactly equal, before and after an update),
and stored vectors against the service's answer for each input alone."""

from __future__ import annotations

import numpy as np
import pytest
from weaviate.classes.config import Configure, DataType, Multi2VecField, Property
from weaviate.classes.query import MetadataQuery

from tests.support.images import b64
from tests.weaviate.support import clip_alone, clip_load, photo_files

TITLES = {
    "chelsea": "a cat",
    "coffee": "a cup of coffee",
    "astronaut": "an astronaut",
    "rocket": "a rocket on its launch pad",
    "brick": "a brick wall",
    "camera": "a cameraman",
    "clock": "a clock",
    "coins": "old coins",
}


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    files = photo_files()
    return {name: files[name] for name in TITLES}


def as32(vector: object) -> np.ndarray:
    return np.asarray(vector, dtype=np.float32)


def test_clip_named_vectors_image_and_weighted_text_image(stack, client, fresh, images):
    """Weaviate's ClipTest: `clip` over the image field, `clip_weights` over two text fields
    and the image (0.05, 0.05, 0.9); nearImage on `clip` finds the photo first; both vectors
    are 512-d; `clip` is exactly the service's image vector for that photo alone."""
    fresh.append("ClipTest")
    coll = client.collections.create(
        "ClipTest",
        properties=[
            Property(name="image_title", data_type=DataType.TEXT),
            Property(name="image_description", data_type=DataType.TEXT),
            Property(name="image", data_type=DataType.BLOB),
        ],
        vector_config=[
            Configure.Vectors.multi2vec_clip(name="clip", image_fields=["image"]),
            Configure.Vectors.multi2vec_clip(
                name="clip_weights",
                text_fields=[
                    Multi2VecField(name="image_title", weight=0.05),
                    Multi2VecField(name="image_description", weight=0.05),
                ],
                image_fields=[Multi2VecField(name="image", weight=0.9)],
            ),
        ],
    )
    result = coll.data.insert_many(
        [
            {"image_title": name, "image_description": title, "image": b64(data)}
            for name, title in TITLES.items()
            for data in [images[name]]
        ]
    )
    assert not result.has_errors, result.errors

    for i, name in enumerate(TITLES):
        obj = coll.query.fetch_object_by_id(result.uuids[i], include_vector=True)
        assert set(obj.vector) == {"clip", "clip_weights"}
        assert all(len(v) == 512 for v in obj.vector.values())
        [alone] = clip_alone(stack.clip_url, images=[images[name]])["imageVectors"]
        assert np.array_equal(as32(obj.vector["clip"]), alone), name
        assert not np.array_equal(as32(obj.vector["clip_weights"]), alone)

    hits = coll.query.near_image(
        near_image=b64(images["coffee"]),
        target_vector="clip",
        limit=3,
        include_vector=True,
        return_metadata=MetadataQuery(distance=True),
    ).objects
    assert hits[0].properties["image_title"] == "coffee"
    assert hits[0].metadata.distance == pytest.approx(0, abs=1e-6)
    hits = coll.query.near_text(query="a cup of coffee", target_vector="clip_weights", limit=3)
    assert len(hits.objects) == 3


def test_weaviates_blobhash_case_two_named_vectors_of_one_image_are_equal(
    stack, client, fresh, images
):
    """Weaviate's BlobHash test: `blob` over a blob property and `blobhash` over a blobHash
    property holding the same image, computed by two separate calls to the service (batched
    with whatever else was in flight: other clients' images and texts run all along), are
    exactly equal; an update with the same images changes neither; swapping only the blob
    changes only `blob`."""
    fresh.append("ClipBlobHashTest")
    coll = client.collections.create(
        "ClipBlobHashTest",
        properties=[
            Property(name="image_title", data_type=DataType.TEXT),
            Property(name="image", data_type=DataType.BLOB),
            Property(name="image_hash", data_type=DataType.BLOB_HASH),
        ],
        vector_config=[
            Configure.Vectors.multi2vec_clip(name="blob", image_fields=["image"]),
            Configure.Vectors.multi2vec_clip(name="blobhash", image_fields=["image_hash"]),
        ],
    )
    names = list(TITLES)
    with clip_load(stack.clip_url, list(images.values())) as others:
        result = coll.data.insert_many(
            [{"image_title": n, "image": b64(images[n]), "image_hash": b64(images[n])}
             for n in names]
        )  # fmt: skip
    assert not result.has_errors, result.errors
    assert others and set(others) == {200}, others
    ids = [result.uuids[i] for i in range(len(names))]

    def vectors() -> dict[str, dict[str, np.ndarray]]:
        out = {}
        for uid in ids:
            obj = coll.query.fetch_object_by_id(uid, include_vector=True)
            out[str(uid)] = {k: as32(v) for k, v in obj.vector.items()}
        return out

    before = vectors()
    for uid, vecs in before.items():
        assert vecs["blob"].shape == (512,)
        assert np.array_equal(vecs["blob"], vecs["blobhash"]), uid

    with clip_load(stack.clip_url, list(images.values())) as others:
        for uid, n in zip(ids, names, strict=True):
            img = b64(images[n])
            update = {"image_title": f"updated {n}", "image": img, "image_hash": img}
            coll.data.replace(uid, update)
    assert others and set(others) == {200}, others
    after = vectors()
    for uid in before:
        assert np.array_equal(after[uid]["blob"], before[uid]["blob"]), uid
        assert np.array_equal(after[uid]["blobhash"], before[uid]["blobhash"]), uid

    for uid, n, other in zip(ids, names, names[::-1], strict=True):
        coll.data.replace(
            uid,
            {"image_title": n, "image": b64(images[other]), "image_hash": b64(images[n])},
        )
    swapped = vectors()
    for uid in before:
        assert np.array_equal(swapped[uid]["blobhash"], before[uid]["blobhash"]), uid
        assert not np.array_equal(swapped[uid]["blob"], before[uid]["blob"]), uid
