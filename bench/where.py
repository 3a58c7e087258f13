"""Where the CPU goes: one load point against the service (as `make serve` runs it), with the
CPU time of each of its processes per request (proxy, each ingress replica, the Embedder...),
split into the work a request pays for anyway (decoding and resizing in the ingress's
`i2v-decode` threads, the forward pass in the Embedder's `i2v-forward` thread and the torch
threads it starts) and the rest: the serving path's own cost. A process near 100 % of one
core is the service's serial limit.

Run: `python -m bench.where --model mobilenet_v3_large --concurrency 32`
(`--config serve_config.gpu.yaml --concurrency 256` on a GPU node). `--at-rest 30` first
measures the service with no requests at all for 30 s: what it costs a node it shares (a
Weaviate node) while idle. `--against REV --rounds 2` measures the code of commit REV (checked
out in a temporary git worktree, run from there) and this tree's side by side, alternating, so
that a change's cost is seen on one machine within minutes. Writes
bench/results/where-<date>-<cpu>.json and the `where` section of docs/benchmarks.md."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import yaml

from bench.images import image_sets, request_bodies
from bench.loadgen import run_load
from bench.processes import env_pairs, fixed_ingress, launched
from bench.report import add_output_args, preamble, publish
from bench.run import record
from img2vec.serving.cpus import DECODE_THREAD, FORWARD_THREAD

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
WORK_THREADS = (DECODE_THREAD, FORWARD_THREAD)


def _threads(pid: int) -> dict[int, tuple[str, float]]:
    """tid -> (OS thread name, CPU seconds) from /proc."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(task.name)] = (comm, (int(fields[11]) + int(fields[12])) / TICK)
    return out


def _title(cmdline: list[str]) -> str:
    """`ray::ServeReplica:...` for Ray's workers, the program's name for its binaries
    (raylet, gcs_server, haproxy), `python -m module` for Python entry points."""
    if not cmdline:
        return ""
    program = Path(cmdline[0]).name
    if program.startswith("python") and len(cmdline) > 1:
        # `python -m module`, or the script's file name (Ray's log monitor, dashboard...).
        args = [a for a in cmdline[1:] if a == "-m" or not a.startswith("-")]
        shown = args[:2] if args[:1] == ["-m"] else [Path(a).name for a in args[:1]]
        return " ".join([program, *shown])[:60]
    return " ".join(" ".join(cmdline).split())[:60] if cmdline[0].startswith("ray::") else program


def cpu_by_process(pid: int) -> dict[str, tuple[float, float]]:
    """(work, rest) CPU seconds of each process in the tree, keyed by its title and pid."""
    out: dict[str, tuple[float, float]] = {}
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        try:
            title = _title(p.cmdline()) or p.name()
            threads = _threads(p.pid)
        except (psutil.Error, OSError):
            continue
        work = sum(cpu for name, cpu in threads.values() if name in WORK_THREADS)
        rest = sum(cpu for name, cpu in threads.values() if name not in WORK_THREADS)
        out[f"{title} [{p.pid}]"] = (work, rest)
    return out


def cpu_used(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> list[tuple[float, str, float, float]]:
    """(work + rest, name, work, rest) CPU seconds of each process between the two readings,
    the busiest first."""
    rows = []
    for name, (work, rest) in after.items():
        w0, r0 = before.get(name, (0.0, 0.0))
        rows.append((work - w0 + rest - r0, name, work - w0, rest - r0))
    return sorted(rows, reverse=True)


def table(
    before: dict[str, tuple[float, float]],
    after: dict[str, tuple[float, float]],
    elapsed: float,
    requests: int,
) -> list[str]:
    """One line a process: its share of a core, and per request the work and the rest."""
    lines = [
        "| process | % of a core | work ms/request | rest ms/request |",
        "| --- | ---: | ---: | ---: |",
    ]
    n = max(requests, 1)
    rows = cpu_used(before, after)
    for used, name, work, rest in rows:
        if used / elapsed >= 0.02:
            pct = 100 * used / elapsed
            lines.append(f"| {name} | {pct:.1f} | {1e3 * work / n:.2f} | {1e3 * rest / n:.2f} |")
    total_work = sum(work for _, _, work, _ in rows)
    total_rest = sum(rest for _, _, _, rest in rows)
    lines.append(
        f"| **all processes** | {100 * (total_work + total_rest) / elapsed:.1f} | "
        f"{1e3 * total_work / n:.2f} | **{1e3 * total_rest / n:.2f}** |"
    )
    return lines


def at_rest(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]], elapsed: float
) -> list[str]:
    """One line a process: its share of a core while nothing is asked of the service."""
    rows = cpu_used(before, after)
    lines = ["| process (at rest) | % of a core |", "| --- | ---: |"]
    lines += [
        f"| {name} | {100 * used / elapsed:.1f} |"
        for used, name, _, _ in rows
        if used / elapsed >= 0.005
    ]
    total = sum(used for used, _, _, _ in rows)
    lines.append(f"| **all processes** | **{100 * total / elapsed:.1f}** |")
    return lines


BEGIN, END = "<!-- where:begin -->", "<!-- where:end -->"


