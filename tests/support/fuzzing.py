"""Hypothesis strategies shared by the fuzz tests: byte-level mutations of valid images of
every format, and request bodies of every shape. Case counts come from IMG2VEC_FUZZ_EXAMPLES
(CI runs a sample; `make fuzz` runs 10,000)."""

from __future__ import annotations

import base64
import json
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.support.formats import SAMPLES, sample


def examples(default: int) -> int:
    return int(os.environ.get("IMG2VEC_FUZZ_EXAMPLES", default))


def fuzz_settings(default_examples: int) -> settings:
    return settings(
        max_examples=examples(default_examples),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        database=None,  # no .hypothesis/ files: every run draws fresh cases
        derandomize=os.environ.get("CI") == "true",  # reproducible in CI, fresh locally
    )


_VALID = {name: sample(name) for name in SAMPLES}


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid image of some format with a few byte-level mutations."""
    data = bytearray(_VALID[draw(st.sampled_from(sorted(_VALID)))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "overwrite", "truncate", "insert", "duplicate"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos : pos + len(chunk)] = chunk
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            end = min(len(data), pos + draw(st.integers(1, 64)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)

_images = st.one_of(
    mutated_images().map(_b64),
    st.binary(max_size=256).map(_b64),
    st.text(max_size=64),
    st.sampled_from(sorted(_VALID)).map(lambda name: _b64(_VALID[name])),
    _json_values,
)

_ids = st.one_of(
    st.text(max_size=40), st.sampled_from(["../../x", "/etc/passwd", "é\u0000"]), _json_values
)


@st.composite
def request_bodies(draw: st.DrawFn) -> bytes:
    """Anything a client might send as the body of POST /vectors."""
    shape = draw(st.sampled_from(["request", "request", "request", "json", "bytes"]))
    if shape == "bytes":
        return draw(st.binary(max_size=512))
    if shape == "json":
        return json.dumps(draw(_json_values)).encode()
    body = {}
    if draw(st.integers(0, 9)) > 0:
        body["id"] = draw(_ids)
    if draw(st.integers(0, 9)) > 0:
        body["image"] = draw(_images)
    if draw(st.booleans()):
        body[draw(st.text(max_size=8))] = draw(_json_values)
    return json.dumps(body).encode()
