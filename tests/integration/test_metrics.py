"""Our Prometheus metrics, scraped from the real endpoint of the node after real requests:
each is exported, tagged with its deployment, and its value moved."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.metrics import NAMES
from tests.support.images import b64, one_pixel_png

ROOT = Path(__file__).resolve().parents[2]


def scrape(url: str) -> dict[str, list]:
    """metric family name -> samples, for our metrics."""
    families = text_string_to_metric_families(httpx.get(url, timeout=10).text)
    return {f.name: f.samples for f in families if f.name.startswith("ray_img2vec_")}


def total(samples: list, suffix: str = "", **tags: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name.endswith(suffix) and all(s.labels.get(k) == v for k, v in tags.items())
    )


def exported_name(name: str) -> str:
    return "ray_" + name


MODEL_SIDE = (
    ("img2vec_images_vectorized", ""),
    ("img2vec_forward_seconds", "_count"),
    ("img2vec_batch_size", "_count"),
    ("img2vec_queue_wait_seconds", "_count"),
    ("img2vec_decode_seconds", "_count"),
    ("img2vec_request_seconds", "_count"),
)


def moved(before: dict, after: dict, metric: str, suffix: str = "", **tags: str) -> float:
    name = exported_name(metric)
    return total(after.get(name, []), suffix, **tags) - total(before.get(name, []), suffix, **tags)


def settled(before: dict, after: dict) -> bool:
    """Every count these requests must move has moved: each process (ingress, model) exports
    its metrics on its own schedule, so one scrape may hold some and not others."""
    route = {"application": "resnet50", "route": "/vectors"}
    return (
        moved(before, after, "img2vec_requests", status="200", **route) >= 6
        and moved(before, after, "img2vec_requests", status="422", **route) >= 1
        and all(
            moved(before, after, m, suffix, application="resnet50") >= 6 for m, suffix in MODEL_SIDE
        )
    )


@pytest.fixture(scope="module")
def scraped_after_requests(serve_instance, resnet_url):
    url = serve_instance.metrics_url
    before = scrape(url)
    ok = json.dumps({"id": "m", "image": b64(one_pixel_png())})
    for _ in range(6):
        assert httpx.post(resnet_url + "/vectors", content=ok, timeout=60).status_code == 200
    assert httpx.post(resnet_url + "/vectors", content=b"{", timeout=60).status_code == 422
    deadline = time.monotonic() + 60
    while not settled(before, after := scrape(url)) and time.monotonic() < deadline:
        time.sleep(1)
    return before, after


def test_every_metric_of_ours_is_exported(scraped_after_requests):
    _, after = scraped_after_requests
    assert {exported_name(n) for n in NAMES} - set(after) <= {"ray_img2vec_dropped_images"}


def test_requests_are_counted_by_route_and_status(scraped_after_requests):
    before, after = scraped_after_requests
    route = {"application": "resnet50", "route": "/vectors"}
    assert moved(before, after, "img2vec_requests", status="200", **route) >= 6
    assert moved(before, after, "img2vec_requests", status="422", **route) >= 1
    assert all(
        s.labels["deployment"] == "Ingress" for s in after[exported_name("img2vec_requests")]
    )


def test_the_model_side_moved(scraped_after_requests):
    before, after = scraped_after_requests
    for metric, suffix in MODEL_SIDE:
        amount = moved(before, after, metric, suffix, application="resnet50")
        assert amount >= 6, (metric, amount)


def test_the_model_identity_is_an_info_metric(scraped_after_requests, resnet50_file):
    from img2vec.models.weights import sha256_of

    _, after = scraped_after_requests
    infos = [
        s.labels
        for s in after[exported_name("img2vec_model_info")]
        if s.labels.get("application") == "resnet50"
    ]
    assert infos, "no model info for the resnet50 application"
    labels = infos[0]
    assert labels["model"] == "resnet50" and labels["device"] == "cpu"
    assert labels["dtype"] == "float32" and labels["preprocess"] == "stretch224"
    assert labels["weights_sha256"] == sha256_of(resnet50_file)[:12]
    assert labels["deployment"] == "Embedder" and re.fullmatch(r"\w+", labels["replica"])


def test_serves_built_in_metrics_are_there_too(serve_instance, scraped_after_requests):
    families = text_string_to_metric_families(httpx.get(serve_instance.metrics_url).text)
    names = {f.name for f in families}
    assert "ray_serve_num_http_requests" in names or "ray_serve_num_http_requests_total" in names


def _exported_names(metrics_url: str) -> set[str]:
    """Every sample name on the endpoint (counters with _total, histograms' _bucket...)."""
    names = set()
    for line in httpx.get(metrics_url, timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_the_grafana_dashboard_names_only_exported_metrics(serve_instance, scraped_after_requests):
    dashboard = json.loads((ROOT / "cluster" / "grafana" / "img2vec.json").read_text())
    exprs = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ] + [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {name for expr in exprs for name in re.findall(r"\bray_[a-z0-9_]+", expr)}
    assert {"ray_img2vec_requests_total", "ray_img2vec_model_info"} <= used
    exported = _exported_names(serve_instance.metrics_url)
    # A counter that has not counted yet (no drop so far) is not exported: its family is.
    unseen = {n for n in used - exported if n.removesuffix("_total") + "_total" not in exported}
    allowed_unseen = {"ray_img2vec_dropped_images_total"}
    assert unseen <= allowed_unseen, sorted(unseen)
    assert allowed_unseen <= {f"ray_{n}_total" for n in NAMES}
