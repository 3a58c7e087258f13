"""One exception family for everything the library can refuse.

The library never speaks HTTP: each class names *what* went wrong, and the edge
(`STATUS` in `deployments/edge/edge.py`) owns the one table that maps a class to a status code.
"""

from __future__ import annotations

# What a client is told when the fault is ours; the details go to the service's log.
INTERNAL_ERROR = "internal error; the service logged the details"


class Img2VecError(Exception):
    """Base of every error img2vec raises on purpose.

    `message` is safe to show to the client: it describes their input or our
    state, never a traceback or a file path of ours.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(Img2VecError):
    """The request body does not fit the schema (not JSON, missing or mistyped fields)."""


class InvalidImage(Img2VecError):
    """The image field is not valid base64, or its bytes are not a readable image."""


class ImageTooLarge(Img2VecError):
    """The request or image exceeds a configured limit (bytes, pixels, frames)."""


class Overloaded(Img2VecError):
    """The service is at capacity and refuses new work instead of queueing it forever."""


class NotReady(Img2VecError):
    """The model is not loaded yet (or no replica is currently able to answer)."""


class WeightsError(Img2VecError):
    """Weights could not be resolved, verified or loaded. Raised at start-up only."""


class ConfigError(Img2VecError):
    """A setting (argument or IMG2VEC_* variable) has a value we cannot use."""


def brief(exc: BaseException, limit: int = 300) -> str:
    """Another library's exception as a clause of one of our messages: one line, cut short."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
