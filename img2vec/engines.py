"""The engines that run a backbone's forward pass on CPU besides PyTorch itself.

One contract for every engine: a uint8 batch (N, H, W, 3), the ingress's pixels as they
arrive, in; float32 vectors (N, dim) out. The normalization is part of the graph
(`Normalized`), the same operations in the same order as `img2vec.model.normalize`, so that
the parity test that holds for PyTorch holds for the engine (tests/unit/test_engines.py).

OpenVINO (`graph: openvino`): the backbone converted from the loaded PyTorch module by
`openvino.convert_model` (no ONNX file in between), compiled for the CPU with the precision
asked for spelled out (`INFERENCE_PRECISION_HINT`: OpenVINO picks bf16 by itself on CPUs with
AMX unless told f32, a silent drift of the vectors). Chosen over ONNX Runtime by the side by
side run in docs/benchmarks.md#engines: as fast in float32, and the only one of the two with a
bfloat16 path (AMX / AVX512-BF16) for the fast mode.

Built once: the converted model is cached on disk, keyed by everything it depends on (the
weights' SHA-256, the model and its feature node, the input size, the OpenVINO and torch
versions), with the SHA-256 of its files recorded beside it and checked at every load; a
stale or damaged entry is rebuilt. OpenVINO's own compiled-blob cache sits beside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from img2vec.errors import ConfigError, brief
from img2vec.weights import cache_dir

log = logging.getLogger(__name__)

OPENVINO = "openvino"
# What the `dtype` setting asks of OpenVINO's CPU plugin.
OPENVINO_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}
CACHE_FORMAT = 1


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def engine_cache_dir() -> Path:
    """Where converted models live: beside torch hub's checkpoints (TORCH_HOME), or
    IMG2VEC_ENGINE_CACHE. The image bakes its entry in with its weights."""
    override = os.environ.get("IMG2VEC_ENGINE_CACHE")
    return Path(override) if override else cache_dir().parent.parent / "img2vec-engines"


class Normalized(torch.nn.Module):
    """uint8 (N, H, W, 3) -> the backbone's embedding, normalization inside the graph."""

    def __init__(
        self, features: torch.nn.Module, mean: Sequence[float], std: Sequence[float]
    ) -> None:
        super().__init__()
        self.features = features
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).to(torch.float32).div(255)
        out: torch.Tensor = self.features(x.sub(self.mean).div(self.std))
        return out


def cache_key(identity: Mapping[str, Any]) -> dict[str, Any]:
    """What a cached model depends on: `identity` (model, feature node, weights' SHA-256,
    input size) and the versions that converted it."""
    import openvino as ov

    return {
        **identity,
        "engine": OPENVINO,
        "engine_version": ov.__version__,
        "torch": torch.__version__,
        "format": CACHE_FORMAT,
    }


