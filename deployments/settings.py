"""The application's settings, each defined once: what the model replica takes
(`ImageModelSettings`, exactly the library's `build_embedder` arguments) and what an ingress
replica takes (`IngressSettings`). `AppArgs` (deployments/app.py) is both, read from the
YAML's `args:` and `IMG2VEC_*`; the builder hands each deployment its own part of it as is.
No torch here: the ingress imports this module."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from img2vec.inputs.decoding import DEFAULT_MAX_IMAGE_BYTES, DEFAULT_MAX_IMAGE_PIXELS
from img2vec.options import (
    DEFAULT_DOWNLOAD_TIMEOUT_S,
    DEFAULT_MODEL,
    DOWNLOAD,
    ClipEngineName,
    Device,
    Dtype,
    EngineName,
)


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    @classmethod
    def part_of(cls, settings: BaseModel) -> Self:
        """This class's fields of a larger settings object (AppArgs), as they are."""
        return cls.model_validate(settings.model_dump(include=set(cls.model_fields)))


# Where a model replica runs its model, and on how many threads (both model replicas).
TorchThreads = Annotated[
    int | None,
    Field(
        ge=1,
        description="torch threads per embedder; default: all usable CPUs on CPU, else Ray's grant",
    ),
]


# Both model replicas: whether every vector must be the same bits as its input alone.
BatchInvariance = Annotated[
    bool,
    Field(
        description="every vector the same bits as its input alone, whatever it is batched "
        "with (checked at start; an engine that needs it runs fixed passes); false: no fixed "
        "passes, faster on such an engine, whose vectors then differ by ~1e-7",
    ),
]


class ImageModelSettings(_Settings):
    """The model replica's structure, fixed for its life."""

    model: str = Field(
        DEFAULT_MODEL,
        description=(
            "a name in img2vec.models.weights.SPECS; <name>:native for the model's own crop"
        ),
    )
    weights: str = Field(DOWNLOAD, description="'download', a state-dict path, or 'random'")
    device: Device = Field(
        "auto", description="auto: CUDA when Ray gave the replica a GPU, else CPU"
    )
    # float32 is IEEE float32 on every device (TF32 off on GPUs): the vectors of the container
    # img2vec replaces. The others change vectors (`make bench-drift`, docs/benchmarks.md):
    # float16 (GPU) kept cosine >= 0.99995 with real MobileNetV2 weights; bfloat16 (CPU fast
    # mode, OpenVINO on AMX / AVX512-BF16) is for new indexes only, never the default.
    dtype: Dtype = Field(
        "float32",
        description="float32 matches img2vec-pytorch; tf32, float16 (GPU) and bfloat16 (CPU "
        "fast mode) change vectors",
    )
    engine: EngineName = Field(
        "auto",
        description="auto: OpenVINO on CPU, frozen TorchScript on GPU; or one of them, eager, "
        "or compiled (torch.compile with CUDA graphs, GPU only, not yet measured)",
    )
    torch_threads: TorchThreads = None
    batch_invariance: BatchInvariance = True
    download_timeout_s: float = Field(
        DEFAULT_DOWNLOAD_TIMEOUT_S, gt=0, description="give up a weights download stalled this long"
    )


class ClipModelSettings(_Settings):
    """The multi2vec-clip model replica's structure (deployments/model/models.py)."""

    weights: str = Field(
        description="a CLIP or SigLIP model directory in Hugging Face's save_pretrained layout, "
        "a hub name (owner/model) fetched once into the Hugging Face cache, or 'random'"
    )
    device: Device = Field(
        "auto", description="auto: CUDA when Ray gave the replica a GPU, else CPU"
    )
    torch_threads: TorchThreads = None
    engine: ClipEngineName = Field(
        "auto",
        description="auto: both towers on OpenVINO on CPU (the same vectors), eager on GPU; "
        "or openvino, or eager",
    )
    batch_invariance: BatchInvariance = True


class IngressSettings(_Settings):
    """An ingress replica's limits and behaviour, fixed for its life. Every `max_*` field and
    `request_timeout_s` is a limit a client can run into: /meta reports them (`limits()`)."""

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
    def _one_body_fits_in_flight(self) -> IngressSettings:
        for name in ("max_body_bytes", "max_bulk_bytes"):
            if self.max_inflight_bytes < getattr(self, name):
                raise ValueError(
                    f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least "
                    f"{name} ({getattr(self, name)}), or no such request could be served"
                )
        return self

    def limits(self) -> dict[str, Any]:
        return {
            name: value
            for name, value in self.model_dump().items()
            if name.startswith("max_") or name == "request_timeout_s"
        }


# The settings reference (docs/configuration.md), generated from the declarations above:
# `python -m deployments.settings` rewrites it, and a test fails when it is stale.
REFERENCE_BEGIN, REFERENCE_END = "<!-- settings:begin -->", "<!-- settings:end -->"
ENV_PREFIX = "IMG2VEC_"


def _allowed(annotation: Any) -> str:
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return ", ".join(f"`{v}`" for v in get_args(annotation))
    if annotation is bool:
        return "`true`, `false`"
    names = [getattr(a, "__name__", str(a)) for a in get_args(annotation) if a is not type(None)]
    return " or ".join(names) if names else getattr(annotation, "__name__", str(annotation))


def reference() -> str:
    """One table per settings class: name, environment variable, default, allowed values and
    description, as declared."""
    from pydantic_core import PydanticUndefined

    parts = []
    for title, cls in (
        ("img2vec-neural's model replica (`serve_config.yaml`)", ImageModelSettings),
        ("multi2vec-clip's model replica (`serve_config.clip.yaml`)", ClipModelSettings),
        ("Both protocols' ingress replicas", IngressSettings),
    ):
        lines = [
            f"**{title}**",
            "",
            "| setting | environment | default | values | meaning |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, field in cls.model_fields.items():
            default = field.default
            shown = "required" if default is PydanticUndefined else f"`{default}`"
            if default is None:
                shown = "unset"
            if isinstance(default, bool):
                shown = f"`{str(default).lower()}`"
            lines.append(
                f"| `{name}` | `{ENV_PREFIX}{name.upper()}` | {shown} "
                f"| {_allowed(field.annotation)} | {field.description or ''} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def write_reference(path: Any) -> bool:
    """Rewrite the reference between its markers in `path`; True when it changed."""
    text = path.read_text()
    start = text.index(REFERENCE_BEGIN) + len(REFERENCE_BEGIN)
    end = text.index(REFERENCE_END)
    new = text[:start] + "\n" + reference() + "\n" + text[end:]
    path.write_text(new)
    return new != text


if __name__ == "__main__":
    from pathlib import Path

    target = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
    print(("rewrote " if write_reference(target) else "unchanged: ") + str(target))
