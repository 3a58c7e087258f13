"""img2vec's own Prometheus metrics, through Ray's metrics system (`ray.serve.metrics`: each
gets the deployment, replica and application tags). Ray exports them, prefixed `ray_`, on every
node's metrics port with Serve's built-ins; docs/metrics.md lists them and what to alert on,
and cluster/grafana/img2vec.json charts them.

Created inside a replica (the Serve tags are filled in from its context), never at import.
Gauges are set again every few seconds (`refresh`): Ray drops a gauge value after a TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from ray.serve.metrics import Counter, Gauge, Histogram

# A child of Serve's logger: its lines go where Serve writes the replica's log (file, stderr or
# JSON, as its logging_config says).
access = logging.getLogger("ray.serve.img2vec.access")

# Seconds: from a millisecond to Weaviate's 50 s client timeout.
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50]
BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]

# Every metric name this module defines (as registered; Ray exports them as `ray_<name>`,
# counters with a `_total` suffix).
NAMES = (
    "img2vec_requests",
    "img2vec_request_seconds",
    "img2vec_decode_seconds",
    "img2vec_tokenize_seconds",
    "img2vec_inflight_request_bytes",
    "img2vec_images_vectorized",
    "img2vec_queue_wait_seconds",
    "img2vec_forward_seconds",
    "img2vec_batch_size",
    "img2vec_dropped_images",
    "img2vec_model_info",
)


class Timing:
    """Where one request's time went, for its access-log line."""

    __slots__ = ("decode_s", "id", "model_s", "nbytes", "started", "tokenize_s")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.decode_s = self.tokenize_s = self.model_s = 0.0
        self.id: str | None = None
        self.nbytes = 0


class IngressMetrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "img2vec_requests",
            description="HTTP requests answered by the ingress, by route and status.",
            tag_keys=("route", "status"),
        )
        self.latency = Histogram(
            "img2vec_request_seconds",
            description="Seconds from a request's arrival at the ingress to its answer.",
            boundaries=LATENCY_BUCKETS,
            tag_keys=("route",),
        )
        self.decode = Histogram(
            "img2vec_decode_seconds",
            description="Seconds to decode and resize one image (base64, file, pixels).",
            boundaries=LATENCY_BUCKETS,
        )
        self.tokenize = Histogram(
            "img2vec_tokenize_seconds",
            description="Seconds to tokenize one /vectorize request's texts.",
            boundaries=LATENCY_BUCKETS,
        )
        self.inflight_bytes = Gauge(
            "img2vec_inflight_request_bytes",
            description="Request bytes the ingress holds now (limit: max_inflight_bytes).",
        )

    def refresh(self, held_bytes: int) -> None:
        """Ray forgets a gauge value not set again within its TTL: call this periodically."""
        self.inflight_bytes.set(held_bytes)

    def account(self, route: str, status: int, timing: Timing, access_log: bool) -> None:
        """One answered request: counted, its latency observed, and (with `access_log`) its
        access-log line: route, status, id, bytes, and where its time went (`tokenize_ms` only
        where a request carried texts)."""
        took = time.perf_counter() - timing.started
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency.observe(took, tags={"route": route})
        if access_log:
            tokenize = f" tokenize_ms={1e3 * timing.tokenize_s:.1f}" if timing.tokenize_s else ""
            access.info(
                "%s %d id=%s bytes=%d total_ms=%.1f decode_ms=%.1f%s model_ms=%.1f",
                route,
                status,
                _loggable(timing.id),
                timing.nbytes,
                1e3 * took,
                1e3 * timing.decode_s,
                tokenize,
                1e3 * timing.model_s,
            )


class ModelMetrics:
    """Also the batcher's observer (img2vec.serving.batching.PassObserver)."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.images = Counter(
            "img2vec_images_vectorized",
            description="Images that went through a forward pass.",
        )
        self.queue_wait = Histogram(
            "img2vec_queue_wait_seconds",
            description="Seconds an image waited in the batcher before its forward pass.",
            boundaries=LATENCY_BUCKETS,
        )
        self.forward = Histogram(
            "img2vec_forward_seconds",
            description="Seconds of one forward pass (a whole batch).",
            boundaries=LATENCY_BUCKETS,
        )
        self.batch_size = Histogram(
            "img2vec_batch_size",
            description="Images in each forward pass that ran.",
            boundaries=BATCH_BUCKETS,
        )
        self.dropped = Counter(
            "img2vec_dropped_images",
            description="Images dropped before their pass: caller gone, or deadline passed.",
            tag_keys=("reason",),
        )
        self._model_info = Gauge(
            "img2vec_model_info",
            description="1, tagged with what every vector depends on.",
            tag_keys=("model", "weights", "weights_sha256", "device", "dtype", "preprocess"),
        )
        self._identity = {
            "model": info["model"],
            "weights": info["weights"],
            "weights_sha256": (info["weights_sha256"] or "none")[:12],
            "device": info["device"],
            "dtype": info["dtype"],
            "preprocess": info["preprocess"],
        }
        self.refresh()

    def refresh(self) -> None:
        """Ray forgets a gauge value not set again within its TTL: call this periodically."""
        self._model_info.set(1, tags=self._identity)

    def on_pass(self, size: int, forward_s: float, queue_wait_s: Sequence[float]) -> None:
        self.images.inc(size)
        self.forward.observe(forward_s)
        self.batch_size.observe(size)
        for wait in queue_wait_s:
            self.queue_wait.observe(wait)

    def on_drop(self, reason: str, count: int) -> None:
        self.dropped.inc(count, tags={"reason": reason})


async def keep_fresh(refresh: Callable[[], None], every_s: float = 5.0) -> None:
    while True:
        refresh()
        await asyncio.sleep(every_s)


def _loggable(id_: str | None, limit: int = 100) -> str:
    """The client's id in a log line: quoted, escaped, cut short (it is theirs, not ours)."""
    if id_ is None:
        return "-"
    text = repr(id_)
    return text if len(text) <= limit else text[: limit - 3] + "..."
