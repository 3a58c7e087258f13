"""A closed-loop HTTP load generator: N concurrent clients, each sending its next request as
soon as the last one is answered, for a bounded time and count, to loopback only."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

import aiohttp
import numpy as np

from bench.processes import lower_this_thread

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Weaviate sends no Content-Type, which our service accepts but a stock FastAPI app (the
# baseline, like the container it copies when run on a current FastAPI) answers with 422;
# both are driven with the header, so that both do the work.
JSON = {"Content-Type": "application/json"}
# How Weaviate's module client talks (Go's http.DefaultTransport): no Content-Type, and at most
# 2 idle connections kept per host, so under load most requests arrive on new connections.
WEAVIATE_IDLE_CONNECTIONS = 2


@dataclass
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


async def _run(
    url: str,
    bodies: list[bytes],
    concurrency: int,
    duration_s: float,
    warmup_s: float,
    max_requests: int,
    images_per_request: int = 1,
    content_type: bool = True,
    idle_connections: int | None = None,
) -> LoadResult:
    # Counted: requests that *complete* inside the measured window, whenever they started.
    # (Counting only those that also start inside it would undercount by latency/duration:
    # at 4 s latency in a 15 s window, a quarter of the throughput would go missing.)
    latencies: list[float] = []
    statuses: Counter[int | str] = Counter()
    started = 0
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = JSON if content_type else {}
    idle = 0  # with idle_connections: connections kept open between requests

    async def client(worker: int, session: aiohttp.ClientSession) -> None:
        nonlocal started, idle
        i = worker
        while time.perf_counter() < stop_at and started < max_requests:
            body = bodies[i % len(bodies)]
            i += concurrency
            started += 1
            idle = max(0, idle - 1)  # this request takes a kept connection if there is one
            t0 = time.perf_counter()
            status: int | str
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
                    if idle_connections is not None:
                        if idle < idle_connections:
                            idle += 1  # back to the pool
                        else:
                            resp.close()  # the pool is full: Go closes the connection
            except (aiohttp.ClientError, TimeoutError) as exc:
                status = type(exc).__name__  # a dropped connection, counted as an error
            t1 = time.perf_counter()
            if measure_from <= t1 <= stop_at:
                latencies.append(t1 - t0)
                statuses[status] += 1

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(w, session) for w in range(concurrency)))

    # The window ends early if the request cap was reached first.
    window = min(stop_at, time.perf_counter()) - measure_from
    ok = statuses.get(200, 0)
    lat = np.array(latencies) * 1e3 if latencies else np.array([np.nan])
    return LoadResult(
        concurrency=concurrency,
        requests=sum(statuses.values()),
        errors=sum(n for s, n in statuses.items() if s != 200),
        duration_s=round(window, 3),
        images_per_s=round(ok * images_per_request / window, 3) if window > 0 else 0.0,
        p50_ms=round(float(np.percentile(lat, 50)), 1),
        p95_ms=round(float(np.percentile(lat, 95)), 1),
        p99_ms=round(float(np.percentile(lat, 99)), 1),
        statuses={str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
    )


def run_load(
    url: str,
    bodies: list[bytes],
    *,
    concurrency: int,
    duration_s: float = 15.0,
    warmup_s: float = 3.0,
    max_requests: int = 5000,
    images_per_request: int = 1,
    weaviate: bool = False,
    content_type: bool | None = None,
) -> LoadResult:
    """POST `bodies` round-robin to `url` from `concurrency` clients for warm-up + duration
    seconds (or until `max_requests` were sent); counts and latencies of the requests that
    complete within the measured window. `weaviate`: connections as Weaviate's client keeps
    them (at most 2 idle), and no Content-Type unless `content_type` (the baseline, a stock
    FastAPI app, answers 422 without it)."""
    host = urlsplit(url).hostname
    if host not in LOOPBACK_HOSTS:
        raise ValueError(f"load is only ever sent to loopback, not {host!r}")
    run = _run(
        url,
        bodies,
        concurrency,
        duration_s,
        warmup_s,
        max_requests,
        images_per_request,
        (not weaviate) if content_type is None else content_type,
        WEAVIATE_IDLE_CONNECTIONS if weaviate else None,
    )
    # The load stands in for clients elsewhere: its threads run at the level of the service's
    # workers, not above them (bench.processes.WORKER_NICE).
    with ThreadPoolExecutor(1, initializer=lower_this_thread) as pool:
        return pool.submit(asyncio.run, run).result()


def add_load_args(
    parser: argparse.ArgumentParser, duration: float = 15.0, warmup: float = 4.0, cap: int = 3000
) -> None:
    """Each load point's length: `run_load`'s `duration_s`, `warmup_s` and `max_requests`."""
    parser.add_argument("--duration", type=float, default=duration, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=warmup, help="seconds discarded first")
    parser.add_argument("--max-requests", type=int, default=cap, help="cap per point")
