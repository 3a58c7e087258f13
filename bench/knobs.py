"""The Ray Serve knobs, measured one at a time against serve_config.yaml as it is: each
variant changes one setting, runs `serve run`, and is driven at the same concurrencies.

Run: `python -m bench.knobs` (about 1.5 minutes per variant on 2 cores). The reference runs
first and last. Prints JSON lines and a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.images import image_sets, request_bodies
from bench.run import ROOT, run_service

Variant = Callable[[dict], None]


def _deployment(config: dict, name: str) -> dict:
    (app,) = config["applications"]
    return next(d for d in app["deployments"] if d["name"] == name)


def _set(path: tuple[str, ...], value: object) -> Variant:
    def apply(config: dict) -> None:
        target = _deployment(config, path[0]) if path[0] in ("Ingress", "Embedder") else config
        for key in path[1:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    return apply


def _args(key: str, value: object) -> Variant:
    def apply(config: dict) -> None:
        config["applications"][0].setdefault("args", {})[key] = value

    return apply


VARIANTS: dict[str, tuple[Variant | None, dict[str, str]]] = {
    "as configured": (None, {}),
    "max_batch_size 4": (_set(("Embedder", "user_config", "max_batch_size"), 4), {}),
    "max_batch_size 16": (_set(("Embedder", "user_config", "max_batch_size"), 16), {}),
    "batch_wait_timeout_s 0.05": (
        _set(("Embedder", "user_config", "batch_wait_timeout_s"), 0.05),
        {},
    ),
    "decode_workers 1": (_args("decode_workers", 1), {}),
    "Ingress replicas 2": (
        _set(("Ingress", "autoscaling_config", "min_replicas"), 2),
        {},
    ),
    "Embedder max_ongoing_requests 16": (_set(("Embedder", "max_ongoing_requests"), 16), {}),
    "Serve defaults (no serve.env)": (None, {"__ray_defaults__": "1"}),
    # The reference again at the end: the sweep takes ~12 minutes, and a machine that drifted
    # meanwhile (or a first run that paid for cold caches) shows up as two different rows.
    "as configured (again)": (None, {}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--concurrency", default="1,32")
    parser.add_argument("--images", default="640x480")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=4.0)
    args = parser.parse_args()
    base = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    sets = {name: request_bodies(imgs) for name, imgs in image_sets(args.images).items()}
    results = []
    for name in args.variants.split(","):
        change, env = VARIANTS[name]
        config = copy.deepcopy(base)
        if change:
            change(config)
        if "Ingress replicas" in name:
            auto = _deployment(config, "Ingress")["autoscaling_config"]
            auto["max_replicas"] = max(auto["max_replicas"], auto["min_replicas"])
        run_args = argparse.Namespace(
            concurrency=[int(c) for c in args.concurrency.split(",")],
            duration=args.duration,
            warmup=args.warmup,
            max_requests=3000,
            ray_defaults="__ray_defaults__" in env,
            serve_env={},
        )
        with tempfile.TemporaryDirectory(prefix="img2vec-knobs-") as tmp:
            rows = run_service(sets, run_args, Path(tmp), config)
        for row in rows:
            row["variant"] = name
            results.append(row)
            print(json.dumps(row), flush=True)
    print("\n| variant | concurrency | img/s | p50 ms | p99 ms | mean batch |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for r in results:
        formed = r["batches_formed"]
        n = sum(formed.values())
        mean = f"{sum(int(k) * v for k, v in formed.items()) / n:.1f}" if n else "-"
        print(
            f"| {r['variant']} | {r['concurrency']} | {r['images_per_s']} | {r['p50_ms']} "
            f"| {r['p99_ms']} | {mean} |"
        )


if __name__ == "__main__":
    main()
