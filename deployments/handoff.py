"""What crosses between an ingress replica and the model replica, named: one call carries a
group of images (`Embedder.embed_group(images, deadlines)`), and its answer is a `GroupAnswer`.
Pickled by Ray, so both sides import it: no torch, no FastAPI here."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from img2vec.errors import Img2VecError
from img2vec.serving.overload import Backlog


class GroupAnswer(NamedTuple):
    # Each image's vector, or its own error (a refusal is a value: an exception crossing Ray
    # costs a traceback and its pickling, per request, in both processes), in input order.
    results: list[np.ndarray | Img2VecError]
    # How far behind the model is now: the ingress refuses from it, before reading a request,
    # what cannot make its deadline, and keeps its groups no larger than one pass.
    backlog: Backlog
