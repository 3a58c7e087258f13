"""Model specs as data, and weights resolved -> verified -> loaded.

A spec pins everything a stored vector depends on: the architecture, the exact
weights file (name, URL, full SHA-256), the output dimension and the
preprocessing preset. `IMG2VEC_WEIGHTS` chooses where the weights come from:

- ``download``: the spec's file in the torch hub cache, fetched if absent, its
  SHA-256 checked against the spec;
- a path to a state-dict file: loaded strictly, its SHA-256 logged (and, if the
  file carries the spec's file name, required to match the spec);
- ``random``: seeded random initialisation, for tests and benchmarks only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from img2vec.errors import WeightsError

log = logging.getLogger(__name__)

RANDOM = "random"
DOWNLOAD = "download"
RANDOM_SEED = 0


@dataclass(frozen=True)
class ModelSpec:
    """One servable backbone and the exact weights its vectors depend on."""

    name: str
    builder: str  # a function name in torchvision.models
    head: str  # the classifier attribute replaced by Identity to expose the pooled features
    weights_file: str
    url: str
    sha256: str
    dim: int
    preprocess: str  # a preset name in img2vec.preprocessing.PRESETS
    weights_tag: str  # torchvision's name for these weights, for /meta and the docs

    def build_module(self) -> torch.nn.Module:
        """The architecture with random initial weights (no download)."""
        return getattr(torchvision.models, self.builder)(weights=None)


SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        # torchvision's ResNet50_Weights.IMAGENET1K_V1, the weights `img2vec-pytorch` serves
        # (its `resnet50(pretrained=True)` resolves to them), pinned by URL and SHA-256 here
        # so a newer torchvision default (V2) can never change users' vectors.
        ModelSpec(
            name="resnet50",
            builder="resnet50",
            head="fc",
            weights_file="resnet50-0676ba61.pth",
            url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
            sha256="0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
            dim=2048,
            preprocess="stretch224",
            weights_tag="ResNet50_Weights.IMAGENET1K_V1",
        ),
        ModelSpec(
            name="mobilenet_v2",
            builder="mobilenet_v2",
            head="classifier",
            weights_file="mobilenet_v2-b0353104.pth",
            url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            dim=1280,
            preprocess="stretch224",
            weights_tag="MobileNet_V2_Weights.IMAGENET1K_V1",
        ),
    )
}
DEFAULT_MODEL = "resnet50"


def get_spec(name: str) -> ModelSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise WeightsError(
            f"Unknown model {name!r}. IMG2VEC_MODEL must be one of: {', '.join(SPECS)}."
        ) from None


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
    """torch hub's checkpoint folder, where torchvision itself would put the file."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(spec: ModelSpec, source: str = DOWNLOAD) -> ResolvedWeights:
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
        return _resolve_download(spec)
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
    if path.name == spec.weights_file and digest != spec.sha256:
        raise WeightsError(_mismatch(spec, path, digest))
    if digest == spec.sha256:
        log.info("weights for %s: %s (sha256 %s, the published file)", spec.name, path, digest)
    else:
        log.warning(
            "weights for %s: %s (sha256 %s) is NOT the published %s (sha256 %s); vectors "
            "will not match other deployments",
            spec.name,
            path,
            digest,
            spec.weights_file,
            spec.sha256,
        )
    return ResolvedWeights(source="file", path=path, sha256=digest)


def _resolve_download(spec: ModelSpec) -> ResolvedWeights:
    target = cache_dir() / spec.weights_file
    if target.is_file():
        digest = sha256_of(target)
        if digest != spec.sha256:
            raise WeightsError(_mismatch(spec, target, digest))
        log.info("weights for %s: cached %s (sha256 verified)", spec.name, target)
        return ResolvedWeights(source=DOWNLOAD, path=target, sha256=digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Download beside the target and rename only once verified, so that a broken or
    # concurrent download never leaves a bad file under the final name.
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{spec.weights_file}.")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s weights from %s", spec.name, spec.url)
        try:
            torch.hub.download_url_to_file(spec.url, str(tmp), progress=False)
        except Exception as exc:
            raise WeightsError(
                f"Could not download the {spec.name} weights from {spec.url} ({exc}). "
                f"This machine may be offline. Either download {spec.weights_file} "
                f"elsewhere (sha256 {spec.sha256}) and set IMG2VEC_WEIGHTS to its path, "
                f"or put it in {target.parent}, where it will be found and verified."
            ) from None
        digest = sha256_of(tmp)
        if digest != spec.sha256:
            raise WeightsError(_mismatch(spec, Path(spec.url), digest))
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("weights for %s: downloaded to %s (sha256 verified)", spec.name, target)
    return ResolvedWeights(source=DOWNLOAD, path=target, sha256=digest)


def _mismatch(spec: ModelSpec, where: Path, digest: str) -> str:
    return (
        f"The {spec.name} weights at {where} have sha256 {digest}, but {spec.weights_file} "
        f"must have sha256 {spec.sha256}. The file is corrupt, truncated or not the "
        f"published one. Delete it and let IMG2VEC_WEIGHTS=download fetch it again from "
        f"{spec.url}, or point IMG2VEC_WEIGHTS at a verified copy."
    )


def load_module(spec: ModelSpec, weights: ResolvedWeights) -> torch.nn.Module:
    """Build the architecture, load the weights strictly, and cut the classifier off so
    that the forward pass returns the global-average-pool features (N, dim)."""
    if weights.source == RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            module = spec.build_module()
    else:
        assert weights.path is not None
        module = spec.build_module()
        try:
            state = torch.load(weights.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsError(
                f"Could not read {weights.path} as a PyTorch state dict ({_short(exc)}). "
                f"IMG2VEC_WEIGHTS must name a file saved with torch.save(model.state_dict())."
            ) from None
        if not isinstance(state, dict):
            raise WeightsError(
                f"{weights.path} holds a {type(state).__name__}, not a state dict. Save it "
                f"with torch.save(model.state_dict(), path)."
            )
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(
                f"The state dict in {weights.path} does not fit torchvision's {spec.builder} "
                f"({_short(exc)}). IMG2VEC_MODEL={spec.name} needs {spec.weights_file} "
                f"({spec.url}) or a fine-tuned state dict of exactly that architecture."
            ) from None
    setattr(module, spec.head, torch.nn.Identity())
    return module.eval().requires_grad_(False)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
