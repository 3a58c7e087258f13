"""What the ingress knows about the rest of the service, kept fresh in the background so that
no request waits for it: is the model making progress (readiness), and has the launcher
asked this replica to drain (graceful shutdown, deployments/lifecycle.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from deployments import lifecycle

log = logging.getLogger("ray.serve")


class ModelHealth:
    """Is the model making progress? Busy is not down: any answer (a probe or a vector)
    within `unready_after_s` counts. A hung or dead model replica stops answering, and readiness
    turns 503 within that bound; it turns back once an answer comes."""

    def __init__(self, unready_after_s: float) -> None:
        self.unready_after_s = unready_after_s
        self.info: dict[str, Any] | None = None
        self._last_answer = float("-inf")

    def answered(self) -> None:
        self._last_answer = time.monotonic()

    def failed(self) -> None:
        self._last_answer = float("-inf")

    @property
    def seconds_per_image(self) -> float:
        """The model's cost of an image, as its last probe said (0: not known yet)."""
        return float((self.info or {}).get("seconds_per_image") or 0.0)

    @property
    def ready(self) -> bool:
        silent = time.monotonic() - self._last_answer
        return self.info is not None and silent <= self.unready_after_s

    async def watch(self, model: DeploymentHandle) -> None:
        """Probe the model forever: often while not ready, every second once it is."""
        while True:
            try:
                self.info = await asyncio.wait_for(model.info.remote(), self.unready_after_s)
                self.answered()
            except (TimeoutError, BackPressureError):
                pass  # no answer is not an answer: `ready` goes stale on its own
            except Exception as exc:
                if self.ready:
                    log.warning("model not answering, reporting not ready: %r", exc)
                self.failed()
            await asyncio.sleep(1.0 if self.ready else 0.25)


class Drain:
    """This replica's part in a graceful shutdown: it reports its in-flight count to the
    launcher's lifecycle actor (where there is one) and learns whether to report not ready
    (`unready`) and to refuse new requests (`refusing`)."""

    def __init__(self, replica: str, inflight: Callable[[], int]) -> None:
        self.replica = replica
        self.state = lifecycle.SERVING
        self._inflight = inflight

    @property
    def unready(self) -> bool:
        return self.state != lifecycle.SERVING

    @property
    def refusing(self) -> bool:
        return self.state == lifecycle.REFUSING

    async def watch(self) -> None:
        handle = await asyncio.get_running_loop().run_in_executor(None, lifecycle.find)
        if handle is None:
            return  # started without the launcher: nothing will ask us to drain
        while True:
            try:
                state = await handle.report.remote(self.replica, self._inflight())
                if state != self.state:
                    log.info("lifecycle: %s", state)
                self.state = state
            except Exception as exc:  # the launcher is gone: keep serving
                log.debug("lifecycle actor unreachable: %r", exc)
            await asyncio.sleep(lifecycle.REPORT_INTERVAL_S)
