"""The bare model: ResNet50 forward passes at several batch sizes, nothing else. This is the
hardware's limit that the service is measured against.

Run alone: `python -m bench.model --device cuda --dtypes float32,bfloat16 --batches 64,128,256`
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from img2vec.models.image import build_embedder


def time_forward(
    embedder, batch: int, *, min_time_s: float = 4.0, warmup: int = 2
) -> dict[str, float]:
    """img/s and ms per batch of `embedder.embed` on random uint8 images (the embedder does
    the normalization on its device, as in the service)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
    if embedder.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(embedder.device)
    for _ in range(warmup):
        embedder.embed(images)
    _sync(embedder.device)
    runs = 0
    start = time.perf_counter()
    while True:
        embedder.embed(images)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time_s and runs >= 3:
            break
    _sync(embedder.device)
    elapsed = time.perf_counter() - start
    row = {
        "batch": batch,
        "images_per_s": round(batch * runs / elapsed, 2),
        "ms_per_batch": round(elapsed / runs * 1e3, 2),
    }
    if embedder.device.type == "cuda":  # the weights, this batch's activations and workspace
        row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(embedder.device) / 2**20)
    return row


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(
    *,
    device: str = "auto",
    batches: tuple[int, ...] = (1, 2, 4, 8, 16),
    min_time_s: float = 4.0,
    torch_threads: int | None = None,
    dtype: str = "float32",
    engine: str = "auto",
) -> dict:
    embedder = build_embedder(
        model="resnet50",
        weights="random",
        device=device,
        torch_threads=torch_threads,
        dtype=dtype,
        engine=engine,
    )
    rows = [time_forward(embedder, b, min_time_s=min_time_s) for b in batches]
    best = max(rows, key=lambda r: r["images_per_s"])
    return {
        "device": str(embedder.device),
        "dtype": dtype,
        "engine": embedder.info().engine,
        "torch_threads": torch.get_num_threads(),
        "rows": rows,
        "best": best,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="bare ResNet50 throughput")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", default="float32")
    parser.add_argument("--batches", default="1,2,4,8,16")
    parser.add_argument("--min-time", type=float, default=4.0)
    parser.add_argument(
        "--engine",
        default="auto",
        choices=["auto", "openvino", "torchscript", "eager", "compiled"],
    )
    args = parser.parse_args()
    batches = tuple(int(b) for b in args.batches.split(","))
    for dtype in args.dtypes.split(","):
        result = bench_model(
            device=args.device,
            batches=batches,
            min_time_s=args.min_time,
            dtype=dtype,
            engine=args.engine,
        )
        print(json.dumps(result))


if __name__ == "__main__":
    main()
