"""Through Weaviate itself: a batch import of real photos and `nearImage` queries, with Weaviate's
real server (`make weaviate`) calling our service (`make serve`'s launcher on serve_config.yaml)
and, side by side in the same run, the one-image-at-a-time baseline that stands in for the
img2vec-pytorch container (bench/baseline.py). Both run a random ResNet50 on this CPU.

    python -m bench.weaviate [--objects 144] [--queries 48]    (part of make bench)

For each system: the import's objects/s (Weaviate's Python client, fixed-size batches of 32,
4 batch requests at a time: Weaviate then calls the vectorizer up to 4x per request); the share
of that import spent waiting on the vectorizer (1 - the same objects' import with their vectors
given and no vectorizer, over the import that vectorizes); `nearImage` latency p50/p99 with 1
and 8 clients (each query is one vectorizer call plus Weaviate's search). Writes
bench/results/weaviate-*.json and rewrites the weaviate section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import yaml

from bench.processes import baseline_server, launched
from bench.report import add_output_args, publish
from bench.run import record
from bench.weaviate_server import running

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- weaviate:begin -->", "<!-- weaviate:end -->"
BATCH, CONCURRENT_BATCHES = 32, 4


def photo_objects(n: int) -> list[dict]:
    """`n` distinct real images (scikit-image's photos and altered copies), JPEG, base64."""
    import base64

    from tests.support.helpers import augmented
    from tests.support.images import MORE_PHOTO_NAMES, PHOTO_NAMES, encode, photo

    rng = np.random.default_rng(0)
    out: list[dict] = []
    while len(out) < n:
        for name in PHOTO_NAMES + MORE_PHOTO_NAMES:
            img = photo(name)
            for k, variant in enumerate([img, *augmented(img, rng)]):
                data = encode(variant, "JPEG", quality=90)
                out.append({"image": base64.b64encode(data).decode(), "name": f"{name}-{k}"})
        rng = np.random.default_rng(len(out))
    return out[:n]


@contextmanager
def system(name: str, work: Path) -> Iterator[str]:
    """The inference service Weaviate calls: ours, or the baseline; yields its URL."""
    if name == "service":
        config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
        with launched(config, work, ROOT) as (url, _):
            yield url
        return
    with baseline_server("bench.baseline", [], work / "baseline.log", ROOT) as (url, _):
        yield url


def import_seconds(client, name: str, objects: list[dict], vectors: list | None = None) -> float:
    """One collection, every object through Weaviate's batch API; the wall time. With
    `vectors`, the collection has no vectorizer and the vectors are given."""
    from weaviate.classes.config import Configure, DataType, Property

    vector_config = (
        Configure.Vectors.self_provided()
        if vectors is not None
        else Configure.Vectors.img2vec_neural(image_fields=["image"])
    )
    coll = client.collections.create(
        name,
        vector_config=vector_config,
        properties=[
            Property(name="image", data_type=DataType.BLOB),
            Property(name="name", data_type=DataType.TEXT),
        ],
    )
    started_at = time.perf_counter()
    with coll.batch.fixed_size(batch_size=BATCH, concurrent_requests=CONCURRENT_BATCHES) as batch:
        for i, obj in enumerate(objects):
            batch.add_object(obj, vector=None if vectors is None else vectors[i])
    took = time.perf_counter() - started_at
    failed = coll.batch.failed_objects
    if failed:
        raise RuntimeError(f"{len(failed)} objects failed: {failed[0].message}")
    if len(coll) != len(objects):
        raise RuntimeError(f"{name}: {len(coll)} objects stored of {len(objects)}")
    return took


def query_latencies(client, name: str, queries: list[str], clients: int) -> list[float]:
    coll = client.collections.get(name)
    latencies: list[float] = []
    lock = threading.Lock()

    def one(mine: list[str]) -> None:
        for q in mine:
            t0 = time.perf_counter()
            hits = coll.query.near_image(near_image=q, limit=5).objects
            took = time.perf_counter() - t0
            assert hits, "nearImage found nothing"
            with lock:
                latencies.append(took)

    threads = [threading.Thread(target=one, args=(queries[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


def measure(name: str, objects: list[dict], args: argparse.Namespace, work: Path) -> dict:
    with system(name, work) as url, running(work, IMAGE_INFERENCE_API=url) as weaviate:
        client = weaviate.client()
        try:
            # One untimed object first: both systems' first call (lazy set-up) is not counted.
            import_seconds(client, "Warm", objects[:1])
            took = import_seconds(client, "Photos", objects)
            coll = client.collections.get("Photos")
            stored = {o.properties["name"]: o.vector["default"] for o in coll.iterator(True)}
            vectors = [stored[o["name"]] for o in objects]
            without = import_seconds(client, "Given", objects, vectors)
            queries = [o["image"] for o in objects[: args.queries]]
            row = {
                "system": name,
                "objects": len(objects),
                "import_s": round(took, 2),
                "objects_per_s": round(len(objects) / took, 2),
                "import_without_vectorizer_s": round(without, 2),
                "waiting_on_vectorizer": round(max(0.0, 1 - without / took), 3),
            }
            for clients in (1, 8):
                lat = sorted(query_latencies(client, "Photos", queries, clients))
                row[f"near_image_c{clients}_p50_ms"] = round(1000 * statistics.median(lat), 1)
                row[f"near_image_c{clients}_p99_ms"] = round(
                    1000 * lat[int(0.99 * (len(lat) - 1))], 1
                )
                row[f"near_image_c{clients}_per_s"] = round(clients / statistics.mean(lat), 2)
        finally:
            client.close()
    print(json.dumps(row), flush=True)
    return row


def markdown(results: dict) -> str:
    m = results["machine"]
    rows = {r["system"]: r for r in results["rows"]}
    lines = [
        f"Run {m['date']} on {m['cpu']} ({m['cores']} cores), Weaviate {results['weaviate']}, "
        f"{results['objects']} real photos (JPEG), random ResNet50 in both systems:",
        f"`{results['command']}`.",
        "",
        "| vectorizer | import objects/s | waiting on the vectorizer | nearImage c1 p50 / p99 ms "
        "| nearImage c8 p50 / p99 ms | nearImage c8 queries/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, label in (
        ("service", "img2vec (make serve)"),
        ("baseline", "one-at-a-time baseline"),
    ):
        r = rows.get(name)
        if r:
            lines.append(
                f"| {label} | {r['objects_per_s']} | {100 * r['waiting_on_vectorizer']:.0f} % "
                f"| {r['near_image_c1_p50_ms']} / {r['near_image_c1_p99_ms']} "
                f"| {r['near_image_c8_p50_ms']} / {r['near_image_c8_p99_ms']} "
                f"| {r['near_image_c8_per_s']} |"
            )
    if "service" in rows and "baseline" in rows:
        ratio = rows["service"]["objects_per_s"] / rows["baseline"]["objects_per_s"]
        lines += ["", f"Import through Weaviate: **{ratio:.2f}x** the baseline (goal: 2x)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=144)
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--systems", default="service,baseline")
    add_output_args(parser)
    args = parser.parse_args()
    objects = photo_objects(args.objects)
    results: dict = {
        **record("weaviate", args),
        "weaviate": Path(os.environ.get("WEAVIATE_SERVER", "?")).parent.name,
        "objects": len(objects),
        "rows": [],
    }
    for name in args.systems.split(","):
        with tempfile.TemporaryDirectory(prefix=f"i2v-weaviate-{name}-") as tmp:
            results["rows"].append(measure(name, objects, args, Path(tmp)))
    publish(results, "weaviate", markdown(results), args, (BEGIN, END))


if __name__ == "__main__":
    main()
