"""Where the CPU goes: one load point against the service (as `make serve` runs it), with the
CPU time of each of its processes per request (proxy, each ingress replica, the Embedder...).
A process near 100 % of one core is the service's serial limit.

Run: `python -m bench.where --config serve_config.gpu.yaml --concurrency 256`"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from bench.images import image_sets, request_bodies
from bench.loadgen import run_load
from bench.processes import env_pairs, fixed_ingress, launched

ROOT = Path(__file__).resolve().parent.parent


def cpu_by_process(pid: int) -> dict[str, float]:
    """CPU seconds of each process in the tree, keyed by its title and pid."""
    out: dict[str, float] = collections.Counter()
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            t = p.cpu_times()
            title = " ".join(p.cmdline())[:48] or p.name()
            out[f"{title} [{p.pid}]"] += t.user + t.system
        except psutil.Error:
            pass
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="serve_config.yaml")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--images", default="640x480")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--ingress-replicas", type=int, help="fixed, instead of autoscaling")
    parser.add_argument("--model", help="another backbone than the config's")
    parser.add_argument("--serve-env", default="", help="KEY=VAL,... on top of serve.env")
    args = parser.parse_args()
    config = fixed_ingress(yaml.safe_load((ROOT / args.config).read_text()), args.ingress_replicas)
    if args.model:
        config["applications"][0]["args"]["model"] = args.model
    extra = env_pairs(args.serve_env)
    bodies = request_bodies(next(iter(image_sets(args.images).values())))
    with (
        tempfile.TemporaryDirectory() as tmp,
        launched(config, Path(tmp), ROOT, extra_env=extra) as (url, proc),
    ):
        run_load(
            url + "/vectors",
            bodies,
            concurrency=args.concurrency,
            duration_s=3,
            warmup_s=1,
            max_requests=10**7,
        )
        before, t0 = cpu_by_process(proc.pid), time.perf_counter()
        result = run_load(
            url + "/vectors",
            bodies,
            concurrency=args.concurrency,
            duration_s=args.duration,
            warmup_s=0,
            max_requests=10**7,
        )
        after, elapsed = cpu_by_process(proc.pid), time.perf_counter() - t0
    print(json.dumps(result.as_dict()))
    used = {k: v - before.get(k, 0.0) for k, v in after.items()}
    for name, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        if seconds / elapsed >= 0.02:
            pct, per = 100 * seconds / elapsed, 1e3 * seconds / max(result.requests, 1)
            print(f"{pct:6.1f}% of a core {per:7.2f} ms/request  {name}")


if __name__ == "__main__":
    main()
