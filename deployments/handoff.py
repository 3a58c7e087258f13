"""What crosses between an ingress replica and the model replica, named: one call carries a
group of images (`ImageModel.embed_group(images, deadlines)`) or one multi2vec-clip request
(`ClipModel.embed_requests([(images, texts, deadline), ...])`, each in `request_order`), and its
answer is a `GroupAnswer`. Pickled by Ray, so both sides import it: no torch, no FastAPI."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import numpy as np

from img2vec.errors import Img2VecError
from img2vec.serving.overload import Backlog

T = TypeVar("T")


class GroupAnswer(NamedTuple):
    # Each image's vector, or its own error (a refusal is a value: an exception crossing Ray
    # costs a traceback and its pickling, per request, in both processes), in input order.
    results: list[np.ndarray | Img2VecError]
    # How far behind the model is now: the ingress refuses from it, before reading a request,
    # what cannot make its deadline, and keeps its groups no larger than one pass.
    backlog: Backlog


def request_order(images: Sequence[T], texts: Sequence[T]) -> list[T]:
    """A multi2vec-clip request's inputs, or their vectors, in the one order both sides
    keep: its images first, then its texts."""
    return [*images, *texts]


def split_request(vectors: Sequence[T], images: int) -> tuple[list[T], list[T]]:
    """`request_order`'s vectors back into (the images', the texts')."""
    return list(vectors[:images]), list(vectors[images:])
