"""Scaling and redeploys under Weaviate-like load, with the launcher: nothing may be lost.

`python -m bench.scaling [--min-requests 20000] [--min-scale-downs 6]`: the launcher on
serve_config.yaml (random-weight MobileNetV2, fast on CPU), 24 clients as Weaviate's module
client talks (no Content-Type, at most 2 idle connections kept: most requests on new
connections), while the deployed config changes every few seconds through `serve deploy`,
the path an operator takes: ingress replicas 1 -> 2 -> 1, a live `user_config` change, and a
new version of the application (changed args: every replica replaced). Every request must be
answered 200, or a JSON 503 while capacity is short; a dropped connection is a loss. Then the
launcher is stopped as Docker stops it, and must exit 0 within 10 s.
"""

from __future__ import annotations

import argparse
import copy
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
from bench.processes import fixed_ingress, launched

ROOT = Path(__file__).resolve().parents[1]
SERVE_CLI = str(Path(sys.executable).with_name("serve"))
DASHBOARD = "http://127.0.0.1:8265"  # the launcher's own Ray: loopback


def _steps(base: dict) -> list[tuple[str, dict]]:
    """One cycle of config changes, each a whole config as `serve deploy` takes it."""

    def with_(ingress: int, batch: int, access_log: bool) -> dict:
        config = fixed_ingress(copy.deepcopy(base), ingress)
        app = config["applications"][0]
        app["args"]["access_log"] = access_log
        for deployment in app["deployments"]:
            if deployment["name"] == "Embedder":
                deployment["user_config"]["max_batch_size"] = batch
        return config

    return [
        ("ingress 1 -> 2", with_(2, 8, True)),
        ("ingress 2 -> 1", with_(1, 8, True)),
        ("user_config max_batch_size 8 -> 4", with_(1, 4, True)),
        ("new version (args changed): every replica replaced", with_(1, 4, False)),
        ("ingress 1 -> 2", with_(2, 4, False)),
        ("ingress 2 -> 1, max_batch_size 4 -> 8, new version", with_(1, 8, True)),
    ]


def _deploy(config: dict, workdir: Path) -> float:
    path = workdir / "deploy.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
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
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-requests", type=int, default=20000)
    parser.add_argument("--min-scale-downs", type=int, default=6)
    parser.add_argument("--step-s", type=float, default=12.0, help="seconds between changes")
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--model", default="mobilenet_v2")
    args = parser.parse_args()
    base = fixed_ingress(yaml.safe_load((ROOT / "serve_config.yaml").read_text()), 1)
    base["applications"][0]["args"]["model"] = args.model
    bodies = request_bodies(next(iter(image_sets("640x480").values())))
    done = threading.Event()
    log: list[dict] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp, launched(base, Path(tmp), ROOT) as (url, proc):
        # `serve deploy` sends the whole config, http_options included: the running ones.
        port = int(url.rsplit(":", 1)[1])
        base["http_options"] = {**base.get("http_options", {}), "host": "127.0.0.1", "port": port}
        steps = _steps(base)

        def change() -> None:
            scale_downs, i = 0, 0
            while not done.is_set() and not failed:
                time.sleep(args.step_s)
                if done.is_set():
                    break
                name, config = steps[i % len(steps)]
                try:
                    took = _deploy(config, Path(tmp))
                except Exception as exc:  # reported, and the load stops early
                    failed.append(repr(exc))
                    return
                scale_downs += "2 -> 1" in name
                log.append({"t": round(time.monotonic() - t0, 1), "step": name, "deploy_s": took})
                i += 1
            log.append({"scale_downs": scale_downs, "changes": i})

        t0 = time.monotonic()
        changer = threading.Thread(target=change, daemon=True)
        changer.start()
        # Long enough for the changes asked for (each `serve deploy` takes 1-3 s besides the
        # step); bounded in count and time.
        cycles = -(-args.min_scale_downs // 2)
        duration = (args.step_s + 2.5) * len(steps) * cycles + args.step_s
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
        stopping = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(60)
        stop_s = time.monotonic() - stopping
    summary = {
        "load": result.as_dict(),
        "changes": log,
        "stop": {"exit": code, "seconds": round(stop_s, 1)},
        "failed": failed,
        "cpu": _cpu(),
    }
    print(json.dumps(summary, indent=2))
    lost = {k: v for k, v in result.statuses.items() if k not in ("200", "503")}
    print(f"\nrequests {result.requests}, lost {sum(lost.values())} {lost or ''}")


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
