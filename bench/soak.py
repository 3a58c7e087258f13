"""`make soak`: steady load for a long while (10 minutes by default), recording each minute the
p50/p99 latency and throughput, and the resident memory of every process of the service.

Targets: after the first minutes (warm-up), RSS grows < 5% per process and p99 drifts < 20%.
Writes bench/results/soak-<date>.json and .png, and the table in docs/benchmarks.md between
its soak markers. Loopback only; the service runs as `make serve` runs it, with random weights.

Run: `python -m bench.soak --minutes 10 --concurrency 8`; `--concurrency 0 --no-docs`: the
same service idle (soak-<date>-idle.json), to tell what grows with requests from what grows
with time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from bench.images import image_sets, request_bodies
from bench.loadgen import run_load
from bench.processes import launched
from bench.report import preamble, replace_section
from bench.run import machine

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
WARMUP_MINUTES = 2


def process_rss(root_pid: int) -> dict[str, float]:
    """MB resident per process of the service, named by role (several of a role summed)."""
    out: dict[str, float] = {}
    try:
        procs = [psutil.Process(root_pid), *psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for proc in procs:
        try:
            role = _role(proc.cmdline())
            out[role] = out.get(role, 0.0) + proc.memory_info().rss / 2**20
        except psutil.Error:
            continue
    return {k: round(v, 1) for k, v in sorted(out.items())}


def _role(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for needle, role in (
        ("ServeReplica", None),
        ("ServeController", "controller"),
        ("ProxyActor", "proxy"),
        ("raylet", "raylet"),
        ("gcs_server", "gcs"),
        ("deployments.ops.launch", "launcher"),
        ("dashboard", "dashboard"),
        ("log_monitor", "log_monitor"),
    ):
        if needle in text:
            if role is None:  # ray::ServeReplica:<app>:<deployment>
                return "replica " + text.split("ServeReplica:", 1)[1].split()[0].split(":")[-1]
            return role
    return "other ray"


def soak(args: argparse.Namespace, workdir: Path) -> dict:
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    bodies = request_bodies(image_sets(args.images)[args.images])
    minutes = []
    with launched(config, workdir, ROOT) as (url, proc):
        for minute in range(1, args.minutes + 1):
            if args.concurrency == 0:  # idle: what grows without requests
                time.sleep(60)
                load = {k: 0 for k in ("requests", "errors", "images_per_s", "p50_ms", "p99_ms")}
            else:
                load = run_load(
                    url + "/vectors",
                    bodies,
                    concurrency=args.concurrency,
                    duration_s=60,
                    warmup_s=0,
                    max_requests=10**9,
                ).as_dict()
            row = {"minute": minute, **load, "rss_mb": process_rss(proc.pid)}
            minutes.append(row)
            print(json.dumps(row), flush=True)
    return {"minutes": minutes}


def verdict(minutes: list[dict]) -> dict:
    base, last = minutes[min(WARMUP_MINUTES, len(minutes) - 1)], minutes[-1]
    growth = {
        role: round(100 * (last["rss_mb"].get(role, mb) - mb) / mb, 1)
        for role, mb in base["rss_mb"].items()
        if mb > 0
    }
    p99_drift = round(100 * (last["p99_ms"] - base["p99_ms"]) / (base["p99_ms"] or 1), 1)
    return {
        "from_minute": base["minute"],
        "rss_growth_percent": growth,
        "rss_growth_max_percent": max(growth.values()),
        "p99_drift_percent": p99_drift,
        "errors": sum(m["errors"] for m in minutes),
        "rss_ok": max(growth.values()) < 5,
        "p99_ok": abs(p99_drift) < 20,
    }


def markdown(results: dict) -> str:
    v = results["verdict"]
    roles = sorted({r for row in results["minutes"] for r in row["rss_mb"]})
    lines = [
        *preamble(results),
        "| minute | img/s | p50 ms | p99 ms | errors | "
        + " | ".join(f"{r} MB" for r in roles)
        + " |",
        "| ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in roles) + " |",
    ]
    for row in results["minutes"]:
        rss = " | ".join(str(row["rss_mb"].get(r, "-")) for r in roles)
        lines.append(
            f"| {row['minute']} | {row['images_per_s']} | {row['p50_ms']} | {row['p99_ms']} | "
            f"{row['errors']} | {rss} |"
        )
    growth = ", ".join(f"{k} {val:+.1f}%" for k, val in v["rss_growth_percent"].items())
    rss_ok = "met" if v["rss_ok"] else "NOT met"
    p99_ok = "met" if v["p99_ok"] else "NOT met"
    lines += [
        "",
        f"From minute {v['from_minute']} to the last: RSS {growth} (largest "
        f"{v['rss_growth_max_percent']:+.1f}%, target < 5%: {rss_ok}); "
        f"p99 {v['p99_drift_percent']:+.1f}% (target < 20%: {p99_ok}); {v['errors']} errors.",
    ]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = results["minutes"]
    xs = [m["minute"] for m in minutes]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for role in sorted({r for m in minutes for r in m["rss_mb"]}):
        ax1.plot(xs, [m["rss_mb"].get(role) for m in minutes], marker="o", label=role)
    ax1.set_ylabel("RSS MB")
    ax1.legend(fontsize=7, ncol=2)
    ax2.plot(xs, [m["p50_ms"] for m in minutes], marker="o", label="p50")
    ax2.plot(xs, [m["p99_ms"] for m in minutes], marker="o", label="p99")
    ax2.set_ylabel("latency ms")
    ax2.set_xlabel("minute")
    ax2.legend()
    fig.suptitle(f"img2vec soak: {results['command']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument(
        "--concurrency", type=int, default=8, help="0: no load (what grows while idle)"
    )
    parser.add_argument("--images", default="640x480")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="img2vec-soak-") as tmp:
        results = {
            "command": "python -m bench.soak " + " ".join(sys.argv[1:]),
            "machine": machine(),
        }
        results.update(soak(args, Path(tmp)))
    results["verdict"] = verdict(results["minutes"])
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = f"soak-{dt.date.today().isoformat()}" + ("-idle" if args.concurrency == 0 else "")
    (out / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / f"{stamp}.png")
    text = markdown(results)
    print(text)
    docs = ROOT / "docs" / "benchmarks.md"
    if not args.no_docs:
        replace_section(docs, BEGIN, END, text)


if __name__ == "__main__":
    main()
