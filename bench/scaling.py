"""Scaling and redeploys under Weaviate-like load, with the launcher: nothing may be lost.

`python -m bench.scaling [--min-requests 20000] [--min-scale-downs 6] [--rayservice]`: the
launcher on serve_config.yaml (random-weight MobileNetV2, fast on CPU), 24 clients as
Weaviate's module client talks (no Content-Type, at most 2 idle connections kept: most
requests on new connections), while the deployed config changes every few seconds through
`serve deploy`, the path an operator takes: ingress replicas 1 -> 2 -> 1, a live
`user_config` change, and a new version of the application (changed args: every replica
replaced). Every request must be answered 200, or a JSON 503 while capacity is short; a
dropped connection is a loss. Then the launcher is stopped as Docker stops it, and must exit
0 within 10 s.

`--rayservice`: the same with the RayService's settings instead (its serveConfigV2 and
container env) on a loopback cluster whose GPU worker nodes Ray's autoscaler adds and removes
(bench/fake_cluster.py); the changes also lower and raise the model replicas' ceiling, so that
a model replica and its node go away under load.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from bench.images import image_sets, request_bodies
from bench.loadgen import run_load
from bench.processes import fixed_ingress, free_port, launched, own_ports, serve_env
from bench.run import cpu_model

ROOT = Path(__file__).resolve().parents[1]
SERVE_CLI = str(Path(sys.executable).with_name("serve"))
DASHBOARD = "http://127.0.0.1:8265"  # the launcher's own Ray: loopback


def _variant(
    base: dict, ingress: int, batch: int, args: dict, embedders: int | None = None
) -> dict:
    """`base` with `ingress` fixed ingress replicas, the Embedder's `max_batch_size`, app
    `args` updated (a changed arg is a new version) and, if given, its autoscaling ceiling."""
    config = fixed_ingress(copy.deepcopy(base), ingress)
    app = config["applications"][0]
    app["args"].update(args)
    for deployment in app["deployments"]:
        if deployment["name"] == "Embedder":
            deployment["user_config"]["max_batch_size"] = batch
            if embedders is not None:
                deployment["autoscaling_config"]["max_replicas"] = embedders
    return config


def _steps(base: dict) -> list[tuple[str, dict]]:
    """One cycle of config changes, each a whole config as `serve deploy` takes it."""
    on, off = {"access_log": True}, {"access_log": False}
    return [
        ("ingress 1 -> 2", _variant(base, 2, 8, on)),
        ("ingress 2 -> 1", _variant(base, 1, 8, on)),
        ("user_config max_batch_size 8 -> 4", _variant(base, 1, 4, on)),
        ("new version (args changed): every replica replaced", _variant(base, 1, 4, off)),
        ("ingress 1 -> 2", _variant(base, 2, 4, off)),
        ("ingress 2 -> 1, max_batch_size 4 -> 8, new version", _variant(base, 1, 8, on)),
    ]


def _deploy(config: dict, workdir: Path) -> None:
    path = workdir / "deploy.yaml"
    path.write_text(yaml.safe_dump(config))
    # Ray 2.60 turns token authentication on for the clusters it starts; the CLI sends the
    # token it finds (~/.ray/auth_token) only in token mode.
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    out = subprocess.run(
        [SERVE_CLI, "deploy", "--address", DASHBOARD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"serve deploy failed: {out.stderr[-2000:]}")


def _rayservice_steps(base: dict) -> list[tuple[str, dict]]:
    """The RayService's config changed as an operator would change serveConfigV2: ingress
    replicas, a `user_config` change, the model replicas' ceiling (a replica and, with it, a
    GPU node removed by Ray's autoscaler) and new versions."""
    a, b = {"unready_after_s": 60}, {"unready_after_s": 61}  # a changed arg: a new version
    return [
        ("ingress 1 -> 2", _variant(base, 2, 4, a, 2)),
        ("ingress 2 -> 1", _variant(base, 1, 4, a, 2)),
        ("user_config max_batch_size 4 -> 2", _variant(base, 1, 2, a, 2)),
        ("model replicas 2 -> 1 (a GPU node goes idle)", _variant(base, 1, 2, a, 1)),
        ("new version (args changed), model replicas 1 -> 2", _variant(base, 1, 2, b, 2)),
        ("ingress 1 -> 2", _variant(base, 2, 2, b, 2)),
        ("ingress 2 -> 1, max_batch_size 2 -> 4, new version", _variant(base, 1, 4, a, 2)),
    ]


