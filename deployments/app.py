"""The application builder: `import_path: deployments.app:build_app` in serve_config.yaml.

Each setting has one owner:
- structure (which model, which weights, limits) -> `AppArgs`, from the YAML's `args:`
  and overridden by `IMG2VEC_<FIELD>` environment variables, read here, once, at build;
- live batch tuning -> the Embedder's `user_config` (img2vec.batching.BatchSettings);
- resources, replicas and autoscaling -> serve_config.yaml.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray.serve import Application

from deployments.embedder import EmbedderDeployment, EmbedderOptions
from deployments.ingress import Ingress, IngressOptions
from img2vec.decoding import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from img2vec.errors import ConfigError, Img2VecError
from img2vec.weights import (
    DEFAULT_DOWNLOAD_TIMEOUT_S,
    DEFAULT_MODEL,
    DOWNLOAD,
    check_source,
    get_spec,
    preset_of,
    resolve_weights,
)

build_log = logging.getLogger("img2vec.build")
ENV_PREFIX = "IMG2VEC_"


class AppArgs(BaseModel):
    """Arguments of the application. Every field `foo` can be overridden by `IMG2VEC_FOO`."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field(
        DEFAULT_MODEL,
        description="a name in img2vec.weights.SPECS; <name>:native for the model's own crop",
    )
    weights: str = Field(DOWNLOAD, description="'download', a state-dict path, or 'random'")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # float32 is IEEE float32 on every device (TF32 off on GPUs). With real MobileNetV2
    # weights (`make bench-drift`), float16 kept cosine >= 0.99995 to float32; bfloat16 fell
    # to 0.969, below the 0.999 we require, so the service does not offer it.
    dtype: Literal["float32", "tf32", "float16"] = Field(
        "float32", description="float32 matches img2vec-pytorch; tf32 and float16 are GPU options"
    )
    graph: Literal["torchscript", "eager"] = Field(
        "torchscript", description="frozen TorchScript graph, or plain eager torchvision"
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per embedder; default: all usable CPUs on CPU, else Ray's grant",
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="largest request body")
    max_image_bytes: int = Field(
        DEFAULT_MAX_IMAGE_BYTES, gt=0, description="largest image file, after base64 decoding"
    )
    max_inflight_bytes: int = Field(
        512 * 1024 * 1024, gt=0, description="request bytes one ingress replica holds at once"
    )
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, gt=0, description="width x height")
    max_id_length: int = Field(1024, gt=0, description="longest accepted id, in characters")
    decode_workers: int = Field(4, gt=0, description="decode threads per ingress replica")
    exif_transpose: bool = Field(
        False, description="apply EXIF orientation (changes vectors vs. img2vec-pytorch)"
    )
    jpeg_draft: bool = Field(
        False, description="decode large JPEGs at reduced scale: faster, vectors drift slightly"
    )
    unready_after_s: float = Field(
        10.0, gt=0, description="readiness turns 503 when the model answered nothing this long"
    )
    download_timeout_s: float = Field(
        DEFAULT_DOWNLOAD_TIMEOUT_S, gt=0, description="give up a weights download stalled this long"
    )
    request_timeout_s: float = Field(
        20.0,
        gt=0,
        le=45,
        description="every request is answered within this, 503 if need be (Weaviate waits 50 s)",
    )
    access_log: bool = Field(True, description="one log line per request: id, status, timings")
    max_bulk_items: int = Field(256, gt=0, description="most items in one POST /vectors/batch")
    max_bulk_bytes: int = Field(
        64 * 1024 * 1024, gt=0, description="largest POST /vectors/batch body"
    )

    @model_validator(mode="after")
    def _one_body_fits_in_flight(self) -> AppArgs:
        for name in ("max_body_bytes", "max_bulk_bytes"):
            if self.max_inflight_bytes < getattr(self, name):
                raise ValueError(
                    f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least "
                    f"{name} ({getattr(self, name)}), or no such request could be served"
                )
        return self


def resolve_args(args: AppArgs | Mapping[str, object] | None, env: Mapping[str, str]) -> AppArgs:
    """YAML args, then IMG2VEC_* overrides, validated together."""
    base = args.model_dump(exclude_unset=True) if isinstance(args, AppArgs) else dict(args or {})
    for field in AppArgs.model_fields:
        value = env.get(ENV_PREFIX + field.upper())
        if value is not None and value.strip() != "":
            base[field] = value.strip()
    try:
        resolved = AppArgs.model_validate(base)
    except ValidationError as exc:
        raise ConfigError(f"invalid img2vec settings: {exc}") from None
    # An unknown model or a missing weights file fails here, once, at build time, rather
    # than in every replica start (Serve retries those, then hangs in DEPLOY_FAILED).
    check_source(get_spec(resolved.model), resolved.weights)
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
    with _on_console("img2vec.build", "img2vec.weights"):
        try:
            args = resolve_args(args, os.environ)
            build_log.info("building with %s", args)
            fetch_weights(args)
        except Img2VecError as exc:
            build_log.error("cannot start: %s", exc.message)
            raise
    embedder = EmbedderDeployment.bind(
        EmbedderOptions(
            model=args.model,
            weights=args.weights,
            device=args.device,
            dtype=args.dtype,
            graph=args.graph,
            torch_threads=args.torch_threads,
            download_timeout_s=args.download_timeout_s,
        )
    )
    return Ingress.bind(
        embedder,
        IngressOptions(
            preprocess=preset_of(args.model),
            max_body_bytes=args.max_body_bytes,
            max_inflight_bytes=args.max_inflight_bytes,
            max_image_bytes=args.max_image_bytes,
            max_image_pixels=args.max_image_pixels,
            max_id_length=args.max_id_length,
            decode_workers=args.decode_workers,
            exif_transpose=args.exif_transpose,
            jpeg_draft=args.jpeg_draft,
            unready_after_s=args.unready_after_s,
            request_timeout_s=args.request_timeout_s,
            access_log=args.access_log,
            max_bulk_items=args.max_bulk_items,
            max_bulk_bytes=args.max_bulk_bytes,
        ),
    )
