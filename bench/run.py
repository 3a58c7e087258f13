"""`make bench`: the bare model, our service and the one-at-a-time baseline, side by side, in
one run on this machine, driven by the same load generator over loopback.

Writes bench/results/<stamp>.json and .png, and rewrites the results table in
docs/benchmarks.md between its markers.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import torch
import yaml

from bench.images import BULK, bulk_bodies, image_sets, request_bodies
from bench.loadgen import add_load_args, run_load
from bench.model import bench_model
from bench.processes import (
    baseline_server,
    env_pairs,
    fixed_ingress,
    launched,
)
from bench.report import PRIMARY, write_report
from img2vec.errors import Img2VecError

ROOT = Path(__file__).resolve().parents[1]
BULK_SUFFIX = f"-bulk{BULK}"
BULK_CONCURRENCY = (1, 2)


class TreeMonitor:
    """CPU seconds and resident memory of a process and all its descendants."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self._cpu_seen: dict[int, float] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _procs(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.NoSuchProcess):
            return [self.root, *self.root.children(recursive=True)]
        return []

    def cpu_seconds(self) -> float:
        for p in self._procs():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                self._cpu_seen[p.pid] = t.user + t.system
        return sum(self._cpu_seen.values())

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            rss = 0
            for p in self._procs():
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            self.peak_rss = max(self.peak_rss, rss)
            self.cpu_seconds()

    def __enter__(self) -> TreeMonitor:
        self.cpu_seconds()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def batching(url: str) -> dict | None:
    with contextlib.suppress(Exception):
        return httpx.get(url + "/meta", timeout=10).json()["batching"]
    return None


def forward_seconds(before: dict | None, after: dict | None) -> float | None:
    if not before or not after or "forward_seconds" not in after:
        return None
    return after["forward_seconds"] - before["forward_seconds"]


def formed(before: dict | None, after: dict | None) -> dict[str, int]:
    if not before or not after:
        return {}
    hist = {
        k: v - before["batch_size_histogram"].get(k, 0)
        for k, v in after["batch_size_histogram"].items()
    }
    return {k: v for k, v in hist.items() if v > 0}


