"""Benchmark results -> JSON, a PNG plot, and the table in docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
PRIMARY = "640x480"
# The targets of the performance issue, as ratios measured in the same run.
TARGET_VS_MODEL = 0.85
TARGET_VS_BASELINE = 1.3
TARGET_C1_OVERHEAD_MS = 15.0
# The service on the default CPU engine against bare eager PyTorch (issue: the same vectors,
# faster); the bfloat16 fast mode on a CPU with AMX: 3.
TARGET_VS_EAGER = 1.25


def _row(rows: list[dict], system: str, images: str, concurrency: int) -> dict | None:
    for r in rows:
        if (r["system"], r["images"], r["concurrency"]) == (system, images, concurrency):
            return r
    return None


def ratios(results: dict) -> dict[str, dict]:
    """The targets, per image set: service vs bare model, vs baseline, and lone-request latency."""
    rows = results.get("load", [])
    model = results.get("model")
    eager = results.get("model_eager")
    out: dict[str, dict] = {}
    for images in sorted({r["images"] for r in rows}):
        svc32 = _row(rows, "service", images, 32)
        base32 = _row(rows, "baseline", images, 32)
        svc1 = _row(rows, "service", images, 1)
        entry: dict[str, float | None] = {}
        if svc32 and model:
            entry["service_c32_vs_model_best"] = round(
                svc32["images_per_s"] / model["best"]["images_per_s"], 3
            )
        if svc32 and eager:
            entry["service_c32_vs_eager_model_best"] = round(
                svc32["images_per_s"] / eager["best"]["images_per_s"], 3
            )
        if svc32 and base32 and base32["images_per_s"]:
            entry["service_c32_vs_baseline_c32"] = round(
                svc32["images_per_s"] / base32["images_per_s"], 3
            )
        if svc1 and model:
            b1 = next((r for r in model["rows"] if r["batch"] == 1), None)
            if b1:
                entry["service_c1_p50_minus_model_b1_ms"] = round(
                    svc1["p50_ms"] - b1["ms_per_batch"], 1
                )
        if eager:
            for system in sorted({r["system"] for r in rows if r["system"].startswith("service ")}):
                other = _row(rows, system, images, 32)
                if other:
                    entry[f"{system} c32 / eager bare best"] = round(
                        other["images_per_s"] / eager["best"]["images_per_s"], 3
                    )
        out[images] = entry
    bulk = [r for r in rows if r["images"].endswith("-bulk64")]
    single64 = _row(rows, "service", PRIMARY, 64)
    if bulk and single64 and single64["images_per_s"]:
        best = max(bulk, key=lambda r: r["images_per_s"])
        out[PRIMARY]["bulk64_vs_64_singles"] = round(
            best["images_per_s"] / single64["images_per_s"], 3
        )
    return out


def _mean_batch(formed: dict[str, int]) -> str:
    if not formed:
        return "-"
    n = sum(formed.values())
    mean = sum(int(k) * v for k, v in formed.items()) / n
    return f"{mean:.1f} (max {max(int(k) for k in formed)})"


def preamble(results: dict) -> list[str]:
    """What a benchmark's section opens with: when, on what, and the command."""
    m = results["machine"]
    return [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores), torch {m['torch']}.",
        "",
        f"Command: `{results['command']}`",
        "",
    ]


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_gb']} GiB"
        + (f", {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f"), torch {m['torch']}, Python {m['python']}."
        + (f" CPU flags: {', '.join(m['cpu_flags'])}." if m.get("cpu_flags") else ""),
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    model, eager = results.get("model"), results.get("model_eager")
    if model:
        lines += [
            f"**Bare model** (ResNet50 forward, {model['dtype']}, {model['device']}, "
            f"{model['torch_threads']} threads; img/s):",
            "",
            f"| batch | {model['engine']} (the service's default here) | eager torchvision |",
            "| ---: | ---: | ---: |",
        ]
        eager_rows = {r["batch"]: r for r in eager["rows"]} if eager else {}
        for r in model["rows"]:
            e = eager_rows.get(r["batch"], {})
            lines.append(f"| {r['batch']} | {r['images_per_s']} | {e.get('images_per_s', '-')} |")
        lines.append("")
    engines = [e for e in results.get("engines", []) if "rows" in e]
    if engines:
        names = [f"{e['engine']} {e['dtype']}" for e in engines]
        lines += [
            "**Engines** (the same bare ResNet50, img/s; float32 ones give the same vectors, "
            "bfloat16 does not: docs/benchmarks.md#engines):",
            "",
            "| batch | " + " | ".join(names) + " |",
            "| ---: |" + " ---: |" * len(names),
        ]
        by_batch = [{r["batch"]: r["images_per_s"] for r in e["rows"]} for e in engines]
        for b in sorted(by_batch[0]):
            lines.append(f"| {b} | " + " | ".join(str(m.get(b, "-")) for m in by_batch) + " |")
        lines.append("")
    for e in results.get("engines", []):
        if "refused" in e:
            lines += [f"{e['engine']} {e['dtype']}: not run here ({e['refused']})", ""]
    rows = results.get("load", [])
    if rows:
        lines += [
            "**Over HTTP** (closed loop, loopback; CPU % and RSS: the whole server process tree):",
            "",
            "| system | images | concurrency | img/s | p50 ms | p95 ms | p99 ms | errors "
            "| CPU % | RSS MB | mean batch | model busy |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        ]
        for r in rows:
            lines.append(
                f"| {r['system']} | {r['images']} | {r['concurrency']} | {r['images_per_s']} "
                f"| {r['p50_ms']} | {r['p95_ms']} | {r['p99_ms']} | {r['errors']} "
                f"| {r['cpu_percent']} | {r['rss_mb']} | {_mean_batch(r['batches_formed'])} "
                f"| {r.get('model_busy') if r.get('model_busy') is not None else '-'} |"
            )
        lines.append("")
    rat = results.get("ratios", {})
    if rat:
        lines += [
            "**Targets** (ratios from this run):",
            "",
            "| images | service c32 / bare model best "
            f"(target ≥ {TARGET_VS_MODEL}) | same, vs eager bare model "
            f"(target ≥ {TARGET_VS_EAGER}) "
            "| service c32 / "
            f"baseline c32 (target ≥ {TARGET_VS_BASELINE}) | service c1 p50 minus bare "
            f"batch-1 forward (target ≤ {TARGET_C1_OVERHEAD_MS:g} ms) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for images, e in rat.items():
            if "bulk64_vs_64_singles" in e:
                bulk_line = (
                    f"Bulk route: 64 photos ({images}) per `POST /vectors/batch` give "
                    f"{e['bulk64_vs_64_singles']}x the img/s of 64 concurrent single requests "
                    "(target ≥ 1)."
                )
            lines.append(
                f"| {images} | {e.get('service_c32_vs_model_best', '-')} "
                f"| {e.get('service_c32_vs_eager_model_best', '-')} "
                f"| {e.get('service_c32_vs_baseline_c32', '-')} "
                f"| {e.get('service_c1_p50_minus_model_b1_ms', '-')} ms |"
            )
        lines.append("")
        for images, e in rat.items():
            for key, value in e.items():
                if key.startswith("service "):
                    lines.append(f"- {images}: {key}: {value}")
        if any(k.startswith("service ") for e in rat.values() for k in e):
            lines.append("")
        if any("bulk64_vs_64_singles" in e for e in rat.values()):
            lines += [bulk_line, ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results.get("load", [])
    fig, (ax_t, ax_l) = plt.subplots(1, 2, figsize=(12, 4.5))
    for system, style in (("service", "-o"), ("baseline", "--s")):
        for images in sorted({r["images"] for r in rows}):
            pts = sorted(
                (r["concurrency"], r["images_per_s"], r["p50_ms"])
                for r in rows
                if r["system"] == system and r["images"] == images
            )
            if not pts:
                continue
            c, t, p = zip(*pts, strict=True)
            ax_t.plot(c, t, style, label=f"{system} {images}")
            ax_l.plot(c, p, style, label=f"{system} {images}")
    model = results.get("model")
    if model:
        ax_t.axhline(
            model["best"]["images_per_s"], color="k", lw=1, ls=":", label="bare model best"
        )
    for ax, title, unit in ((ax_t, "throughput", "images/s"), (ax_l, "p50 latency", "ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax_l.set_yscale("log")
    ax_t.legend(fontsize=7)
    fig.suptitle(f"img2vec vs one-at-a-time baseline — {results['machine']['date']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replace_section(docs: Path, begin: str, end: str, text: str) -> bool:
    """Rewrite what lies between `begin` and `end` in `docs` (each benchmark owns one such
    section of docs/benchmarks.md); False, and nothing written, where a marker is missing."""
    doc = docs.read_text() if docs.exists() else ""
    if begin not in doc or end not in doc:
        return False
    head, rest = doc.split(begin, 1)
    _, tail = rest.split(end, 1)
    docs.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
    return True


ROOT = Path(__file__).resolve().parents[1]


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """Where a benchmark's results go (`publish`)."""
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite benchmarks.md")


def publish(
    results: dict, kind: str, text: str, args: argparse.Namespace, markers: tuple[str, str]
) -> Path:
    """A benchmark's results: `<kind>-<date>-<cpu>.json` in `--out`, its table printed and
    written into its own section of docs/benchmarks.md (not with `--no-docs`). Returns the
    JSON file."""
    out_dir = ROOT / args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    m = results["machine"]
    path = out_dir / f"{kind}-{m['date']}-{cpu_tag(m)}.json"
    path.write_text(json.dumps(results, indent=2))
    print(text)
    if not args.no_docs:
        replace_section(ROOT / "docs" / "benchmarks.md", *markers, text)
    return path


def _slug(text: str) -> str:
    return re.sub(r"\W+", "-", text).strip("-").lower()


def cpu_tag(m: dict) -> str:
    """A short name for the CPU in result file names ("intel-xeon-amx", "amd-epyc"): this VM's CPU
    changes between sessions, and one day's runs on two CPUs must not overwrite each other."""
    words = [w for w in re.sub(r"\(R\)|\(TM\)|Processor|CPU", " ", m.get("cpu", "")).split()]
    tag = _slug(" ".join(words[:2])) or "cpu"
    return tag + ("-amx" if "amx_bf16" in m.get("cpu_flags", []) else "")


def write_report(results: dict, out_dir: Path, docs: Path | None) -> None:
    results["ratios"] = ratios(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    m = results["machine"]
    stamp = f"{m['date']}-{_slug(m['host'])}-{cpu_tag(m)}"
    (out_dir / f"{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    if results.get("load"):
        plot(results, out_dir / f"{stamp}.png")
    text = markdown(results)
    print(text)
    if docs is not None:
        replace_section(docs, BEGIN, END, text)
