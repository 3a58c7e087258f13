"""multi2vec-clip side by side: the one-request-at-a-time baseline (bench/clip_baseline.py,
the container's shape for each family) against our service (`serve_config.clip.yaml` through
the launcher), with Weaviate-like requests: one object's image and short text (what Weaviate
sends per object with an image and a text field), and texts only (what `nearText` sends). Both
run the same random model, float32, on this CPU, one per family at a real checkpoint's sizes:
OpenAI's ViT-B/32 CLIP (its real tokenizer), SigLIP 2 base/16 at 224, MetaCLIP 2 worldwide
B/32 and OpenCLIP's ViT-B-32 (small word-level tokenizers for the first two: the towers'
compute is the real one's, the vocabulary is not).

    python -m bench.clip [--families clip,siglip2,metaclip2,openclip] [--duration 15]
                                                                  (make bench-clip, ~25 min)

Rewrites the clip section of docs/benchmarks.md and writes bench/results/clip-*.json.
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
from itertools import product
from pathlib import Path

import httpx
import torch
import yaml

from bench.images import image_sets
from bench.loadgen import add_load_args, run_load
from bench.processes import baseline_server, launched
from bench.report import add_output_args, preamble, publish
from bench.run import record

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- clip:begin -->", "<!-- clip:end -->"
# The families benchmarked, and how the table names each one's model.
FAMILIES = {
    "clip": "OpenAI CLIP ViT-B/32",
    "siglip2": "SigLIP 2 base/16-224",
    "metaclip2": "MetaCLIP 2 B/32",
    "openclip": "OpenCLIP ViT-B-32",
}
WORDS = "a photo of a red cat dog rocket coffee cup on the table astronaut in space"


def write_vit_b32(root: Path) -> Path:
    """A random CLIP of ViT-B/32's sizes (the container's openai/clip-vit-base-patch32),
    with OpenAI's tokenizer (tests/support/clip_models.py derives it from open_clip's
    vocabulary)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    from img2vec.inputs.openclip import openai_bpe

    vocab, merges = openai_bpe()
    (root / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    torch.manual_seed(0)
    config = CLIPConfig(text_config={"vocab_size": len(vocab)}, projection_dim=512)
    out = root / "clip-vit-b32"
    CLIPModel(config).eval().save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(out)
    return out


BASE = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12}  # fmt: skip
TEXT_512 = {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
            "num_attention_heads": 8}  # fmt: skip


def write_model(family: str, root: Path) -> Path:
    """A random model of one family at a real checkpoint's sizes."""
    from tests.support import clip_models

    if family == "clip":
        return write_vit_b32(root)
    if family == "siglip2":  # google/siglip2-base-patch16-224
        return clip_models.write_siglip2(root, vision=BASE, text=BASE, size=224)
    if family == "metaclip2":  # facebook/metaclip-2-worldwide-b32
        return clip_models.write_metaclip2(root, vision=BASE, text=TEXT_512, patch=32)
    if family == "openclip":  # open_clip:ViT-B-32:laion2b_s34b_b79k
        import open_clip

        return clip_models.write_openclip(root, model_cfg=open_clip.get_model_config("ViT-B-32"))
    raise ValueError(f"unknown family {family!r}")


# The container's path for each family (bench/clip_baseline.py --family).
BASELINE_OF = {"clip": "clip", "siglip2": "transformers", "metaclip2": "transformers",
               "openclip": "openclip"}  # fmt: skip


def short_texts(n: int = 64) -> list[str]:
    """Texts of 4 to 8 words (what nearText and an object's text field send)."""
    words = WORDS.split()
    return [" ".join(words[(i + k) % len(words)] for k in range(4 + i % 5)) for i in range(n)]


def bodies(kind: str, images: list[bytes], n: int = 64) -> list[bytes]:
    """`object`: one image and one short text per request; `nearText`: one short text."""
    out = []
    for i, text in enumerate(short_texts(n)):
        body: dict = {"texts": [text], "images": []}
        if kind == "object":
            body["images"] = [base64.b64encode(images[i % len(images)]).decode()]
        out.append(json.dumps(body).encode())
    return out


