"""The ingress's one path to the model: the requests an ingress replica holds travel to the
Embedder together, as one call per group, and the model's answers say how far behind it is,
so that the ingress can refuse what cannot make its deadline before decoding anything.

Why groups: every call into a replica costs its event loop (Serve's request bookkeeping, the
gRPC message, the pickled arguments) and the caller's, per call. One call per image made the
one model replica of a GPU node, which every request of the node reaches, the node's serial
limit (docs/benchmarks.md#where). `@serve.batch` gathers at the caller, as Ray Serve's own
docs do: with no wait, a lone request leaves at once, and under load each call carries what
arrived while the previous ones were on their way. The Embedder's batcher still decides what
runs in each forward pass (img2vec/batching.py): a group is not a pass.

One ModelLink per ingress replica: `@serve.batch` keeps one queue per decorated method in a
process, shared by every instance of the class.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from deployments.http import embedder_error
from img2vec.errors import Img2VecError, Overloaded

# Images per call: Serve's gRPC transport between deployments (throughput-optimized mode)
# refuses messages over 4 MiB, and 16 images of 224x224x3 are 2.4 MB.
GROUP_SIZE = 16
# Calls in flight per ingress replica; what arrives meanwhile waits here and leaves as one.
GROUPS_IN_FLIGHT = 8


class ModelLink:
    def __init__(self, embedder: DeploymentHandle, on_answer: Callable[[], None]) -> None:
        self._embedder = embedder
        self._on_answer = on_answer
        # The model's last word on its backlog: seconds behind, when it said so (monotonic).
        self._behind_s = 0.0
        self._said_at = 0.0
        self.groups = 0  # calls made, for tests and /meta
        self.images = 0

    def behind_s(self) -> float:
        """How far behind the model was at its last answer, less the time since."""
        return max(0.0, self._behind_s - (time.monotonic() - self._said_at))

    def refusal(self, left_s: float) -> Overloaded | None:
        """Overloaded when the model is already further behind than `left_s`: said before
        the request is read or decoded, which is what makes refusing cheaper than serving."""
        behind = self.behind_s()
        if behind > left_s:
            return Overloaded(
                f"the model is {behind:.1f} s behind and this request has {left_s:.1f} s left;"
                " retry later"
            )
        return None

    async def embed(self, pixels: np.ndarray, deadline: float) -> np.ndarray:
        """One image's vector by `deadline` (epoch seconds), or its error raised."""
        result = await self._send(pixels, deadline)
        if isinstance(result, Img2VecError):
            raise result
        return result

    async def embed_chunk(
        self, pixels: list[np.ndarray], deadline: float
    ) -> list[np.ndarray | Img2VecError]:
        """Images already gathered (a bulk request's chunk of at most GROUP_SIZE): one call."""
        return await self._call(pixels, [deadline] * len(pixels))

    @serve.batch(
        max_batch_size=GROUP_SIZE, batch_wait_timeout_s=0.0, max_concurrent_batches=GROUPS_IN_FLIGHT
    )
    async def _send(
        self, pixels: list[np.ndarray], deadlines: list[float]
    ) -> list[np.ndarray | Img2VecError]:
        return await self._call(pixels, deadlines)

    async def _call(
        self, pixels: list[np.ndarray], deadlines: list[float]
    ) -> list[np.ndarray | Img2VecError]:
        self.groups += 1
        self.images += len(pixels)
        try:
            results, behind_s, max_pass = await self._embedder.embed_group.remote(
                np.stack(pixels), deadlines
            )
        except Exception as exc:
            err = embedder_error(exc)
            if err is None:
                raise
            return [err] * len(pixels)
        self._behind_s, self._said_at = behind_s, time.monotonic()
        # A group larger than the model's pass would be answered only after two passes.
        self._send.set_max_batch_size(max(1, min(GROUP_SIZE, max_pass)))  # type: ignore[attr-defined]
        self._on_answer()
        return results
