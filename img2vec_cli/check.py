"""`img2vec check URL`: what Weaviate's img2vec-neural module relies on, checked against any
running service (ours, or the container it replaces), so that users can check before they
switch. Each check gives (verdict, name, detail); verdicts: PASS, WARN, FAIL."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

Result = tuple[str, str, str]


def _test_image() -> bytes:
    """A small PNG with structure in it (gradients and a disc), made here, so the check needs
    no file."""
    y, x = np.mgrid[0:96, 0:128]
    rgb = np.stack([x * 2, y * 2, ((x - 64) ** 2 + (y - 48) ** 2 < 900) * 255], axis=-1)
    buf = io.BytesIO()
    Image.fromarray(rgb.astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _body(image: bytes) -> str:
    return json.dumps({"id": f"{uuid.uuid4()}_0", "image": base64.b64encode(image).decode()})


def _json_error(r: httpx.Response) -> str | None:
    """None if the body is a JSON object with a string `error`, else what it is instead."""
    try:
        body = r.json()
    except ValueError:
        return f"body is not JSON ({r.headers.get('content-type', 'no content type')})"
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return f"JSON without an 'error' string: {str(body)[:100]}"
    return None


def _vector(r: httpx.Response, id_: str | None = None) -> tuple[np.ndarray | None, str]:
    if r.status_code != 200:
        return None, f"HTTP {r.status_code}: {r.text[:200]}"
    try:
        body = r.json()
        vector = np.asarray(body["vector"], dtype=np.float64)
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"not a vector response: {exc!r}"
    if body.get("dim") != len(vector):
        return None, f"dim {body.get('dim')} but {len(vector)} numbers"
    if id_ is not None and body.get("id") != id_:
        return None, f"id {body.get('id')!r} is not the one sent"
    if not np.isfinite(vector).all():
        return None, "the vector holds NaN or infinity"
    return vector, "ok"


def run_checks(
    url: str,
    *,
    dim: int,
    model: str,
    reference_weights: str | None,
    images: list[Path],
    timeout: float,
) -> list[Result]:
    results: list[Result] = []
    # Weaviate follows no redirect (since 1.35.17) and sends no Content-Type.
    with httpx.Client(timeout=timeout, follow_redirects=False) as http:
        results.append(_status(http, url + "/.well-known/live", "live"))
        results.append(_ready(http, url, timeout))
        image = _test_image()
        body = _body(image)
        id_ = json.loads(body)["id"]
        r = http.post(url + "/vectors", content=body)
        plain, detail = _vector(r, id_)
        results.append(
            _verdict(plain is not None, "vectors without Content-Type (as Weaviate sends)", detail)
        )
        r = http.post(url + "/vectors", content=body, headers={"Content-Type": "application/json"})
        typed, detail = _vector(r)
        results.append(
            _verdict(typed is not None, "vectors with Content-Type: application/json", detail)
        )
        r = http.post(url + "/vectors/", content=body)
        slash, detail = _vector(r)
        if r.status_code in (301, 302, 307, 308):
            detail = f"redirects ({r.status_code}); Weaviate >= 1.35.17 does not follow redirects"
        results.append(
            _verdict(slash is not None, "POST /vectors/ (trailing slash) answered directly", detail)
        )
        if plain is not None:
            results.append(
                _verdict(len(plain) == dim, "vector length", f"{len(plain)} (expected {dim})")
            )
            same = all(
                v is None or np.allclose(v, plain, rtol=1e-4, atol=1e-6) for v in (typed, slash)
            )
            results.append(
                _verdict(
                    same,
                    "the same image gives the same vector on every route",
                    "ok" if same else "vectors differ",
                )
            )
        results += _errors(http, url)
        if reference_weights and plain is not None:
            results += _reference(
                http, url, model, reference_weights, [image, *(p.read_bytes() for p in images)]
            )
    return results


def _verdict(ok: bool, name: str, detail: str) -> Result:
    return ("PASS" if ok else "FAIL", name, detail)


def _status(http: httpx.Client, url: str, name: str) -> Result:
    try:
        r = http.get(url)
    except httpx.HTTPError as exc:
        return ("FAIL", name, f"no answer: {exc!r}")
    return _verdict(r.status_code == 204, name, f"HTTP {r.status_code}")


def _ready(http: httpx.Client, url: str, timeout: float) -> Result:
    """Weaviate polls readiness every second with a 500 ms timeout."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            started = time.monotonic()
            r = http.get(url + "/.well-known/ready", timeout=0.5)
            took = time.monotonic() - started
            if r.status_code == 204:
                return (
                    "PASS",
                    "ready (within Weaviate's 500 ms)",
                    f"HTTP 204 in {1e3 * took:.0f} ms",
                )
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = f"no answer within 500 ms: {exc!r}"
        time.sleep(1)
    return ("FAIL", "ready (within Weaviate's 500 ms)", f"not ready after {timeout:g} s ({last})")


def _errors(http: httpx.Client, url: str) -> list[Result]:
    """Bad input: a JSON {"error"} body (Weaviate parses the body before the status), and
    a 4xx (the replaced container answered 500 to everything: a WARN, not a FAIL)."""
    out: list[Result] = []
    for name, body in (
        ("invalid base64", json.dumps({"id": "x", "image": "aGVsbG8"})),
        (
            "bytes that are not an image",
            json.dumps({"id": "x", "image": base64.b64encode(b"plain text").decode()}),
        ),
        ("a body that is not JSON", "not json"),
    ):
        r = http.post(url + "/vectors", content=body)
        problem = _json_error(r)
        if problem is not None:
            out.append(("FAIL", f"error for {name} is JSON", f"HTTP {r.status_code}, {problem}"))
        elif 400 <= r.status_code < 500:
            out.append(("PASS", f"error for {name} is JSON", f"HTTP {r.status_code}"))
        else:
            out.append(
                (
                    "WARN",
                    f"error for {name} is JSON",
                    f"HTTP {r.status_code}: a client error reported as the server's",
                )
            )
    return out


def _reference(
    http: httpx.Client, url: str, model: str, weights: str, images: list[bytes]
) -> list[Result]:
    from img2vec.inputs.decoding import open_image
    from img2vec.models.image import build_embedder

    embedder = build_embedder(model=model, weights=weights, device="cpu")
    out: list[Result] = []
    for i, image in enumerate(images):
        r = http.post(url + "/vectors", content=_body(image))
        vector, detail = _vector(r)
        if vector is None:
            out.append(("FAIL", f"reference vector {i}", detail))
            continue
        ours = embedder.embed([embedder.preprocess.to_array(open_image(image))])[0].astype(
            np.float64
        )
        cos = float(vector @ ours / (np.linalg.norm(vector) * np.linalg.norm(ours)))
        rel = float(np.linalg.norm(vector - ours) / np.linalg.norm(ours))
        out.append(
            _verdict(
                cos >= 0.9999,
                f"reference vector {i} ({model})",
                f"cosine {cos:.6f}, relative error {rel:.1e}",
            )
        )
    return out
