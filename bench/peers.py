"""The service beside the open servers a user would pick instead, under one harness: the same
machine, the same model files, the same photos, the same load generator, in one run.

- multi2vec-clip's shape: the service's `/vectorize` against infinity-emb's `/embeddings`
  (one process of plain torch and its own batching), both serving the same random CLIP
  ViT-B/32 transformers directory (bench/clip.py's `write_vit_b32`, the sizes of
  openai/clip-vit-base-patch32): images at concurrency 1 and 32, one short text per request
  at 32.
- img2vec-neural's shape: the service's `/vectors` against a LitServe app with its batching
  on (bench/peer_apps/litserve_resnet.py), both serving the same calibrated random ResNet50
  state dict: concurrency 1 and 32.

Each peer is installed by this benchmark into a virtual environment of its own (under
`--venvs`, once per pinned requirement list). For each pair: requests/s and latency, the
relative error of the peer's vectors to the service's (against the distance between two
different photos' vectors, so a faster peer that computes something else shows), and the CPU
each process spent per request during the concurrency-32 points (as bench/where.py counts
it: which process the time goes to).

    python -m bench.peers [--pairs clip,neural] [--duration 15]     (make bench-peers, ~12 min;
                                                                     the first run installs)
    python -m bench.peers --device cuda                             (a GPU node: the service's
                                                                     model replica and both
                                                                     peers on the GPU)

Rewrites the peers section of docs/benchmarks.md and writes bench/results/peers-*.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
import torchvision
import yaml

from bench.clip import short_texts, write_vit_b32
from bench.images import image_sets, request_bodies
from bench.loadgen import add_load_args, run_load
from bench.processes import LOOPBACK, WORKER_NICE, free_port, launched, started, wait_ready
from bench.report import add_output_args, publish
from bench.run import record
from bench.where import cpu_by_process, cpu_used

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- peers:begin -->", "<!-- peers:end -->"
VENVS = Path.home() / ".cache" / "img2vec" / "peers"
TORCH = f"torch=={torch.__version__.split('+')[0]}"
TORCHVISION = f"torchvision=={torchvision.__version__.split('+')[0]}"
# What each peer's venv installs. infinity as its docs install it (its `all` extra pins the
# torch it runs with, 2.8 at 0.0.78: see the results' `peer_torch`); LitServe with the torch
# and torchvision the service runs, so that the comparison is of the servers, not of torch.
REQUIREMENTS = {
    "infinity": ["infinity-emb[all,server]==0.0.78", "aiohttp"],
    "litserve": ["litserve==0.2.19", TORCH, TORCHVISION, "pillow"],
}
# infinity's own batching: up to 32 inputs a forward pass (its documented default).
INFINITY_BATCH = 32
LITSERVE_BATCH = 32


def peer_python(name: str, venvs: Path) -> Path:
    """The peer's venv (made and installed here the first time): its python."""
    reqs = REQUIREMENTS[name]
    digest = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:10]
    venv = venvs / f"{name}-{digest}"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if not stamp.exists():
        print(f"installing {name} into {venv}: {' '.join(reqs)}", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        # Nothing of this checkout on the path: the peer's environment is its own.
        subprocess.run([*pip, *reqs], check=True, env={**os.environ, "PYTHONPATH": ""})
        stamp.write_text("\n".join(reqs) + "\n")
    return python


def version_of(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()


# --- the two shapes: request bodies and how a vector is read back --------------------------


@dataclass(frozen=True)
class Api:
    """One system's route for one shape: its path, its request body for an image or a text,
    and where the vector is in its answer."""

    path: str
    image: Callable[[bytes], bytes]
    text: Callable[[str], bytes] | None
    vector: Callable[[dict], list[float]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


SERVICE_CLIP = Api(
    "/vectorize",
    lambda img: json.dumps({"texts": [], "images": [_b64(img)]}).encode(),
    lambda text: json.dumps({"texts": [text], "images": []}).encode(),
    lambda body: body["imageVectors"][0] if body.get("imageVectors") else body["textVectors"][0],
)
INFINITY = Api(
    "/embeddings",
    lambda img: json.dumps(
        {"model": "clip", "modality": "image", "input": ["data:image/jpeg;base64," + _b64(img)]}
    ).encode(),
    lambda text: json.dumps({"model": "clip", "modality": "text", "input": [text]}).encode(),
    lambda body: body["data"][0]["embedding"],
)
NEURAL = Api(
    "/vectors",
    lambda img: json.dumps({"id": "peer_0", "image": _b64(img)}).encode(),
    None,
    lambda body: body["vector"],
)


def vectors(url: str, api: Api, photos: list[bytes], words: list[str]) -> np.ndarray:
    """Each photo's (and each text's) vector, one request each, in order."""
    bodies = [api.image(p) for p in photos]
    if api.text is not None:
        bodies += [api.text(t) for t in words]
    out = []
    with httpx.Client(timeout=60) as client:
        for body in bodies:
            r = client.post(
                url + api.path, content=body, headers={"Content-Type": "application/json"}
            )
            r.raise_for_status()
            out.append(api.vector(r.json()))
    return np.asarray(out, np.float64)


def agreement(peer: np.ndarray, ours: np.ndarray, n_photos: int) -> dict:
    """The largest relative error ||peer - ours|| / ||ours|| over the inputs, against the
    smallest relative distance between two different photos' vectors (ours)."""
    err = np.linalg.norm(peer - ours, axis=1) / np.linalg.norm(ours, axis=1)
    photos = ours[:n_photos]
    gaps = [
        np.linalg.norm(photos[i] - photos[j]) / np.linalg.norm(photos[i])
        for i in range(n_photos)
        for j in range(n_photos)
        if i != j
    ]
    return {
        "max_rel_error_images": float(err[:n_photos].max()),
        "max_rel_error_texts": float(err[n_photos:].max()) if len(err) > n_photos else None,
        "min_rel_distance_between_photos": float(min(gaps)),
    }


# --- one system under load -----------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    kind: str  # image | text
    concurrency: int


def measure(
    name: str, url: str, api: Api, pid: int, points: list[Point], data: dict, args
) -> list[dict]:
    """Each load point against one running system; the CPU of each of its processes per
    request during the points at concurrency > 1."""
    rows = []
    for point in points:
        bodies = data[point.kind](api)
        before, t0 = cpu_by_process(pid), time.perf_counter()
        result = run_load(
            url + api.path,
            bodies,
            concurrency=point.concurrency,
            duration_s=args.duration,
            warmup_s=args.warmup,
            max_requests=args.max_requests,
            content_type=True,
        )
        after, elapsed = cpu_by_process(pid), time.perf_counter() - t0
        row = {"system": name, "kind": point.kind, **result.as_dict()}
        if point.concurrency > 1:
            row["cpu_ms_per_request"] = cpu_per_request(before, after, result, elapsed, args)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def cpu_per_request(before: dict, after: dict, result, elapsed: float, args) -> dict:
    """CPU ms per request of each process, over the warm-up and the window (both paid for
    by the requests sent: the count is scaled to the whole time), and how many cores were
    busy in all."""
    sent = max(1.0, result.requests * (args.duration + args.warmup) / args.duration)
    per_title: dict[str, float] = {}
    total = 0.0
    for seconds, name, _, _ in cpu_used(before, after):
        total += seconds
        title = name.split(" [")[0]
        per_title[title] = per_title.get(title, 0.0) + 1e3 * seconds / sent
    shown = {k: round(v, 2) for k, v in per_title.items() if v >= 0.05}
    return {**shown, "all": round(1e3 * total / sent, 2), "cores_busy": round(total / elapsed, 2)}


@contextlib.contextmanager
def service(
    config_file: str, weights: Path, workdir: Path, device: str = "cpu"
) -> Iterator[tuple[str, int]]:
    """The service as `make serve` / `make serve-clip` runs it, on these weights; on `cuda`,
    its model replica given a GPU (serve_config.gpu.yaml already asks for one)."""
    config = yaml.safe_load((ROOT / config_file).read_text())
    if device == "cuda":
        for deployment in config["applications"][0]["deployments"]:
            if deployment["name"] == "Embedder":
                deployment.setdefault("ray_actor_options", {})["num_gpus"] = 1
    env = {"IMG2VEC_WEIGHTS": str(weights), "IMG2VEC_DEVICE": device}
    with launched(config, workdir, ROOT, extra_env=env) as (url, proc):
        yield url, proc.pid


@contextlib.contextmanager
def infinity(
    python: Path, model: Path, workdir: Path, device: str = "cpu"
) -> Iterator[tuple[str, int]]:
    port = free_port()
    cmd = [
        str(python.parent / "infinity_emb"),
        "v2",
        "--model-id",
        str(model),
        "--served-model-name",
        "clip",
        "--engine",
        "torch",
        "--device",
        device,
        "--batch-size",
        str(INFINITY_BATCH),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "INFINITY_ANONYMOUS_USAGE_STATS": "0",
        "DO_NOT_TRACK": "1",
        "PYTHONPATH": "",
    }
    log = workdir / "infinity.log"
    with started(cmd, env, log, workdir, nice=WORKER_NICE) as proc:
        url = f"http://{LOOPBACK}:{port}"
        wait_ready(url, proc=proc, path="/health", ready_status=200, log=log)
        yield url, proc.pid


@contextlib.contextmanager
def litserve(
    python: Path, weights: Path, workdir: Path, device: str = "cpu"
) -> Iterator[tuple[str, int]]:
    port = free_port()
    app = ROOT / "bench" / "peer_apps" / "litserve_resnet.py"
    cmd = [
        str(python),
        str(app),
        "--weights",
        str(weights),
        "--port",
        str(port),
        "--max-batch-size",
        str(LITSERVE_BATCH),
        "--accelerator",
        device,
    ]
    env = {**os.environ, "PYTHONPATH": "", "LITSERVE_TELEMETRY": "0"}
    log = workdir / "litserve.log"
    with started(cmd, env, log, workdir, nice=WORKER_NICE) as proc:
        url = f"http://{LOOPBACK}:{port}"
        wait_ready(url, proc=proc, path="/health", ready_status=200, log=log)
        yield url, proc.pid


# --- the pairs -----------------------------------------------------------------------------


def per_input_ms(run: Callable[[], object], n: int, seconds: float = 4.0) -> float:
    """Wall milliseconds per input of `run` (a pass of `n` inputs), after one warm-up call."""
    run()
    started, calls = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        run()
        calls += 1
    return round(1e3 * (time.perf_counter() - started) / calls / n, 2)


def clip_alone(model: Path, photos: list[bytes], words: list[str]) -> dict:
    """The model alone, in this process, on every core, nothing else running: the service's
    towers (the engine it serves with, texts in its padded-length bands) against what
    infinity runs (transformers' CLIPModel eager, a pass padded to its longest text, its
    processor's preprocessing), 32 texts and 16 images a pass."""
    import io

    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    from img2vec.inputs.multimodal import TextTokenizer
    from img2vec.models.clip.registry import read_model_dir
    from img2vec.models.clip.towers import Towers

    spec = read_model_dir(model)
    towers = Towers(spec, "cpu", torch.get_num_threads())
    towers.warm_up(32)
    ids = TextTokenizer(spec).encode(words[:32])
    images = [Image.open(io.BytesIO(photos[i % len(photos)])).convert("RGB") for i in range(16)]
    pixels = np.stack([np.asarray(img.resize(towers.input_size[::-1])) for img in images])
    eager = CLIPModel.from_pretrained(str(model)).eval()
    processor = AutoProcessor.from_pretrained(str(model))
    text_in = processor(text=words[:32], return_tensors="pt", padding=True)
    image_in = processor(images=images, return_tensors="pt")

    def eager_texts() -> None:
        with torch.no_grad():
            eager.get_text_features(**text_in)

    def eager_images() -> None:
        with torch.no_grad():
            eager.get_image_features(**image_in)

    return {
        "threads": torch.get_num_threads(),
        "engine": towers.engine_name,
        "fixed_pass": towers.fixed_pass,
        "service_text_ms": per_input_ms(lambda: towers.embed_texts(ids), 32),
        "eager_text_ms": per_input_ms(eager_texts, 32),
        "service_image_ms": per_input_ms(lambda: towers.embed_images(pixels), 16),
        "eager_image_ms": per_input_ms(eager_images, 16),
    }


def clip_pair(args, photos: list[bytes], workdir: Path) -> dict:
    python = peer_python("infinity", Path(args.venvs))
    model = write_vit_b32(workdir)
    words = short_texts()
    data = {
        "image": lambda api: [api.image(p) for p in photos],
        "text": lambda api: [api.text(t) for t in words],
    }
    points = [Point("image", 1), Point("image", 32), Point("text", 1), Point("text", 32)]
    rows: list[dict] = []
    with service("serve_config.clip.yaml", model, workdir, args.device) as (url, pid):
        rows += measure("service", url, SERVICE_CLIP, pid, points, data, args)
        ours = vectors(url, SERVICE_CLIP, photos, words[:8])
    with infinity(python, model, workdir, args.device) as (url, pid):
        rows += measure("infinity", url, INFINITY, pid, points, data, args)
        theirs = vectors(url, INFINITY, photos, words[:8])
    alone = clip_alone(model, photos, words)
    print(json.dumps({"alone": alone}), flush=True)
    return {
        "peer": "infinity",
        "alone": alone,
        "peer_version": version_of(python, "infinity-emb"),
        "peer_torch": version_of(python, "torch"),
        "model": "random CLIP ViT-B/32 (transformers directory)",
        "load": rows,
        "agreement": agreement(theirs, ours, len(photos)),
    }


def neural_pair(args, photos: list[bytes], workdir: Path) -> dict:
    from tests.support.weights import calibrated_resnet50_state

    python = peer_python("litserve", Path(args.venvs))
    weights = workdir / "resnet50-calibrated.pth"
    torch.save(calibrated_resnet50_state(), weights)
    data = {"image": lambda api: request_bodies(photos) if api is NEURAL else None}
    points = [Point("image", 1), Point("image", 32)]
    rows: list[dict] = []
    config = "serve_config.gpu.yaml" if args.device == "cuda" else "serve_config.yaml"
    with service(config, weights, workdir, args.device) as (url, pid):
        rows += measure("service", url, NEURAL, pid, points, data, args)
        ours = vectors(url, NEURAL, photos, [])
    with litserve(python, weights, workdir, args.device) as (url, pid):
        rows += measure("litserve", url, NEURAL, pid, points, data, args)
        theirs = vectors(url, NEURAL, photos, [])
    return {
        "peer": "litserve",
        "peer_version": version_of(python, "litserve"),
        "peer_torch": version_of(python, "torch"),
        "model": "calibrated random ResNet50 (state dict)",
        "load": rows,
        "agreement": agreement(theirs, ours, len(photos)),
    }


def _row(load: list[dict], system: str, kind: str, c: int) -> dict | None:
    return next(
        (r for r in load if (r["system"], r["kind"], r["concurrency"]) == (system, kind, c)), None
    )


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), torch {m['torch']} "
        "(the service).",
        "",
        f"Command: `{results['command']}`",
        "",
        "| protocol | peer | requests | concurrency | service req/s | peer req/s | ratio "
        "| service p50 ms | peer p50 ms | service CPU ms/req | peer CPU ms/req |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for pair in results["pairs"]:
        peer, load = pair["peer"], pair["load"]
        protocol = "multi2vec-clip" if peer == "infinity" else "img2vec-neural"
        for kind, c in sorted({(r["kind"], r["concurrency"]) for r in load}):
            s, p = _row(load, "service", kind, c), _row(load, peer, kind, c)
            if not (s and p):
                continue
            ratio = f"{s['images_per_s'] / p['images_per_s']:.2f}x" if p["images_per_s"] else "-"
            cpu_s = s.get("cpu_ms_per_request", {}).get("all", "-")
            cpu_p = p.get("cpu_ms_per_request", {}).get("all", "-")
            lines.append(
                f"| {protocol} | {peer} {pair['peer_version']} (torch {pair['peer_torch']}) "
                f"| {kind} | {c} | {s['images_per_s']:.1f} | {p['images_per_s']:.1f} | {ratio} "
                f"| {s['p50_ms']} | {p['p50_ms']} | {cpu_s} | {cpu_p} |"
            )
    lines += [
        "",
        "Vectors (the same weights): the peer's relative error to the service's, "
        "against the smallest relative distance between two photos' vectors:",
        "",
    ]
    for pair in results["pairs"]:
        a = pair["agreement"]
        text = f", texts {a['max_rel_error_texts']:.1e}" if a["max_rel_error_texts"] else ""
        lines.append(
            f"- {pair['peer']}: images {a['max_rel_error_images']:.1e}{text}; "
            f"between photos {a['min_rel_distance_between_photos']:.2f}"
        )
    for pair in results["pairs"]:
        a = pair.get("alone")
        if a:
            lines += [
                "",
                f"The model alone, in one process on {a['threads']} threads, nothing else "
                f"running (wall ms per input): texts {a['service_text_ms']} on the service's "
                f"towers ({a['engine']}, padded-length bands, "
                f"fixed pass {_per_tower(a['fixed_pass'])}) "
                f"against {a['eager_text_ms']} eager as infinity runs them (padded to the "
                f"longest): the service's engine at "
                f"{a['eager_text_ms'] / a['service_text_ms']:.2f}x the peer's speed; images "
                f"{a['service_image_ms']} against {a['eager_image_ms']}, "
                f"{a['eager_image_ms'] / a['service_image_ms']:.2f}x (32 texts, 16 images a pass).",
            ]
    lines += ["", "Where the CPU goes at concurrency 32 (ms per request, each process):", ""]
    bounds: list[str] = []
    for pair in results["pairs"]:
        for r in pair["load"]:
            if "cpu_ms_per_request" in r:
                cpu = {k: v for k, v in r["cpu_ms_per_request"].items() if k != "cores_busy"}
                top = sorted(cpu.items(), key=lambda kv: -kv[1])
                shown = ", ".join(f"{k} {v}" for k, v in top[:6])
                lines.append(f"- {r['system']} {r['kind']}: {shown}")
        bounds += _bounds(pair)
    if bounds:
        lines += [
            "",
            "Where both keep the cores busy at concurrency 32, throughput follows CPU per "
            "request. The peer's CPU per request over the service's (all its processes), and "
            "over its model replica's alone: the most the service could be ahead on this CPU "
            "were its serving path (ingress, Ray, launcher) free:",
            "",
            *bounds,
        ]
    return "\n".join(lines)


def _per_tower(value: object) -> str:
    """`fixed_pass` as recorded: one value, or one per tower."""
    if isinstance(value, dict):
        return ", ".join(f"{tower} {size}" for tower, size in value.items())
    return str(value)


def _bounds(pair: dict) -> list[str]:
    peer, out = pair["peer"], []
    for kind, c in sorted({(r["kind"], r["concurrency"]) for r in pair["load"]}):
        s, p = _row(pair["load"], "service", kind, c), _row(pair["load"], peer, kind, c)
        cpu_s = (s or {}).get("cpu_ms_per_request", {})
        cpu_p = (p or {}).get("cpu_ms_per_request", {})
        model = next((v for k, v in cpu_s.items() if k.endswith(":Embedder")), None)
        if not (cpu_s.get("all") and cpu_p.get("all") and model):
            continue
        out.append(
            f"- {peer} {kind}: cores busy {cpu_s.get('cores_busy')} (service), "
            f"{cpu_p.get('cores_busy')} ({peer}); {peer}'s CPU per request over the service's "
            f"{cpu_p['all'] / cpu_s['all']:.2f}x, over its model replica's "
            f"{cpu_p['all'] / model:.2f}x"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="clip,neural")
    parser.add_argument("--venvs", default=str(VENVS), help="where the peers' venvs are made")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the service and the peers run their models (cuda: a GPU node)",
    )
    add_load_args(parser)
    add_output_args(parser)
    args = parser.parse_args()
    results: dict = {**record("peers", args), "pairs": []}
    photos = image_sets("640x480")["640x480"]
    for pair in args.pairs.split(","):
        with tempfile.TemporaryDirectory(prefix=f"img2vec-bench-peers-{pair}-") as tmp:
            run = clip_pair if pair == "clip" else neural_pair
            results["pairs"].append(run(args, photos, Path(tmp)))
    publish(results, "peers", markdown(results), args, (BEGIN, END))


if __name__ == "__main__":
    main()