def _entry(key: Mapping[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return engine_cache_dir() / f"{key.get('model', 'model')}-{OPENVINO}-{digest}"


def _file_digests(entry: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((entry / name).read_bytes()).hexdigest()
        for name in ("model.xml", "model.bin")
    }


def _cached(entry: Path, key: Mapping[str, Any]) -> bool:
    """The entry exists, was made for exactly this key, and its files are the ones written."""
    try:
        recorded = json.loads((entry / "key.json").read_text())
        return bool(recorded["key"] == dict(key) and recorded["files"] == _file_digests(entry))
    except (OSError, ValueError, KeyError):
        return False


def _convert(
    module: torch.nn.Module, example: tuple[torch.Tensor, ...], inputs: list, entry: Path, key: dict
) -> None:
    import openvino as ov

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(module.eval(), example_input=example, input=inputs)
    tmp = entry.with_name(entry.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Weights as they are: float16 compression would change every vector.
    ov.save_model(model, tmp / "model.xml", compress_to_fp16=False)
    (tmp / "key.json").write_text(json.dumps({"key": key, "files": _file_digests(tmp)}, indent=1))
    shutil.rmtree(entry, ignore_errors=True)
    os.replace(tmp, entry)


def _image_inputs(input_size: tuple[int, int]) -> tuple[tuple[torch.Tensor, ...], list]:
    """uint8 N x H x W x 3, any N: what an image backbone (`Normalized`) takes."""
    import openvino as ov

    h, w = input_size
    return (torch.zeros((1, h, w, 3), dtype=torch.uint8),), [([-1, h, w, 3], ov.Type.u8)]


class OpenVINOEngine:
    """A backbone compiled by OpenVINO for this CPU. Call it from one thread at a time (the
    batcher's forward thread). By default an image backbone (`Normalized`, uint8 images of
    `input_size`); `example` and `inputs` (OpenVINO's shapes and types) describe any other
    module, e.g. a text tower taking token ids of any length."""

    def __init__(
        self,
        module: torch.nn.Module,
        *,
        input_size: tuple[int, int] | None = None,
        identity: Mapping[str, Any],
        dtype: str,
        threads: int | None,
        example: tuple[torch.Tensor, ...] | None = None,
        inputs: list | None = None,
    ) -> None:
        import openvino as ov

        if example is None or inputs is None:
            assert input_size is not None
            example, inputs = _image_inputs(input_size)

        if dtype not in OPENVINO_PRECISIONS:
            raise ConfigError(
                f"graph openvino runs {', '.join(OPENVINO_PRECISIONS)}, not {dtype!r}"
            )
        core = ov.Core()
        if dtype == "bfloat16" and "BF16" not in core.get_property(
            "CPU", "OPTIMIZATION_CAPABILITIES"
        ):
            raise ConfigError(
                "dtype bfloat16 needs a CPU with AMX or AVX512-BF16, and this one has neither: "
                "it would run slower than float32. Use dtype float32."
            )
        self.key = cache_key(identity)
        self.entry = _entry(self.key)
        started = time.perf_counter()
        self.cache_hit = _cached(self.entry, self.key)
        if not self.cache_hit:
            if self.entry.exists():
                log.warning("engine cache %s is stale or damaged: converting again", self.entry)
            try:
                _convert(module, example, inputs, self.entry, self.key)
            except OSError as exc:  # a read-only cache: convert for this process alone
                log.warning("engine cache %s not writable (%s): not cached", self.entry, exc)
                self.entry = Path(tempfile.mkdtemp(prefix="img2vec-engine-")) / self.entry.name
                _convert(module, example, inputs, self.entry, self.key)
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[dtype],
            "PERFORMANCE_HINT": "LATENCY",
            "CACHE_DIR": str(self.entry / "compiled"),
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = core.compile_model(core.read_model(self.entry / "model.xml"), "CPU", config)
        except RuntimeError as exc:
            raise ConfigError(f"OpenVINO could not compile the model: {brief(exc)}") from None
        self._request = compiled.create_infer_request()
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        self.version = ov.__version__
        log.info(
            "openvino engine: %s (%s, cache %s) in %.1f s",
            self.entry.name,
            self.precision,
            "hit" if self.cache_hit else "built",
            time.perf_counter() - started,
        )

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        out = self._request.infer(dict(enumerate(arrays)))
        # A copy: the output tensor is the request's own memory, overwritten by the next call.
        return np.array(out[0], dtype=np.float32, copy=True)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m img2vec.engines MODEL [WEIGHTS] [--dtype D]`: convert and cache the CPU
    engine's model now (the image's build does, beside its baked weights), so that the first
    start finds it."""
    import argparse

    from img2vec.model import build_embedder

    parser = argparse.ArgumentParser(description="convert and cache the CPU engine's model")
    parser.add_argument("model")
    parser.add_argument("weights", nargs="?", default="download")
    parser.add_argument("--dtype", default="float32", choices=sorted(OPENVINO_PRECISIONS))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    embedder = build_embedder(
        model=args.model, weights=args.weights, device="cpu", graph=OPENVINO, dtype=args.dtype
    )
    assert embedder._engine is not None
    print(f"{args.model}: {embedder._engine.entry} ({embedder._engine.precision})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
