"""`img2vec weights fetch|verify`: the weights files in the torch hub cache ($TORCH_HOME), for
offline machines and image builds (the Dockerfile bakes them with `fetch`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from img2vec.errors import Img2VecError
from img2vec.models.weights import cache_dir, get_spec, resolve_weights, sha256_of
from img2vec.options import DOWNLOAD


def fetch(name: str, source: str | None, timeout: float) -> Path:
    """Download (or copy from `source`: a mirror URL or a local file) and verify."""
    spec = get_spec(name)
    if source is not None:
        url = Path(source).resolve().as_uri() if Path(source).exists() else source
        spec = dataclasses.replace(spec, url=url)
    try:
        resolved = resolve_weights(spec, DOWNLOAD, timeout_s=timeout)
    except Img2VecError as exc:
        raise click.ClickException(exc.message) from None
    assert resolved.path is not None
    return resolved.path


def verify(name: str, file: Path | None) -> tuple[bool, str]:
    spec = get_spec(name)
    path = file or cache_dir() / spec.weights_file
    if not path.is_file():
        return False, f"{path} is missing (img2vec weights fetch {spec.name})"
    digest = sha256_of(path)
    if spec.matches(digest):
        return True, f"{path} sha256 {digest}"
    return False, f"{path} sha256 {digest} is not the published {spec.pinned}"


def convert(name: str, weights: str, dtype: str) -> str:
    """Build `name` on the CPU engine (converting and caching it, or finding it cached):
    where the converted model is, and its precision."""
    from img2vec.models.engines import OpenVINOEngine
    from img2vec.models.image import build_embedder

    embedder = build_embedder(
        model=name, weights=weights, device="cpu", engine="openvino", dtype=dtype
    )
    engine = embedder.engine
    if not isinstance(engine, OpenVINOEngine):
        raise click.ClickException(f"{name} did not convert for OpenVINO")
    return f"{engine.entry} ({engine.precision})"