def drive(name: str, url: str, pid: int, sets: dict, args: argparse.Namespace) -> list[dict]:
    """Every image set at every concurrency against one running system."""
    rows = []
    with TreeMonitor(pid) as monitor:
        for set_name, bodies in sets.items():
            bulk = set_name.endswith(BULK_SUFFIX)
            if bulk and name != "service":
                continue  # the container we replace has no bulk route
            for concurrency in BULK_CONCURRENCY if bulk else args.concurrency:
                before, cpu0, t0 = batching(url), monitor.cpu_seconds(), time.perf_counter()
                monitor.peak_rss = 0
                result = run_load(
                    url + ("/vectors/batch" if bulk else "/vectors"),
                    bodies,
                    concurrency=concurrency,
                    # A bulk request holds 64 images: a longer window for as many completions.
                    duration_s=args.duration * (3 if bulk else 1),
                    warmup_s=args.warmup,
                    max_requests=args.max_requests,
                    images_per_request=BULK if bulk else 1,
                    # Single images as Weaviate sends them (the baseline with its header).
                    weaviate=not bulk,
                    content_type=None if name == "service" else True,
                )
                cpu1, t1 = monitor.cpu_seconds(), time.perf_counter()
                after = batching(url)
                busy = forward_seconds(before, after)
                row = {
                    "system": name,
                    "images": set_name,
                    **result.as_dict(),
                    "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
                    "rss_mb": round(monitor.peak_rss / 2**20),
                    "batches_formed": formed(before, after),
                    # Share of the wall time the model spent in forward passes.
                    "model_busy": round(busy / (t1 - t0), 3) if busy is not None else None,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _service_config(args: argparse.Namespace) -> dict:
    config = yaml.safe_load((ROOT / args.config).read_text())
    return fixed_ingress(config, args.ingress_replicas)


def run_service(
    sets: dict,
    args: argparse.Namespace,
    workdir: Path,
    config: dict | None = None,
    name: str = "service",
) -> list[dict]:
    """The service as `make serve` runs it (`python -m deployments.ops.launch`, serve.env
    applied), on a copy of the config bound to a free loopback port."""
    config = _service_config(args) if config is None else config
    env_text = "" if args.ray_defaults else None
    with launched(config, workdir, ROOT, serve_env_text=env_text, extra_env=args.serve_env) as (
        url,
        proc,
    ):
        return drive(name, url, proc.pid, sets, args)


def _engines(spec: str) -> list[tuple[str, str]]:
    """`engine:dtype,...` -> [(engine, dtype), ...]."""
    return [tuple(item.split(":", 1)) for item in spec.split(",") if item]  # type: ignore[misc]


def run_engine_service(
    images: dict, engine: str, dtype: str, args: argparse.Namespace, workdir: Path
) -> list[dict]:
    """The service on another engine or dtype than the default, at concurrency 1 and 32 on
    the primary image set: enough for its latency and its ratio to the bare models."""
    config = _service_config(args)
    config["applications"][0]["args"].update(engine=engine, dtype=dtype)
    sets = {PRIMARY: request_bodies(images[PRIMARY])} if PRIMARY in images else {}
    sub = argparse.Namespace(**{**vars(args), "concurrency": [1, 32]})
    name = f"service {engine} {dtype}"
    try:
        return run_service(sets, sub, workdir, config, name)
    except RuntimeError as exc:  # refused at start-up (the dtype on this CPU): say so
        print(f"{name}: not run ({str(exc)[-300:]})", flush=True)
        return []


def run_baseline(sets: dict, args: argparse.Namespace, workdir: Path) -> list[dict]:
    with baseline_server("bench.baseline", [], workdir / "baseline.log", ROOT) as (url, proc):
        return drive("baseline", url, proc.pid, sets, args)


def record(module: str, args: argparse.Namespace) -> dict:
    """What every benchmark's results start with: the command that produced them, the
    machine, and the arguments."""
    command = " ".join(["python -m bench." + module, *sys.argv[1:]])
    return {"command": command, "machine": machine(), "args": vars(args)}


def machine() -> dict:
    return {
        "date": dt.datetime.now().strftime("%Y-%m-%d"),
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# The instruction sets that decide the engines' speed (bfloat16: AMX, else AVX512-BF16).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_flags() -> list[str]:
    """Which of ISA_FLAGS this CPU has (empty where /proc/cpuinfo cannot be read)."""
    have = set((_cpuinfo("flags") or "").split())
    return [f for f in ISA_FLAGS if f in have]


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or "unknown"


def _cpuinfo(field: str) -> str | None:
    """The first `field` of /proc/cpuinfo (Linux), else None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="serve_config.yaml")
    parser.add_argument("--concurrency", default="1,8,32,64")
    parser.add_argument("--images", default="640x480,1920x1080,1x1")
    add_load_args(parser)
    parser.add_argument("--model-batches", default="1,2,4,8,16")
    parser.add_argument("--model-device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--systems", default="model,service,baseline")
    parser.add_argument(
        "--serve-env",
        default="",
        help="environment for `serve run` on top of serve.env, e.g. KEY=VAL,KEY2=VAL2",
    )
    parser.add_argument("--ingress-replicas", type=int, help="fixed, instead of autoscaling")
    parser.add_argument(
        "--ray-defaults", action="store_true", help="ignore serve.env (Ray Serve's defaults)"
    )
    parser.add_argument("--no-bulk", action="store_true", help="skip the bulk-route rows")
    parser.add_argument(
        "--engines",
        default="torchscript:float32,openvino:float32,openvino:bfloat16",
        help="bare-model rows: engine:dtype,...",
    )
    parser.add_argument(
        "--service-engines",
        default="torchscript:float32,openvino:bfloat16",
        help="service rows besides the default engine (c1 and c32): engine:dtype,...",
    )
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite benchmarks.md")
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.serve_env = env_pairs(args.serve_env)
    systems = set(args.systems.split(","))

    command = "python -m bench.run " + " ".join(sys.argv[1:])
    results: dict = {"command": command.strip(), "machine": machine(), "args": vars(args)}
    images = image_sets(args.images)
    sets = {name: request_bodies(imgs) for name, imgs in images.items()}
    if PRIMARY in images and not args.no_bulk:
        # 64 photos per POST /vectors/batch, compared with 64 concurrent single requests.
        sets[PRIMARY + BULK_SUFFIX] = bulk_bodies(images[PRIMARY])
    if "model" in systems:
        batches = tuple(int(b) for b in args.model_batches.split(","))
        # The service's default engine on this device, and plain eager torchvision.
        results["model"] = bench_model(device=args.model_device, batches=batches, engine="auto")
        results["model_eager"] = bench_model(
            device=args.model_device, batches=batches, engine="eager"
        )
        print(json.dumps(results["model"]), json.dumps(results["model_eager"]), flush=True)
        results["engines"] = []
        for engine, dtype in _engines(args.engines):
            try:
                row = bench_model(
                    device=args.model_device, batches=batches, engine=engine, dtype=dtype
                )
            except Img2VecError as exc:  # e.g. bfloat16 on a CPU without AMX / AVX512-BF16
                row = {"engine": engine, "dtype": dtype, "refused": exc.message}
            results["engines"].append(row)
            print(json.dumps(row), flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="img2vec-bench-") as tmp:
        if "service" in systems:
            rows += run_service(sets, args, Path(tmp))
            for engine, dtype in _engines(args.service_engines):
                rows += run_engine_service(images, engine, dtype, args, Path(tmp))
        if "baseline" in systems:
            rows += run_baseline(sets, args, Path(tmp))
    results["load"] = rows
    write_report(results, ROOT / args.out, None if args.no_docs else ROOT / "docs/benchmarks.md")


if __name__ == "__main__":
    main()
