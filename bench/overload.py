"""A burst far past capacity, as a Weaviate batch import on several nodes sends one: how soon
each refusal comes, and whether every request that waits is one the service serves.

    python -m bench.overload [--requests 400] [--timeout 60]    (make bench-overload)

The service as `make serve` launches it (serve.env, the request path the image serves Weaviate
with, random ResNet50), on loopback; `--requests` requests of one 640x480 JPEG, all at once,
each on its own connection (Weaviate keeps 2 idle connections per host), answered or given up
after `--timeout` s. Prints one JSON line and rewrites the overload section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

from bench.images import image_sets, request_bodies
from bench.processes import env_pairs, launched
from bench.report import add_output_args, publish
from bench.run import record

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- overload:begin -->", "<!-- overload:end -->"
# What the issue asks of a refusal: it comes within this of its request.
PROMPT_S = 3.0


async def burst(url: str, body: bytes, n: int, timeout_s: float) -> list[tuple[object, float]]:
    """(status or exception name, seconds) of `n` requests sent at once."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one() -> tuple[object, float]:
            started = time.perf_counter()
            try:
                async with session.post(url + "/vectors", data=body) as r:
                    await r.read()
                    return r.status, time.perf_counter() - started
            except Exception as exc:  # a timeout or a broken connection: counted as such
                return type(exc).__name__, time.perf_counter() - started

        return await asyncio.gather(*(one() for _ in range(n)))


def summary(results: list[tuple[object, float]]) -> dict:
    served = sorted(t for s, t in results if s == 200)
    refused = sorted(t for s, t in results if s == 503)
    other = [(s, round(t, 2)) for s, t in results if s not in (200, 503)]

    def q(xs: list[float], p: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 2) if xs else None

    return {
        "requests": len(results),
        "served": len(served),
        "refused": len(refused),
        "other": other,
        "refused_after_prompt": sum(t > PROMPT_S for t in refused),
        "refused_p50_s": q(refused, 0.5),
        "refused_max_s": q(refused, 1.0),
        "served_p50_s": q(served, 0.5),
        "served_max_s": q(served, 1.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2, help="bursts, one after the other")
    parser.add_argument(
        "--serve-env", default="", help="the service's environment, e.g. IMG2VEC_ENGINE=eager"
    )
    add_output_args(parser)
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    body = request_bodies(image_sets("640x480")["640x480"][:1])[0]
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="img2vec-bench-overload-") as tmp,
        launched(config, Path(tmp), ROOT, extra_env=env_pairs(args.serve_env)) as (url, _),
    ):
        for i in range(args.rounds):
            results = asyncio.run(burst(url, body, args.requests, args.timeout))
            row = {"round": i + 1, **summary(results)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            time.sleep(5)
    results = {
        **record("overload", args),
        "bursts": rows,
    }
    publish(results, "overload", markdown(results), args, (BEGIN, END))


def markdown(results: dict) -> str:
    m, command = results["machine"], results["command"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores). Command: `{command}`",
        "",
        "| burst | requests | served | refused | refused after 3 s | refusal p50 / max s "
        "| served p50 / max s | other |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results["bursts"]:
        lines.append(
            f"| {r['round']} | {r['requests']} | {r['served']} | {r['refused']} | "
            f"{r['refused_after_prompt']} | {r['refused_p50_s']} / {r['refused_max_s']} | "
            f"{r['served_p50_s']} / {r['served_max_s']} | {len(r['other'])} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
