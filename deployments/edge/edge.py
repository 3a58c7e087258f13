"""What every route of every protocol shares, from a request's arrival to its answer: the
drain check, the deadline, the byte budget, errors made JSON, the metrics and the access-log
line (`Answering`), readiness (`readiness`), and the decode pool (`ImagePool`). The
img2vec-neural ingress (deployments/ingress.py) and the multi2vec-clip one
(deployments/clip.py) each hold one of these and add only their routes.

No torch here (ingress replicas scale with request rate, docs/benchmarks.md#ingress).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeAlias, TypeVar

from fastapi import Request, Response

from deployments.health import Drain, EmbedderHealth
from deployments.http import ByteBudget, Held, embedder_error, error_response, json_error
from deployments.metrics import IngressMetrics
from deployments.settings import IngressSettings
from img2vec.cpus import DECODE_THREAD, name_this_thread
from img2vec.errors import INTERNAL_ERROR, Img2VecError, NotReady, Overloaded

log = logging.getLogger("ray.serve")
# A child of Serve's logger: its lines go where Serve writes the replica's log (file, stderr or
# JSON, as its logging_config says).
access = logging.getLogger("ray.serve.img2vec.access")

T = TypeVar("T")


class Timing:
    """Where one request's time went, for its access-log line."""

    __slots__ = ("decode_s", "id", "model_s", "nbytes", "started")

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.decode_s = self.model_s = 0.0
        self.id: str | None = None
        self.nbytes = 0


# A route's work: the request, what it holds of the byte budget, its deadline (epoch seconds).
Handler: TypeAlias = Callable[[Request, Held, float, Timing], Awaitable[Response]]


class Answering:
    """One request, from arrival to answer: refused while draining, bounded in time and in
    bytes held, whatever goes wrong made its JSON answer, then counted and logged."""

    def __init__(
        self, settings: IngressSettings, metrics: IngressMetrics, drain: Drain | None = None
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.budget = ByteBudget(settings.max_inflight_bytes)
        self.drain = drain
        self.inflight = 0

    async def __call__(self, route: str, handler: Handler, request: Request) -> Response:
        timing = Timing()
        timeout = self.settings.request_timeout_s
        self.inflight += 1
        try:
            if self.drain is not None and self.drain.refusing:
                raise NotReady("the service is shutting down; retry elsewhere")
            # The budget covers the request until it is answered, not only until decoded:
            # Serve's receive path keeps its own copies of the body for the request's life
            # (measured: ~3x the body per waiting request), so only this bounds memory.
            async with asyncio.timeout(timeout):
                with Held(self.budget) as held:
                    self.metrics.inflight_bytes.set(self.budget.held)
                    response = await handler(request, held, time.time() + timeout, timing)
        except TimeoutError:
            response = error_response(Overloaded(f"not answered within {timeout:g} s; retry"))
        except Img2VecError as exc:
            response = error_response(exc)
        except Exception:
            log.exception("%s failed", route)
            response = json_error(INTERNAL_ERROR, 500)
        finally:
            self.inflight -= 1
            self.metrics.inflight_bytes.set(self.budget.held)
        took = time.perf_counter() - timing.started
        self.metrics.answered(route, response.status_code, took)
        if self.settings.access_log:
            access.info(
                "%s %d id=%s bytes=%d total_ms=%.1f decode_ms=%.1f model_ms=%.1f",
                route,
                response.status_code,
                _loggable(timing.id),
                timing.nbytes,
                1e3 * took,
                1e3 * timing.decode_s,
                1e3 * timing.model_s,
            )
        return response


def readiness(drain: Drain, health: EmbedderHealth) -> Response:
    """204 while the model answers; a JSON 503 saying why not (loading, stuck, draining)."""
    if drain.unready:
        return error_response(NotReady("the service is shutting down"))
    if health.info is None:
        return error_response(NotReady("model is loading"))
    if not health.ready:
        return error_response(
            NotReady(f"the model has not answered for over {health.unready_after_s} s")
        )
    return Response(status_code=204)


async def describe_model(embedder: Any) -> dict[str, Any] | Response:
    """One model replica's `describe()` for /meta, or the JSON error saying why there is none
    (no answer within 5 s: 503; a replica restarting: 503; our fault: 500, logged)."""
    try:
        described: dict[str, Any] = await asyncio.wait_for(embedder.describe.remote(), 5)
    except TimeoutError:
        return error_response(Overloaded("the model did not answer within 5 s"))
    except Exception as exc:
        err = embedder_error(exc)
        if err is None:
            log.error("/meta failed: %r", exc)
            return json_error(INTERNAL_ERROR, 500)
        return error_response(err)
    return described


class ImagePool:
    """The decode threads: CPU work off the event loop, each item's time added to its
    request's and recorded in the decode metric."""

    def __init__(self, workers: int, metrics: IngressMetrics) -> None:
        self._pool = ThreadPoolExecutor(
            workers, thread_name_prefix="decode", initializer=_lower_priority
        )
        self._metrics = metrics

    async def run(self, fn: Callable[..., T], *args: Any, timing: Timing) -> T:
        started = time.perf_counter()
        result = await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        took = time.perf_counter() - started
        timing.decode_s += took
        self._metrics.decode.observe(took)
        return result


def _lower_priority() -> None:
    """Decode threads run at a lower CPU priority than the rest of the node: where the
    model shares the CPU with them, its forward pass (whose threads wait on each other at
    every op) should not be the one that gets preempted. Decoding still fills every idle
    cycle. Linux applies nice values per thread; elsewhere this is a no-op. Named, so that
    `bench.where` counts its CPU as decoding."""
    name_this_thread(DECODE_THREAD)
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 4))


def _loggable(id_: str | None, limit: int = 100) -> str:
    """The client's id in a log line: quoted, escaped, cut short (it is theirs, not ours)."""
    if id_ is None:
        return "-"
    text = repr(id_)
    return text if len(text) <= limit else text[: limit - 3] + "..."