def _under_changes(
    url: str, steps: list, deploy, status, args: argparse.Namespace, observe=lambda: {}
) -> dict:
    """Weaviate-like load on `url` while `deploy` applies `steps` in turn, each once the
    previous one has taken effect (`status()` of the application RUNNING again: a change sent
    while Serve still builds the last one replaces it, so changes faster than builds would
    never take effect) and `--step-s` later, until the load has run long enough for the
    scale-downs asked for; `observe()` is logged before each change."""
    bodies = request_bodies(next(iter(image_sets("640x480").values())))
    done = threading.Event()
    log: list[dict] = []
    failed: list[str] = []

    def change() -> None:
        scale_downs, i = 0, 0
        while not done.is_set() and not failed:
            time.sleep(args.step_s)
            if done.is_set():
                break
            name, config = steps[i % len(steps)]
            seen = observe()
            started = time.monotonic()
            try:
                deploy(config)
            except Exception as exc:  # reported, and the load stops early
                failed.append(repr(exc))
                return
            took = round(time.monotonic() - started, 2)
            applied = _until_running(status, done)
            entry = {"t": round(time.monotonic() - t0, 1), "step": name, "deploy_s": took}
            if applied is None:
                if not done.is_set():  # not RUNNING again within the bound: say so, stop
                    log.append({**entry, "took_effect_s": None, **seen})
                    failed.append(f"{name}: the application did not return to RUNNING")
                break  # else the load ended first: this change is not counted
            log.append({**entry, "took_effect_s": applied, **seen})
            scale_downs += "2 -> 1" in name
            i += 1
        log.append({"scale_downs": scale_downs, "changes": i})

    t0 = time.monotonic()
    changer = threading.Thread(target=change, daemon=True)
    changer.start()
    # Long enough for the changes asked for (each one `--step-s` plus the `--settle-s` it is
    # expected to take to take effect); bounded in count and time.
    downs_per_cycle = sum("2 -> 1" in name for name, _ in steps)
    cycles = -(-args.min_scale_downs // downs_per_cycle)
    duration = (args.step_s + args.settle_s) * len(steps) * cycles + args.step_s
    result = run_load(
        url + "/vectors",
        bodies,
        concurrency=args.concurrency,
        duration_s=max(duration, 60.0),
        warmup_s=2.0,
        max_requests=10**7,
        weaviate=True,
    )
    done.set()
    changer.join(180)
    return {"result": result, "changes": log, "failed": failed}


def _until_running(status, done: threading.Event, bound_s: float = 120.0) -> float | None:
    """Seconds until the application is RUNNING again, None past `bound_s` (or if the load
    ended first)."""
    started = time.monotonic()
    time.sleep(0.5)  # the controller takes the new config on its next loop
    while time.monotonic() - started < bound_s and not done.is_set():
        if status() == "RUNNING":
            return round(time.monotonic() - started, 1)
        time.sleep(0.5)
    return None


def _launcher_status() -> str:
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    out = subprocess.run(
        [SERVE_CLI, "status", "--address", DASHBOARD],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    apps = (yaml.safe_load(out.stdout) or {}).get("applications") or {}
    return str((apps.get("img2vec") or {}).get("status", "absent"))


def _cluster_status() -> str:
    from ray import serve

    app = serve.status().applications.get("img2vec")
    return str(app.status.value if app else "absent")


def with_launcher(args: argparse.Namespace, tmp: Path) -> dict:
    base = fixed_ingress(yaml.safe_load((ROOT / "serve_config.yaml").read_text()), 1)
    base["applications"][0]["args"]["model"] = args.model
    with launched(base, tmp, ROOT) as (url, proc):
        # `serve deploy` sends the whole config, http_options included: the running ones.
        port = int(url.rsplit(":", 1)[1])
        base["http_options"] = {**base.get("http_options", {}), "host": "127.0.0.1", "port": port}
        deploy = functools.partial(_deploy, workdir=tmp)
        run = _under_changes(url, _steps(base), deploy, _launcher_status, args)
        stopping = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
        run["stop"] = {"exit": code, "seconds": round(time.monotonic() - stopping, 1)}
    return run


def with_rayservice(args: argparse.Namespace, tmp: Path) -> dict:
    """The RayService's serveConfigV2 and container env (serve.env) on a loopback cluster of a
    head and GPU worker nodes that Ray's autoscaler adds and removes (bench/fake_cluster.py)."""
    from bench.fake_cluster import cluster_config, deploy, rayservice

    base = fixed_ingress(cluster_config(free_port()), 1)
    base["applications"][0]["args"]["model"] = args.model
    env = {**serve_env(ROOT), **own_ports()}
    with rayservice(tmp, env=env, config=base) as (_, url):
        steps = _rayservice_steps(base)
        run = _under_changes(url, steps, deploy, _cluster_status, args, observe=_cluster_state)
    run["stop"] = {"cluster": "stopped, nothing left"}
    return run


def _cluster_state() -> dict:
    """Alive nodes and running replicas per deployment, as the previous change left them."""
    import ray
    from ray import serve

    apps = serve.status().applications
    app = apps.get("img2vec")
    deployments = app.deployments if app else {}
    running = {name: d.replica_states.get("RUNNING", 0) for name, d in deployments.items()}
    return {
        "nodes": sum(n["Alive"] for n in ray.nodes()),
        "app": str(app.status) if app else f"absent (have {sorted(apps)})",
        "running": running,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-requests", type=int, default=20000)
    parser.add_argument("--min-scale-downs", type=int, default=6)
    parser.add_argument("--step-s", type=float, default=12.0, help="seconds between changes")
    parser.add_argument(
        "--settle-s", type=float, default=8.0, help="expected seconds for a change to take effect"
    )
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument(
        "--rayservice",
        action="store_true",
        help="the RayService's settings on a loopback multi-node cluster, not the launcher",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = (with_rayservice if args.rayservice else with_launcher)(args, Path(tmp))
    result = run.pop("result")
    summary = {"mode": "rayservice" if args.rayservice else "launcher", "load": result.as_dict()}
    command = "python -m bench.scaling " + " ".join(sys.argv[1:])
    summary.update(run, cpu=cpu_model(), command=command)
    text = json.dumps(summary, indent=2)
    print(text)
    name = "scaling-rayservice" if args.rayservice else "scaling"
    out = ROOT / "bench" / "results" / f"{name}-{datetime.date.today().isoformat()}.json"
    out.write_text(text + "\n")
    lost = {k: v for k, v in result.statuses.items() if k not in ("200", "503")}
    print(f"\nrequests {result.requests}, lost {sum(lost.values())} {lost or ''}")
    if result.requests < args.min_requests:
        print(f"fewer requests than --min-requests ({args.min_requests}): a longer --step-s")


if __name__ == "__main__":
    main()
