"""What "the same input, the same bits" costs: each protocol's service with `batch_invariance`
on (the default) and off, side by side in one run, at concurrency 1 and 32.

- img2vec-neural (serve_config.yaml, the random ResNet50, its default engine): 640x480 JPEGs
  to /vectors. On CPU its engines are invariant as they are (/meta `fixed_pass` null), so
  the two differ only by the warm-up check.
- multi2vec-clip (serve_config.clip.yaml, a random ViT-B/32): Weaviate-like objects (one
  image, one short text) and nearText texts of 4 to 8 words to /vectorize; on the default
  engine (OpenVINO: texts run per token length) and eager (where the warm-up check finds the
  towers batch-dependent and they run fixed passes of one input).

- each again with ONEDNN_MAX_CPU_ISA=AVX2 (`kernels avx2`): OpenVINO's kernels as an AVX2-only
  CPU (an AMD EPYC) runs them, where ViT-B/32's image tower is batch-dependent and runs one
  image per call, several at once (OpenVINO streams).

    python -m bench.invariance [--duration 10] [--cases ...]    (make bench-invariance)

Rewrites the invariance section of docs/benchmarks.md, writes bench/results/invariance-*.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import httpx
import yaml

from bench.clip import bodies, write_vit_b32
from bench.images import image_sets, request_bodies
from bench.loadgen import add_load_args, run_load
from bench.processes import launched
from bench.report import add_output_args, preamble, publish
from bench.run import record

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- invariance:begin -->", "<!-- invariance:end -->"
CONCURRENCY = (1, 32)


def measure(
    protocol: str,
    engine: str,
    invariance: bool,
    sets: dict,
    env: dict,
    args: argparse.Namespace,
    isa: str = "native",
) -> list[dict]:
    """One service, launched as `make serve` / `make serve-clip` launch it, driven with each
    request set at each concurrency."""
    config_name = "serve_config.yaml" if protocol == "img2vec-neural" else "serve_config.clip.yaml"
    config = yaml.safe_load((ROOT / config_name).read_text())
    env = {**env, "IMG2VEC_ENGINE": engine, "IMG2VEC_BATCH_INVARIANCE": str(invariance).lower()}
    if isa == "avx2":  # OpenVINO's oneDNN as on an AVX2-only CPU (an AMD EPYC's kernels)
        env["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    path = "/vectors" if protocol == "img2vec-neural" else "/vectorize"
    rows = []
    with (
        tempfile.TemporaryDirectory(prefix="img2vec-bench-inv-") as tmp,
        launched(config, Path(tmp), ROOT, extra_env=env) as (url, _),
    ):
        meta = httpx.get(url + "/meta", timeout=30).json()
        for kind, payloads in sets.items():
            for c in CONCURRENCY:
                result = run_load(
                    url + path,
                    payloads,
                    concurrency=c,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    max_requests=args.max_requests,
                    content_type=True,
                )
                row = {
                    "protocol": protocol,
                    "engine": engine,
                    "isa": isa,
                    "batch_invariance": invariance,
                    "kind": kind,
                    "batch_invariant": _find(meta, "batch_invariant"),
                    "fixed_pass": _find(meta, "fixed_pass"),
                    "streams": _find(meta, "streams"),
                    **result.as_dict(),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def _find(meta: object, key: str) -> object:
    """A key anywhere in /meta's answer (the two protocols nest their model's info apart)."""
    if isinstance(meta, dict):
        if key in meta:
            return meta[key]
        for value in meta.values():
            if (found := _find(value, key)) is not None:
                return found
    return None


def markdown(results: dict) -> str:
    rows = {
        (
            r["protocol"],
            r["engine"],
            r.get("isa", "native"),
            r["kind"],
            r["concurrency"],
            r["batch_invariance"],
        ): r
        for r in results["load"]
    }
    lines = [
        *preamble(results),
        "| protocol | engine | kernels | requests | concurrency | on: req/s | off: req/s "
        "| ratio on/off | on: p50 ms | off: p50 ms | fixed pass (on) | invariant on / off |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for protocol, engine, isa, kind, c, inv in rows:
        if not inv or (protocol, engine, isa, kind, c, False) not in rows:
            continue
        on = rows[(protocol, engine, isa, kind, c, True)]
        off = rows[(protocol, engine, isa, kind, c, False)]
        ratio = f"{on['images_per_s'] / off['images_per_s']:.2f}" if off["images_per_s"] else "-"
        lines.append(
            f"| {protocol} | {engine} | {isa} | {kind} | {c} | {on['images_per_s']} | "
            f"{off['images_per_s']} | {ratio} | {on['p50_ms']} | {off['p50_ms']} | "
            f"{_fixed(on)} | {on['batch_invariant']} / {off['batch_invariant']} |"
        )
    lines += [
        "",
        "on: `batch_invariance: true` (the default: every vector the same bits as its input "
        "alone); off: `IMG2VEC_BATCH_INVARIANCE=false`. req/s counts requests answered 200. "
        "`invariant`: what each replica's warm-up check found (/meta `batch_invariant`). "
        "`kernels`: native, or `avx2` (the service started with ONEDNN_MAX_CPU_ISA=AVX2: "
        "OpenVINO's kernels as on an AVX2-only CPU). `fixed pass`: per tower, the inputs of "
        "each engine call where the check found the tower batch-dependent, and how many such "
        "calls run at once (OpenVINO streams).",
    ]
    return "\n".join(lines)


def _fixed(row: dict) -> str:
    """/meta's fixed_pass (a number, or one per tower) and streams, as a table cell."""
    fixed, streams = row["fixed_pass"], row.get("streams")
    if not isinstance(fixed, dict):
        return str(fixed or "-")
    cells = [
        f"{tower} {size}" + (f" x{streams[tower]} at once" if (streams or {}).get(tower) else "")
        for tower, size in fixed.items()
        if size
    ]
    return ", ".join(cells) or "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_load_args(parser, duration=10.0, warmup=3.0, cap=2000)
    parser.add_argument(
        "--cases",
        default="img2vec-neural:auto,multi2vec-clip:auto,img2vec-neural:auto:avx2,"
        "multi2vec-clip:auto:avx2,multi2vec-clip:eager",
        help="protocol:engine[:avx2],...",
    )
    add_output_args(parser)
    args = parser.parse_args()
    results: dict = {
        **record("invariance", args),
        "load": [],
    }
    photos = image_sets("640x480")["640x480"]
    with tempfile.TemporaryDirectory(prefix="img2vec-bench-inv-model-") as tmp:
        clip = write_vit_b32(Path(tmp))
        for case in args.cases.split(","):
            protocol, engine, *rest = case.split(":")
            isa = rest[0] if rest else "native"
            if protocol == "img2vec-neural":
                sets, env = {"640x480": request_bodies(photos)}, {"IMG2VEC_WEIGHTS": "random"}
            else:
                sets = {"object": bodies("object", photos), "nearText": bodies("nearText", photos)}
                env = {"IMG2VEC_WEIGHTS": str(clip)}
            for invariance in (True, False):
                results["load"] += measure(protocol, engine, invariance, sets, env, args, isa)
    publish(results, "invariance", markdown(results), args, (BEGIN, END))


if __name__ == "__main__":
    main()
