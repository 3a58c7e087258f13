"""Overload in one place: how far behind the model is, and whether a request can still make
its deadline (`Backlog`). The batcher says it after every call (img2vec/serving/batching.py)
and asks it before it admits a request; the ingress's door asks the model's last answer before it
reads one (deployments/edge/client.py). Ray-free and torch-free."""

from __future__ import annotations

from dataclasses import dataclass, replace

from img2vec.errors import Overloaded


@dataclass(frozen=True)
class Backlog:
    """How far behind the model is, and whether a request can still make its deadline: the
    one answer to "overloaded?", asked by the model replica before it enqueues an image and
    by the ingress (from the model's last answer) before it reads a request."""

    # Until an image enqueued now would have its result.
    behind_s: float = 0.0
    # The recent cost of one image in a pass (0 until a pass has run: no estimate yet).
    per_image_s: float = 0.0
    # The largest pass the model runs.
    max_pass: int = 1

    def refusal(self, left_s: float, ahead: int = 0) -> Overloaded | None:
        """Overloaded when a request with `left_s` seconds to go, behind `ahead` more images
        not counted yet, would not have its result in time; else None."""
        behind = self.behind_s + ahead * self.per_image_s
        if behind <= left_s:
            return None
        return Overloaded(
            f"the model is {behind:.1f} s behind and this request has {max(left_s, 0):.1f} s"
            " left; retry later"
        )

    def aged(self, elapsed_s: float) -> Backlog:
        """The same backlog `elapsed_s` later, with nothing added meanwhile."""
        return replace(self, behind_s=max(0.0, self.behind_s - elapsed_s))