def measure(root: Path, args: argparse.Namespace) -> dict:
    """One load point against the service of the code in `root` (run from there: its own
    modules ahead of any installed copy): throughput, and each process's CPU per request."""
    config = fixed_ingress(yaml.safe_load((root / args.config).read_text()), args.ingress_replicas)
    if args.model:
        config["applications"][0]["args"]["model"] = args.model
    extra = {"PYTHONPATH": str(root), **env_pairs(args.serve_env)}
    bodies = request_bodies(next(iter(image_sets(args.images).values())))
    with (
        tempfile.TemporaryDirectory() as tmp,
        launched(config, Path(tmp), root, extra_env=extra) as (url, proc),
    ):
        load = {"concurrency": args.concurrency, "max_requests": 10**7, "weaviate": True}
        run_load(url + "/vectors", bodies, duration_s=3, warmup_s=1, **load)
        if args.at_rest > 0:
            time.sleep(5)  # the warm-up's last requests and their metrics pushes settle
            before, t0 = cpu_by_process(proc.pid), time.perf_counter()
            time.sleep(args.at_rest)
            rest = at_rest(before, cpu_by_process(proc.pid), time.perf_counter() - t0)
            print("\n".join(rest), flush=True)
        meta_before = httpx.get(url + "/meta", timeout=30).json()
        before, t0 = cpu_by_process(proc.pid), time.perf_counter()
        result = run_load(url + "/vectors", bodies, duration_s=args.duration, warmup_s=0, **load)
        after, elapsed = cpu_by_process(proc.pid), time.perf_counter() - t0
        meta_after = httpx.get(url + "/meta", timeout=30).json()
    print("\n".join(table(before, after, elapsed, result.requests)), flush=True)
    n = max(result.requests, 1)
    rows = cpu_used(before, after)
    batching = [m["batching"] for m in (meta_before, meta_after)]
    link = [m.get("ingress") or {} for m in (meta_before, meta_after)]
    calls = link[1].get("calls_to_model", 0) - link[0].get("calls_to_model", 0)
    sent = link[1].get("inputs_to_model", 0) - link[0].get("inputs_to_model", 0)
    return {
        "load": result.as_dict(),
        "processes": {
            name.rsplit(" [", 1)[0]: {
                "core_pct": round(100 * used / elapsed, 1),
                "work_ms": round(1e3 * work / n, 2),
                "rest_ms": round(1e3 * rest / n, 2),
            }
            for used, name, work, rest in rows
            if used / elapsed >= 0.02
        },
        "work_ms": round(1e3 * sum(r[2] for r in rows) / n, 2),
        "rest_ms": round(1e3 * sum(r[3] for r in rows) / n, 2),
        "images_per_pass": round(
            (batching[1]["images"] - batching[0]["images"])
            / max(batching[1]["passes"] - batching[0]["passes"], 1),
            1,
        ),
        "images_per_call": round(sent / max(calls, 1), 1) if calls else None,
    }


@contextlib.contextmanager
def checked_out(rev: str) -> Iterator[tuple[Path, str]]:
    """Commit `rev` of this repository in a temporary git worktree, removed afterwards."""
    sha = _git("rev-parse", "--short", rev)
    with tempfile.TemporaryDirectory(prefix="img2vec-where-") as tmp:
        tree = Path(tmp) / sha
        _git("worktree", "add", "--detach", str(tree), sha)
        try:
            yield tree, sha
        finally:
            _git("worktree", "remove", "--force", str(tree))


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def markdown(results: dict) -> str:
    """Each run's throughput and CPU per request; the serving path's own cost (rest) by
    process where it is large enough to show."""
    lines = [
        *preamble(results),
        "| code | round | img/s | p50 ms | work ms/request | rest ms/request "
        "| rest: ingress | rest: model replica | images a pass | images a call |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in results["runs"]:
        rest = {name: p["rest_ms"] for name, p in run["processes"].items()}
        ingress = sum(v for k, v in rest.items() if k.endswith(":Ingress"))
        model = sum(v for k, v in rest.items() if k.endswith(":Embedder"))
        per_call = run["images_per_call"]
        lines.append(
            f"| {run['code']} | {run['round']} | {run['load']['images_per_s']:.1f} "
            f"| {run['load']['p50_ms']:.1f} | {run['work_ms']:.2f} | **{run['rest_ms']:.2f}** "
            f"| {ingress:.2f} | {model:.2f} | {run['images_per_pass']:.1f} "
            f"| {'-' if per_call is None else f'{per_call:.1f}'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="serve_config.yaml")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--images", default="640x480")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--ingress-replicas", type=int, help="fixed, instead of autoscaling")
    parser.add_argument("--model", help="another backbone than the config's")
    parser.add_argument("--serve-env", default="", help="KEY=VAL,... on top of serve.env")
    parser.add_argument(
        "--at-rest", type=float, default=0.0, help="seconds measured with no requests first"
    )
    parser.add_argument("--against", help="a commit measured side by side with this tree")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each side, alternating")
    add_output_args(parser)
    args = parser.parse_args()
    results: dict = {**record("where", args), "runs": []}
    here = _git("rev-parse", "--short", "HEAD") + ("+" if _git("status", "--porcelain") else "")
    with contextlib.ExitStack() as stack:
        sides = [(ROOT, f"{here} (this tree)")]
        if args.against:
            tree, sha = stack.enter_context(checked_out(args.against))
            sides.insert(0, (tree, sha))
        for round_ in range(1, args.rounds + 1):
            for root, code in sides:
                print(f"== {code}, round {round_}", flush=True)
                results["runs"].append({"code": code, "round": round_, **measure(root, args)})
    publish(results, "where", markdown(results), args, (BEGIN, END))


if __name__ == "__main__":
    main()