def drive(name: str, url: str, sets: dict, args: argparse.Namespace, family: str) -> list[dict]:
    rows = []
    for kind, payloads in sets.items():
        for c in args.concurrency:
            result = run_load(
                url + "/vectorize",
                payloads,
                concurrency=c,
                duration_s=args.duration,
                warmup_s=args.warmup,
                max_requests=args.max_requests,
                content_type=True,  # Weaviate's CLIP client sends application/json
            )
            row = {"family": family, "system": name, "kind": kind, **result.as_dict()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def service(
    model: Path,
    sets: dict,
    args: argparse.Namespace,
    workdir: Path,
    family: str,
    engine: str = "auto",
) -> list[dict]:
    """The service as shipped (engine auto: both towers on OpenVINO on CPU), or with the
    towers eager like the baseline's (`service-eager`: what batching alone gives)."""
    config = yaml.safe_load((ROOT / args.config).read_text())
    env = {"IMG2VEC_WEIGHTS": str(model), "IMG2VEC_DEVICE": args.device, "IMG2VEC_ENGINE": engine}
    name = "service" if engine == "auto" else f"service-{engine}"
    with launched(config, workdir, ROOT, extra_env=env) as (url, _):
        rows = drive(name, url, sets, args, family)
        # The passes the model replica ran: how the requests' inputs were batched.
        batching = httpx.get(url + "/meta", timeout=30).json()["batching"]
        print(json.dumps({"service_batching": batching}), flush=True)
        rows[-1]["batching"] = batching
        return rows


def baseline(
    model: Path, sets: dict, args: argparse.Namespace, workdir: Path, family: str
) -> list[dict]:
    flags = ["--weights", str(model), "--family", BASELINE_OF[family]]
    log = workdir / f"clip-baseline-{family}.log"
    with baseline_server("bench.clip_baseline", flags, log, ROOT) as (url, _):
        return drive("baseline", url, sets, args, family)


def markdown(results: dict) -> str:
    rows = {
        (r.get("family", "clip"), r["system"], r["kind"], r["concurrency"]): r
        for r in results["load"]
    }
    lines = [
        *preamble(results),
        "| model | requests | concurrency | baseline req/s | service req/s | ratio | service "
        "eager req/s | ratio | baseline p50 ms | service p50 ms | errors (baseline/service) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    concurrencies = results["args"]["concurrency"]
    for family, kind, c in product(FAMILIES, ("object", "nearText"), concurrencies):
        b, s = rows.get((family, "baseline", kind, c)), rows.get((family, "service", kind, c))
        if b and s:
            e = rows.get((family, "service-eager", kind, c))
            rb, rs = b["images_per_s"], s["images_per_s"]
            re_ = e["images_per_s"] if e else None
            ratio = f"{rs / rb:.2f}x" if rb else "-"
            eager = f"{re_} | {re_ / rb:.2f}x" if re_ is not None and rb else "- | -"
            lines.append(
                f"| {FAMILIES[family]} | {kind} | {c} | {rb} | {rs} | {ratio} | {eager} "
                f"| {b['p50_ms']} | {s['p50_ms']} | {b['errors']}/{s['errors']} |"
            )
    lines += [
        "",
        "`object`: one 640x480 JPEG and one short text per request (an object with an image "
        "and a text field); `nearText`: one short text. req/s counts requests answered 200. "
        "The baseline is the container's path for the family (bench/clip_baseline.py): "
        "OpenAI's CLIPModel without no_grad, AutoModel's features for SigLIP 2 and MetaCLIP 2, "
        "open_clip with each image alone for OpenCLIP. "
        "`service eager`: the service with both towers eager, as the baseline runs them: what "
        "batching across requests gives on its own; `service`: as shipped (engine auto, both "
        "towers on OpenVINO, the same vectors).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,32")
    add_load_args(parser)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument(
        "--systems",
        default="baseline,service,service-eager",
        help="service-eager runs for the first family only (what batching alone gives)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both systems")
    parser.add_argument("--config", default="serve_config.clip.yaml")
    add_output_args(parser)
    args = parser.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    results: dict = {
        **record("clip", args),
        "load": [],
    }
    photos = image_sets("640x480")["640x480"]
    sets = {"object": bodies("object", photos), "nearText": bodies("nearText", photos)}
    families = args.families.split(",")
    for family in families:
        with tempfile.TemporaryDirectory(prefix=f"img2vec-bench-clip-{family}-") as tmp:
            model = write_model(family, Path(tmp))
            for system in args.systems.split(","):
                if system == "baseline":
                    results["load"] += baseline(model, sets, args, Path(tmp), family)
                elif system == "service" or family == families[0]:
                    engine = system.removeprefix("service").removeprefix("-") or "auto"
                    results["load"] += service(model, sets, args, Path(tmp), family, engine)
    publish(results, "clip", markdown(results), args, (BEGIN, END))


if __name__ == "__main__":
    main()
