"""Two GPU options measured before they are offered (issue: "On a real GPU"):

1. JPEG decode + the 224x224 stretch on the GPU (nvJPEG through `torchvision.io.decode_jpeg`,
   batched; bilinear antialiased resize with torch) against what the ingress does on a CPU core
   (Pillow decode + `Resize((224, 224))`): images/s each, and the drift of the GPU path's
   vectors (real MobileNetV2 weights) against the Pillow path's, next to the distance between
   different photos.
2. `torch.compile` of the eager model against the frozen TorchScript graph we serve.

Run on a CUDA machine: `python -m bench.cuda_probe` (one JSON line per result)."""

from __future__ import annotations

import json
import time

import numpy as np
import torch

from bench.images import image_sets
from bench.model import time_forward
from img2vec.inputs.decoding import open_image
from img2vec.models.image import build_embedder
from tests.support.parity import min_separation, relative_error


def _pil_arrays(jpegs: list[bytes], preprocess) -> list[np.ndarray]:
    return [preprocess.to_array(open_image(b)) for b in jpegs]


def _gpu_arrays(jpegs: list[bytes]) -> torch.Tensor:
    """uint8 (N, 224, 224, 3) on the GPU, decoded by nvJPEG and stretched there."""
    from torchvision.io import decode_jpeg

    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
    decoded = decode_jpeg(data, device="cuda")
    out = [
        torch.nn.functional.interpolate(
            img[None].float(), size=(224, 224), mode="bilinear", antialias=True
        )
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
        for img in decoded
    ]
    return torch.cat(out).permute(0, 2, 3, 1).contiguous()


def _rate(fn, n_images: int, min_time_s: float = 2.0) -> float:
    fn()
    torch.cuda.synchronize()
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < min_time_s or runs < 3:
        fn()
        torch.cuda.synchronize()
        runs += 1
    return n_images * runs / elapsed


def probe_decode() -> None:
    from tests.support.weights import mobilenet_weights_path

    emb = build_embedder(model="mobilenet_v2", weights=str(mobilenet_weights_path()), device="cuda")
    for set_name, jpegs in image_sets("640x480,1920x1080").items():
        batch = (jpegs * (64 // len(jpegs) + 1))[:64]
        pil = _rate(lambda b=batch: _pil_arrays(b, emb.preprocess), len(batch))
        gpu = _rate(lambda b=batch: _gpu_arrays(b), len(batch))
        ref = emb.embed(_pil_arrays(jpegs, emb.preprocess))
        ours = emb.embed(_gpu_arrays(jpegs).cpu().numpy())
        separation = min_separation({str(i): v for i, v in enumerate(ref)})
        errors = [relative_error(a, b) for a, b in zip(ours, ref, strict=True)]
        print(
            json.dumps(
                {
                    "probe": "decode",
                    "images": set_name,
                    "pillow_one_core_img_s": round(pil, 1),
                    "nvjpeg_batch64_img_s": round(gpu, 1),
                    "relative_error_max": float(f"{max(errors):.2e}"),
                    "separation_min": round(separation, 3),
                }
            ),
            flush=True,
        )


def probe_compile() -> None:
    for dtype in ("float16", "float32"):
        frozen = build_embedder(model="resnet50", weights="random", device="cuda", dtype=dtype)
        compiled = build_embedder(
            model="resnet50", weights="random", device="cuda", dtype=dtype, engine="eager"
        )
        start = time.perf_counter()
        compiled.engine.module = torch.compile(compiled.engine.module)  # type: ignore[attr-defined]
        compiled.embed(np.zeros((128, 224, 224, 3), np.uint8))
        compile_s = time.perf_counter() - start
        for batch in (128, 256):
            a = time_forward(frozen, batch, min_time_s=1.5)
            b = time_forward(compiled, batch, min_time_s=1.5)
            row = {"probe": "compile", "dtype": dtype, "batch": batch, "compile_s": compile_s}
            row |= {"torchscript_img_s": a["images_per_s"], "compiled_img_s": b["images_per_s"]}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    probe_decode()
    probe_compile()
