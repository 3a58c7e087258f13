"""CPU engines side by side, on one machine in one run: what chose the default engine.

`python -m bench.engines [--batches 1,8] [--model resnet50]`: the calibrated random ResNet50
(the tests' weights: BatchNorm statistics from real photos), bare forward passes of uint8
batches, normalization included, on each engine: eager PyTorch, the frozen TorchScript graph,
OpenVINO f32 and bf16 (img2vec's `engine: openvino`), and ONNX Runtime's CPU provider when
`onnxruntime` and `onnx` are installed (`pip install onnxruntime onnx`: not a dependency of
img2vec). Each engine's vectors of real photos are compared with eager PyTorch's: relative
error, and its ratio to the smallest distance between two photos (parity needs < 0.001).
Prints one JSON line per engine and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.run import machine
from img2vec.inputs.preprocessing import IMAGENET_MEAN, IMAGENET_STD, STRETCH_224
from img2vec.models.engines import Normalized
from img2vec.models.image import build_embedder

Run = Callable[[np.ndarray], np.ndarray]


def _photos() -> np.ndarray:
    from tests.support.images import MORE_PHOTO_NAMES, PHOTO_NAMES, photo

    return np.stack([STRETCH_224.to_array(photo(n)) for n in PHOTO_NAMES + MORE_PHOTO_NAMES])


def _img_s(run: Run, batch: int, min_time_s: float) -> float:
    x = np.random.default_rng(0).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    run(x)
    run(x)
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_time_s or runs < 3:
        run(x)
        runs += 1
    return round(batch * runs / elapsed, 1)


def _onnxruntime(module: torch.nn.Module, threads: int, tmp: Path) -> tuple[str, Run] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = tmp / "model.onnx"
    example = torch.zeros((1, 224, 224, 3), dtype=torch.uint8)
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=["pixels"],
        output_names=["vectors"],
        dynamic_axes={"pixels": {0: "n"}, "vectors": {0: "n"}},
        opset_version=17,
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return f"ONNX Runtime {ort.__version__} CPU (not shipped)", lambda x: session.run(
        None, {"pixels": x}
    )[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--min-time", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["IMG2VEC_ENGINE_CACHE"] = tmp
        weights = Path(tmp) / "weights.pth"
        from tests.support.weights import calibrated_resnet50_state

        torch.save(calibrated_resnet50_state(), weights)
        common = {"model": args.model, "weights": str(weights), "device": "cpu"}
        common["torch_threads"] = args.threads
        engines: dict[str, Run] = {}
        for name, options in (
            ("eager PyTorch", {"engine": "eager"}),
            ("frozen TorchScript", {"engine": "torchscript"}),
            ("OpenVINO f32 (engine openvino)", {"engine": "openvino"}),
            ("OpenVINO bf16 (dtype bfloat16)", {"engine": "openvino", "dtype": "bfloat16"}),
        ):
            try:
                engines[name] = build_embedder(**common, **options).embed  # type: ignore[arg-type]
            except Exception as exc:
                print(json.dumps({"engine": name, "refused": str(exc)}))
        module = build_embedder(**common, engine="eager")._module  # type: ignore[arg-type]
        ort_engine = _onnxruntime(
            Normalized(module, IMAGENET_MEAN, IMAGENET_STD).eval(), args.threads, Path(tmp)
        )
        if ort_engine is not None:
            engines[ort_engine[0]] = ort_engine[1]
        photos = _photos()
        reference = engines["eager PyTorch"](photos)
        separation = min(
            np.linalg.norm(reference[i] - reference[j]) / np.linalg.norm(reference[j])
            for i in range(len(photos))
            for j in range(len(photos))
            if i != j
        )
        rows = []
        for name, run in engines.items():
            ours = run(photos)
            pairs = zip(ours, reference, strict=True)
            err = float(max(np.linalg.norm(o - r) / np.linalg.norm(r) for o, r in pairs))
            row = {
                "engine": name,
                **{f"b{b}_img_s": _img_s(run, b, args.min_time) for b in batches},
                "max_rel_error": f"{err:.1e}",
                "error_per_photo_distance": f"{err / separation:.1e}",
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    m = machine()
    print(f"\n{m['cpu']}, {args.threads} threads, torch {m['torch']}; `python -m bench.engines`\n")
    print(
        "| engine | " + " | ".join(f"b{b} img/s" for b in batches) + " | max rel. error "
        "| error / distance between photos |"
    )
    print("| --- |" + " ---: |" * (len(batches) + 2))
    for r in rows:
        cells = " | ".join(str(r[f"b{b}_img_s"]) for b in batches)
        print(
            f"| {r['engine']} | {cells} | {r['max_rel_error']} | {r['error_per_photo_distance']} |"
        )


if __name__ == "__main__":
    main()
