"""The application builder: `import_path: deployments.app:build_app` in serve_config.yaml.

Each setting has one owner:
- structure (which model, which weights, limits) -> `AppArgs`, from the YAML's `args:`
  and overridden by `IMG2VEC_<FIELD>` environment variables, read here, once, at build;
- live batch tuning -> the Embedder's `user_config` (img2vec.serving.batching.BatchSettings);
- resources, replicas and autoscaling -> serve_config.yaml.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from ray.serve import Application

from deployments.edge.clip import ClipIngress
from deployments.edge.neural import NeuralIngress
from deployments.model.models import ClipModel, ImageModel
from deployments.settings import (
    ENV_PREFIX,
    ClipModelSettings,
    ImageModelSettings,
    IngressSettings,
)
from img2vec.errors import ConfigError, Img2VecError
from img2vec.models.clip.registry import read_model_dir
from img2vec.models.weights import check_source, get_spec, preset_of, resolve_weights
from img2vec.options import DOWNLOAD

build_log = logging.getLogger("img2vec.build")
# Settings renamed since a release: the old name still works (YAML `args:` or
# `IMG2VEC_<OLD>`), with a warning at build; both names at once is an error.
RENAMED = {"graph": "engine"}


class AppArgs(IngressSettings, ImageModelSettings):
    """Arguments of the application: the model replica's settings and the ingress's, each
    defined once in deployments/settings.py. Every field `foo` can be overridden by
    `IMG2VEC_FOO`."""


class ClipArgs(IngressSettings, ClipModelSettings):
    """Arguments of the multi2vec-clip application (`build_clip_app`), the same way."""


Args = TypeVar("Args", AppArgs, ClipArgs)


def _merge(
    cls: type[Args], args: BaseModel | Mapping[str, object] | None, env: Mapping[str, str]
) -> Args:
    """YAML args, then IMG2VEC_* overrides, validated together."""
    base = args.model_dump(exclude_unset=True) if isinstance(args, BaseModel) else dict(args or {})
    overrides = {}
    for field in [*cls.model_fields, *RENAMED]:
        value = env.get(ENV_PREFIX + field.upper())
        if value is not None and value.strip() != "":
            overrides[field] = value.strip()
    base = {**_renamed(base, "args"), **_renamed(overrides, "environment")}
    try:
        return cls.model_validate(base)
    except ValidationError as exc:
        raise ConfigError(f"invalid img2vec settings: {exc}") from None


def _renamed(values: dict[str, object], where: str) -> dict[str, object]:
    """`values` with each old setting name replaced by its new one."""
    for old, new in RENAMED.items():
        if old not in values:
            continue
        if new in values:
            raise ConfigError(
                f"the {where} sets both {new} and {old}, its old name "
                f"({values[new]!r}, {values[old]!r}): keep {new} (IMG2VEC_{new.upper()})"
            )
        build_log.warning(
            "the setting %s (IMG2VEC_%s) is now called %s (IMG2VEC_%s); the old name will be "
            "removed in a later release",
            old,
            old.upper(),
            new,
            new.upper(),
        )
        values[new] = values.pop(old)
    return values


def resolve_args(args: AppArgs | Mapping[str, object] | None, env: Mapping[str, str]) -> AppArgs:
    resolved = _merge(AppArgs, args, env)
    # An unknown model or a missing weights file fails here, once, at build time, rather
    # than in every replica start (Serve retries those, then hangs in DEPLOY_FAILED).
    check_source(get_spec(resolved.model), resolved.weights)
    return resolved


def resolve_clip_args(
    args: ClipArgs | Mapping[str, object] | None, env: Mapping[str, str]
) -> ClipArgs:
    resolved = _merge(ClipArgs, args, env)
    try:
        read_model_dir(resolved.weights)  # not a CLIP-style directory: said at build
    except (OSError, ValueError) as exc:
        raise ConfigError(f"IMG2VEC_WEIGHTS={resolved.weights}: {exc}") from None
    return resolved


def fetch_weights(args: AppArgs) -> None:
    """`weights: download` is fetched here, once, before any replica starts, with progress
    on the console and a stall timeout; a machine without network fails the build at once
    with the offline instructions. Replicas on this machine then find the verified file in
    the cache; on other nodes they find it baked into the image (or fetch it once per node)."""
    if args.weights.strip() == DOWNLOAD:
        resolve_weights(get_spec(args.model), DOWNLOAD, timeout_s=args.download_timeout_s)


@contextlib.contextmanager
def _on_console(*names: str) -> Iterator[None]:
    """The builder runs in a Ray task whose stderr `serve run` shows, while Serve's own logger
    writes to files only (with RAY_SERVE_THROUGHPUT_OPTIMIZED): the build's messages, the
    download's progress among them, go to stderr too while it runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("img2vec: %(message)s"))
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def build_app(args: AppArgs) -> Application:
    with _on_console("img2vec.build", "img2vec.models.weights"):
        try:
            args = resolve_args(args, os.environ)
            build_log.info("building with %s", args)
            fetch_weights(args)
        except Img2VecError as exc:
            build_log.error("cannot start: %s", exc.message)
            raise
    model = ImageModel.bind(ImageModelSettings.part_of(args))
    return NeuralIngress.bind(model, IngressSettings.part_of(args), preset_of(args.model))


def build_clip_app(args: ClipArgs) -> Application:
    """Weaviate's multi2vec-clip API (`import_path: deployments.app:build_clip_app`):
    `weights` (IMG2VEC_WEIGHTS) names a CLIP or SigLIP model directory."""
    with _on_console("img2vec.build"):
        try:
            args = resolve_clip_args(args, os.environ)
            build_log.info("building multi2vec-clip with %s", args)
        except Img2VecError as exc:
            build_log.error("cannot start: %s", exc.message)
            raise
    model = ClipModel.bind(ClipModelSettings.part_of(args))
    return ClipIngress.bind(model, IngressSettings.part_of(args))
